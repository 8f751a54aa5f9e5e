// The Python module gpt3d._C. Importing it loads this library, whose static initialisers register every op defined
// with TORCH_LIBRARY_FRAGMENT(gpt3d_C, m) in csrc/<op>/; the ops are then reachable as torch.ops.gpt3d_C.<name>.
#include <torch/extension.h>

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gpt3d fused CPU/CUDA kernels (ops live under torch.ops.gpt3d_C)";
#ifdef GPT3D_WITH_CUDA
  m.attr("with_cuda") = true;
#else
  m.attr("with_cuda") = false;
#endif
}
