"""Compile a C kernel of this package into a shared library on first use and load it with ctypes.

The library is cached under ``$SSM_LAB_CACHE_DIR`` (default ``~/.cache/ssm_lab/cpu_kernels``), named by a
hash of the source and the headers beside it, the compiler's version, the flags and the CPU (the code is
built for the machine it runs on, ``-march=native``), so an edited source or another machine gets its own
build. The compiler is ``$CC`` or ``cc``, with OpenMP where it supports it, else single-threaded
(``ATTEMPTS``). The build is written to a temporary file and renamed into place, so processes that start
together (a sweep) never load a half-written library. Any failure (no compiler, a failed build, an
unwritable cache) raises ``ImportError`` with the reason: a kernel module that imports has a library that
loaded. ``SSM_LAB_CPU_KERNELS=0`` in the environment turns the kernels off (``load_library`` raises
ImportError): the torch paths run instead.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

FLAGS = ("-O3", "-fno-math-errno", "-std=c11", "-shared", "-fPIC")
#: tried in order until one builds: OpenMP and the machine's vector units; no OpenMP (Apple's clang): one
#: thread; no -march=native (compilers that do not know it): baseline vector units.
ATTEMPTS = (("-march=native", "-fopenmp"), ("-march=native",), ())


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
    headers = [header.read_text() for header in sorted(source.parent.glob("*.h"))]  # what it may #include
    parts = [source.read_text(), *headers, version, repr((FLAGS, ATTEMPTS)), _cpu_signature(), platform.machine()]
    key = hashlib.sha256("\0".join(parts).encode()).hexdigest()[:16]
    target = _cache_dir() / f"{source.stem}-{key}.so"
    try:
        if not target.exists():
            _build(compiler, source, target)
        return ctypes.CDLL(str(target))
    except OSError as error:  # an unwritable cache, a library the loader rejects
        raise ImportError(f"building or loading {target} failed: {error}") from error


def _build(compiler: str, source: Path, target: Path) -> None:
    """Compile ``source`` into ``target`` with the first flags of ``ATTEMPTS`` that work, atomically."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        built = Path(scratch) / target.name
        for extra in ATTEMPTS:
            result = _compile(compiler, source, built, (*FLAGS, *extra))
            if result.returncode == 0:
                break
        else:
            raise ImportError(f"building {source.name} with {compiler} failed:\n{result.stderr[-2000:]}")
        os.replace(built, target)


#: ctypes types of the kernels' arguments: pointers (a tensor's data_ptr() or None), sizes and strides, flags,
#: and the scalar type of each dtype's real part.
POINTER, LONG, INT = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
REAL = {torch.float32: ctypes.c_float, torch.float64: ctypes.c_double,
        torch.complex64: ctypes.c_float, torch.complex128: ctypes.c_double}  # fmt: skip


def bind(
    library: ctypes.CDLL, prefix: str, dtypes: Sequence[torch.dtype], argtypes: Callable[[type], list]
) -> dict[torch.dtype, Callable]:
    """{dtype: the void C function ``<prefix>_<dtype name>`` of ``library``} (``scan_forward_float32``, ...), each
    with its argument types ``argtypes(REAL[dtype])`` set."""
    functions = {}
    for dtype in dtypes:
        function = getattr(library, f"{prefix}_{str(dtype).removeprefix('torch.')}")
        function.argtypes, function.restype = argtypes(REAL[dtype]), None
        functions[dtype] = function
    return functions


def pointer(x: torch.Tensor | None) -> int | None:
    """A tensor argument of a kernel: its data pointer, or None (NULL) for an absent one."""
    return None if x is None else x.data_ptr()


def on_cpu_in_one_dtype(dtypes: Sequence[torch.dtype], *tensors: torch.Tensor | None) -> bool:
    """Whether the tensors given (None skipped) are all on the CPU and of one dtype among ``dtypes``: what a kernel
    module's ``applies`` asks."""
    given = [x for x in tensors if x is not None]
    return all(x.device.type == "cpu" and x.dtype == given[0].dtype in dtypes for x in given)
