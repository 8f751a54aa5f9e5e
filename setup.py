"""gpt3d packaging: the C++ extension (the package metadata is in pyproject.toml).

The C++ extension `gpt3d._C` is built from every `csrc/*/*.cpp` (and, when the installed torch has CUDA, every
`csrc/*/*.cu`). torch must already be installed (build with `pip install --no-build-isolation -e .`); without torch, or with
GPT3D_NO_EXT=1, the package installs pure-Python and every op falls back to its PyTorch reference.
"""
import glob
import os
import sys

from setuptools import setup

HERE = os.path.dirname(os.path.abspath(__file__))


def _extensions():
    """The one extension module, or nothing when it cannot or should not be built."""
    if os.environ.get("GPT3D_NO_EXT") == "1":
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError:
        print("gpt3d: torch not importable at build time; skipping the C++ extension", file=sys.stderr)
        return [], {}
    cpp = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "*", "*.cpp")))
    cuda = sorted(glob.glob(os.path.join("csrc", "*", "*.cu")))
    include = [os.path.join(HERE, "csrc")]
    cxx = ["-O3", "-fopenmp"]  # no -std: torch's cpp_extension adds the standard its headers need (C++17 or C++20)
    if torch.version.cuda and cuda:
        ext = cpp_extension.CUDAExtension(
            "gpt3d._C", cpp + cuda, include_dirs=include,
            define_macros=[("GPT3D_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math"]},
            extra_link_args=["-fopenmp"])
    else:
        ext = cpp_extension.CppExtension(
            "gpt3d._C", cpp, include_dirs=include, extra_compile_args=cxx, extra_link_args=["-fopenmp"])
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


ext_modules, cmdclass = _extensions()

# Name, version, dependencies and the `gpt3d` command are in pyproject.toml.
setup(ext_modules=ext_modules, cmdclass=cmdclass)
