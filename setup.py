"""gpt3d packaging.

The C++ extension `gpt3d._C` is built from every `csrc/*/*.cpp` (and, when the installed torch has CUDA, every
`csrc/*/*.cu`). torch must already be installed (build with `pip install --no-build-isolation -e .`); without torch, or with
GPT3D_NO_EXT=1, the package installs pure-Python and every op falls back to its PyTorch reference.
"""
import glob
import os
import sys

from setuptools import find_packages, setup

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

setup(
    name="gpt3d",
    version="0.1.0",
    description="GPT-3-class training with tensor, pipeline and data parallelism; runs and is tested on a laptop CPU",
    python_requires=">=3.10",
    packages=find_packages(include=["gpt3d", "gpt3d.*"]),
    # torch is not pinned here so a GPU user keeps their own CUDA build; the README's setup installs torch==2.13.0 (CPU).
    install_requires=[
        "torch>=2.4", "numpy", "pyyaml", "tokenizers", "safetensors", "rich", "tqdm", "matplotlib", "psutil",
    ],
    extras_require={
        "test": ["pytest", "pytest-timeout", "transformers", "tensorboard", "mpi4py"],
        "interop": ["transformers", "megatron-core", "deepspeed"],
    },
    entry_points={"console_scripts": ["gpt3d=gpt3d.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
)
