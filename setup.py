"""Install neuronspec; build the CUDA module `neuronspec._cuda` from csrc/ when nvcc exists.

The CUDA module is a pybind11 extension built by CMake + ninja on CUTLASS's headers (from the
nvidia-cutlass wheel, a build requirement, or a copy of them: cutlass_include_dir; no torch
headers, no cuBLAS). Without nvcc the
package installs without it and the `cuda` backend reports itself unavailable. Set
NEURONSPEC_NO_CUDA=1 to skip the build, NEURONSPEC_CUDA_ARCH (e.g. "80;90") to choose the
architectures.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).parent.resolve()


def cutlass_include_dir() -> Path:
    """include/ of the CUTLASS headers (include/cutlass, include/cute), the first found of:
    $NEURONSPEC_CUTLASS_INCLUDE; third_party/cutlass/include (copied from the nvidia-cutlass
    wheel by benchmarks/vendor_cutlass.py: a build without a package index, e.g. on a lent GPU);
    <site-packages>/cutlass_library/source/include of the installed wheel (a build requirement,
    pyproject.toml), found without importing the package (its __init__ imports heavy modules)."""
    import importlib.util

    env = os.environ.get("NEURONSPEC_CUTLASS_INCLUDE")
    if env:
        include, source = Path(env), "NEURONSPEC_CUTLASS_INCLUDE"
    elif (ROOT / "third_party" / "cutlass" / "include" / "cutlass" / "version.h").is_file():
        return ROOT / "third_party" / "cutlass" / "include"
    else:
        spec = importlib.util.find_spec("cutlass_library")
        if spec is None or spec.origin is None:
            raise RuntimeError("neuronspec: the CUDA build needs the CUTLASS headers: pip install nvidia-cutlass "
                               "(a build requirement in pyproject.toml), or python benchmarks/vendor_cutlass.py, "
                               "or set NEURONSPEC_NO_CUDA=1")
        include, source = Path(spec.origin).parent / "source" / "include", "the nvidia-cutlass package"
    if not (include / "cutlass" / "version.h").is_file():
        raise RuntimeError(f"neuronspec: no CUTLASS headers (cutlass/version.h) under {include}, from {source}")
    return include


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


class CMakeBuild(build_ext):
    """Configure csrc/ with CMake (CUDA language, pybind11) and build it with ninja; the module
    lands next to the package (neuronspec/_cuda*.so in editable/in-place builds). Skipped with
    a message when nvcc is missing or NEURONSPEC_NO_CUDA=1; a failing build fails the install.
    NEURONSPEC_CUDA_ARCH picks the architectures (CMakeLists.txt reads it; default "80;90"),
    NEURONSPEC_CUDA_SM90A=0 leaves out the sm_90a CUTLASS 3 kernels, NEURONSPEC_BUILD_JOBS sets the
    parallel compile jobs (default: CPU count); NEURONSPEC_CMAKE_CONFIGURE_ONLY=1 stops after
    configuring (the GPU suite's dry run: nvcc, pybind11 and the CUTLASS headers are found)."""

    def run(self) -> None:
        nvcc = shutil.which("nvcc")
        if os.environ.get("NEURONSPEC_NO_CUDA") == "1" or nvcc is None:
            why = "NEURONSPEC_NO_CUDA=1" if nvcc else "nvcc not found"
            print(f"neuronspec: {why}; the CUDA backend will be unavailable", file=sys.stderr)
            self.extensions = []  # nothing to build, nothing for the installer to copy
        super().run()

    def build_extension(self, ext: Extension) -> None:
        import time

        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        cfg = [
            f"-DCUTLASS_INCLUDE_DIR={cutlass_include_dir()}",
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_CUDA_COMPILER={shutil.which('nvcc')}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if shutil.which("ninja"):
            cfg.append("-GNinja")
        jobs = os.environ.get("NEURONSPEC_BUILD_JOBS") or str(os.cpu_count() or 2)
        start = time.perf_counter()
        subprocess.run(["cmake", str(ROOT), *cfg], cwd=build_dir, check=True)
        if os.environ.get("NEURONSPEC_CMAKE_CONFIGURE_ONLY") == "1":
            print(f"neuronspec: configured in {build_dir}, not built (NEURONSPEC_CMAKE_CONFIGURE_ONLY=1)", file=sys.stderr)
            return
        subprocess.run(["cmake", "--build", ".", "-j", jobs], cwd=build_dir, check=True)
        print(f"neuronspec: built neuronspec._cuda in {time.perf_counter() - start:.0f} s ({jobs} jobs) "
              f"into {out_dir}", file=sys.stderr)


setup(
    name="neuronspec",
    version="0.1.0",
    description="Fast Neuron Specialization for multilingual machine translation (PyTorch, Triton, CUDA)",
    long_description=(ROOT / "README.md").read_text(encoding="utf-8") if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["neuronspec", "neuronspec.*"]),
    install_requires=[
        "torch>=2.4",
        "triton>=3.0; platform_system == 'Linux'",
        "numpy",
        "sacrebleu>=2.3",
        "sentencepiece>=0.1.99",
        "babel>=2.12",
        "num2words>=0.5.12",
        "matplotlib",
        "tqdm",
        "django>=4.2",
        "sphinx>=7",
    ],
    extras_require={
        "test": ["pytest>=7", "transformers>=4.40", "peft>=0.13", "accelerate>=1.0", "ctranslate2>=4"],
        # accelerate: the HF Trainer; peft: LoRA inside masked FFNs (docs/design.md §9)
        "hf": ["transformers>=4.40", "peft>=0.13", "accelerate>=1.0"],
        # neuronspec translate --engine ctranslate2, export --format hf (neuronspec.deploy)
        "deploy": ["ctranslate2>=4", "transformers>=4.40"],
        # more real sentences for the built-in corpus (read automatically when installed):
        # community-translated UI catalogs; JupyterLab packs exist for 14 of the EC30 languages
        "corpus": ["django-allauth", "wagtail"] + [
            f"jupyterlab-language-pack-{loc}" for loc in (
                "ar-SA", "cs-CZ", "da-DK", "de-DE", "es-ES", "fr-FR", "he-IL", "it-IT", "nl-NL", "pl-PL",
                "pt-BR", "ro-RO", "ru-RU", "uk-UA")],
    },
    ext_modules=[CMakeExtension("neuronspec._cuda")],
    cmdclass={"build_ext": CMakeBuild},
    entry_points={"console_scripts": ["neuronspec=neuronspec.cli:main"]},
    zip_safe=False,
)
