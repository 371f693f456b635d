"""Compile a C kernel of this package into a shared library on first use and load it with ctypes.

The library is cached under ``$SSM_LAB_CACHE_DIR`` (default ``~/.cache/ssm_lab/cpu_kernels``), named by a
hash of the source, the compiler's version, the flags and the CPU (the code is built for the machine it
runs on, ``-march=native``), so an edited source or another machine gets its own build. The compiler is
``$CC`` or ``cc``; with OpenMP (``-fopenmp``) where it supports it, else single-threaded. The build is
written to a temporary file and renamed into place, so processes that start together (a sweep) never load
a half-written library. Any failure raises ``ImportError`` with the compiler's message: a kernel module
that imports has a library that loaded. ``SSM_LAB_CPU_KERNELS=0`` in the environment turns the kernels off
(``load_library`` raises ImportError): the torch paths run instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

FLAGS = ("-O3", "-march=native", "-fno-math-errno", "-std=c11", "-shared", "-fPIC")
OPENMP = "-fopenmp"


def _cache_dir() -> Path:
    return Path(os.environ.get("SSM_LAB_CACHE_DIR", Path.home() / ".cache" / "ssm_lab")) / "cpu_kernels"


def _cpu_signature() -> str:
    """The CPU's model and feature flags (what -march=native compiles for), where the system tells them."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    wanted = [line for line in lines if line.startswith(("model name", "flags", "Features"))]
    return "\n".join(dict.fromkeys(wanted))  # first core's lines, in order


def _compile(compiler: str, source: Path, target: Path, flags: tuple[str, ...]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [compiler, *flags, str(source), "-o", str(target), "-lm"], capture_output=True, text=True, check=False
    )


def load_library(source: Path) -> ctypes.CDLL:
    """The shared library built from ``source`` (a C file), compiled now unless a cached build matches."""
    if os.environ.get("SSM_LAB_CPU_KERNELS", "1") == "0":
        raise ImportError("the CPU kernels are turned off (SSM_LAB_CPU_KERNELS=0)")
    compiler = shutil.which(os.environ.get("CC", "cc"))
    if compiler is None:
        raise ImportError(f"no C compiler found ({os.environ.get('CC', 'cc')!r}) to build {source.name}")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256(
        "\0".join([source.read_text(), version, " ".join(FLAGS), _cpu_signature(), platform.machine()]).encode()
    ).hexdigest()[:16]
    cache = _cache_dir()
    target = cache / f"{source.stem}-{key}.so"
    if not target.exists():
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=cache) as scratch:
            built = Path(scratch) / target.name
            result = _compile(compiler, source, built, (*FLAGS, OPENMP))
            if result.returncode != 0:  # e.g. Apple's clang: no OpenMP, the kernels then run on one thread
                result = _compile(compiler, source, built, FLAGS)
            if result.returncode != 0:
                raise ImportError(f"building {source.name} with {compiler} failed:\n{result.stderr[-2000:]}")
            os.replace(built, target)
    try:
        return ctypes.CDLL(str(target))
    except OSError as error:
        raise ImportError(f"loading {target} failed: {error}") from error
