"""The C linear-recurrence kernel against the torch loop reference, its build, and the CPU dispatch."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import torch

import ssm_lab.cores.tv as tv_module
import ssm_lab.ops.gated_residual as gated_module
import ssm_lab.ops.matrix_scan as matrix_module
import ssm_lab.ops.scan as scan_module
from ssm_lab.ops.cpu import build
from ssm_lab.ops.scan import kernel_applies, linear_recurrence, linear_recurrence_chunked, linear_recurrence_ref

# where no C compiler is found the kernels are not built and the torch paths run: their tests skip
needs_kernel = pytest.mark.skipif(scan_module.cpu_scan is None, reason=f"{scan_module.CPU_KERNEL_UNAVAILABLE}")

# relative error ||out - ref|| / ||ref|| against a float64 reference computed from the same inputs
TOLERANCE = {torch.float32: 1e-5, torch.complex64: 1e-5, torch.float64: 1e-12, torch.complex128: 1e-12}
KINDS = {
    "lti": lambda batch, length, n: (n,),
    "per_batch": lambda batch, length, n: (batch, 1, n),
    "per_step": lambda batch, length, n: (batch, length, n),
    "shared_steps": lambda batch, length, n: (1, length, n),
}


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.to(reference.dtype) - reference).norm() / reference.norm().clamp_min(1e-30)).item()


def _inputs(dtype: torch.dtype, kind: str, length: int, n: int, with_h0: bool, seed: int = 0):
    """Decays with |a| in [0.5, 0.999] (long memories: errors would accumulate over L), inputs, h0, dLoss/dh."""
    generator = torch.Generator().manual_seed(seed)
    batch = 3

    def sample(*shape: int) -> torch.Tensor:
        real = torch.randn(*shape, generator=generator, dtype=torch.float64)
        if dtype.is_complex:
            real = torch.complex(real, torch.randn(*shape, generator=generator, dtype=torch.float64))
        return real.to(dtype)

    shape = KINDS[kind](batch, length, n)
    modulus = 0.5 + 0.499 * torch.rand(shape, generator=generator, dtype=torch.float64)
    if dtype.is_complex:
        a = torch.polar(modulus, 2 * torch.pi * torch.rand(shape, generator=generator, dtype=torch.float64))
    else:
        a = torch.where(torch.rand(shape, generator=generator, dtype=torch.float64) < 0.2, -modulus, modulus)
    h0 = sample(batch, n) if with_h0 else None
    return a.to(dtype), sample(batch, length, n), h0, sample(batch, length, n)


def test_the_kernels_build_where_a_compiler_is():
    """A machine with a C compiler (CI's) must build every kernel: a failed build would otherwise only show as
    the slower torch paths."""
    if shutil.which(os.environ.get("CC", "cc")) is None or os.environ.get("SSM_LAB_CPU_KERNELS") == "0":
        pytest.skip("no C compiler here, or the kernels are turned off")
    built = [scan_module.cpu_scan, tv_module.cpu_steps, matrix_module.cpu_loops, gated_module.cpu_gated]
    assert all(module is not None for module in built), scan_module.CPU_KERNEL_UNAVAILABLE


@needs_kernel
@pytest.mark.parametrize("length", [1, 7, 64, 1000])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.complex64, torch.complex128], ids=str)
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("with_h0", [False, True], ids=["zero_h0", "h0"])
@pytest.mark.parametrize("n", [5, 37])  # fewer lanes than a block, and two blocks and a remainder
def test_kernel_matches_the_loop_outputs_and_every_gradient(length, dtype, kind, with_h0, n):
    a, b, h0, grad_h = _inputs(dtype, kind, length, n, with_h0, seed=length + n)
    assert kernel_applies(a, b, h0)
    wide = torch.complex128 if dtype.is_complex else torch.float64
    inputs = [x.to(wide).requires_grad_() for x in (a, b) + ((h0,) if with_h0 else ())]
    reference = linear_recurrence_ref(inputs[0], inputs[1], inputs[2] if with_h0 else None)
    expected = torch.autograd.grad(reference, inputs, grad_h.to(wide))
    ours = [x.clone().requires_grad_() for x in (a, b) + ((h0,) if with_h0 else ())]
    states = linear_recurrence(ours[0], ours[1], ours[2] if with_h0 else None, mode="scan")
    assert states.dtype == dtype
    assert _relative_error(states, reference) < TOLERANCE[dtype]
    for got, want in zip(torch.autograd.grad(states, ours, grad_h), expected, strict=True):
        assert got.shape == want.shape and got.dtype == dtype
        assert _relative_error(got, want) < TOLERANCE[dtype]


@needs_kernel
def test_adjoint_sums_the_decay_gradient_over_a_shared_batch():
    """a shared by the batch (1, 1, N) and per step (1, L, N): grad_a keeps a's shape, summed over rows."""
    for kind in ("lti", "shared_steps"):
        a, b, h0, grad_h = _inputs(torch.float64, kind, 9, 4, with_h0=True)
        a = a.view(1, -1, 4)
        states = linear_recurrence_ref(a, b, h0)
        grad_a, grad_b, grad_h0 = scan_module.cpu_scan.linear_scan_adjoint(a, states, h0, grad_h)
        leaves = [x.clone().requires_grad_() for x in (a, b, h0)]
        expected = torch.autograd.grad(linear_recurrence_ref(*leaves), leaves, grad_h)
        for got, want in zip((grad_a, grad_b, grad_h0), expected, strict=True):
            torch.testing.assert_close(got, want)


@needs_kernel
def test_empty_sequence_and_final_state_continuation():
    a, b, h0, _ = _inputs(torch.float32, "per_step", 40, 6, with_h0=True)
    assert scan_module.cpu_scan.linear_scan(a[:, :0], b[:, :0], h0).shape == (3, 0, 6)
    whole = linear_recurrence(a, b, h0)
    first = linear_recurrence(a[:, :25], b[:, :25], h0)
    second = linear_recurrence(a[:, 25:], b[:, 25:], first[:, -1])
    torch.testing.assert_close(torch.cat([first, second], dim=1), whole)


@needs_kernel
def test_cpu_scan_mode_runs_the_c_kernel_and_the_chunked_scan_without_it(monkeypatch):
    calls = []
    kernel = scan_module.cpu_scan.linear_scan
    monkeypatch.setattr(scan_module.cpu_scan, "linear_scan", lambda *args: calls.append(1) or kernel(*args))
    a, b, h0, _ = _inputs(torch.complex64, "per_step", 9, 4, with_h0=True)
    kernel_states = linear_recurrence(a, b, h0, mode="scan")
    assert calls == [1]
    for mode in ("chunked", "torch_scan", "loop"):  # the other modes never run it
        torch.testing.assert_close(linear_recurrence(a, b, h0, mode=mode), kernel_states)
    assert calls == [1]
    monkeypatch.setattr(scan_module, "cpu_scan", None)  # no compiler: the chunked scan
    assert not kernel_applies(a, b, h0)
    assert torch.equal(linear_recurrence(a, b, h0, mode="scan"), linear_recurrence_chunked(a, b, h0))
    assert calls == [1]


def test_build_caches_by_source_and_headers_and_raises_import_error_when_it_cannot_build(tmp_path, monkeypatch):
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler here")
    monkeypatch.setenv("SSM_LAB_CACHE_DIR", str(tmp_path / "cache"))
    source, header = tmp_path / "twice.c", tmp_path / "factor.h"
    header.write_text("#define FACTOR 2\n")
    source.write_text('#include "factor.h"\ndouble twice(double x) { return FACTOR * x; }\n')
    library = build.load_library(source)
    library.twice.restype, library.twice.argtypes = build.ctypes.c_double, [build.ctypes.c_double]
    assert library.twice(1.5) == 3.0
    assert len(list((tmp_path / "cache" / "cpu_kernels").glob("twice-*.so"))) == 1

    def compiler_must_not_run(*args):
        raise AssertionError("recompiled an unchanged source")

    monkeypatch.setattr(build, "_compile", compiler_must_not_run)
    build.load_library(source)  # the cached build
    for edited in (header, source):  # an edited header or source is built again
        edited.write_text(edited.read_text() + "\n")
        with pytest.raises(AssertionError, match="recompiled"):
            build.load_library(source)
    monkeypatch.undo()
    monkeypatch.setenv("SSM_LAB_CACHE_DIR", str(tmp_path / "cache"))
    source.write_text("this is not C\n")
    with pytest.raises(ImportError, match="building twice.c with .* failed"):
        build.load_library(source)
    (tmp_path / "read-only").write_text("a file where the cache directory should be")
    monkeypatch.setenv("SSM_LAB_CACHE_DIR", str(tmp_path / "read-only"))
    source.write_text("double twice(double x) { return 2 * x; }\n")
    with pytest.raises(ImportError, match="building or loading .* failed"):
        build.load_library(source)


def test_build_without_a_compiler_or_turned_off_is_an_import_error(tmp_path, monkeypatch):
    source = tmp_path / "twice.c"
    source.write_text("double twice(double x) { return 2 * x; }\n")
    monkeypatch.setenv("SSM_LAB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", "no-such-compiler")
    with pytest.raises(ImportError, match="no C compiler found \\('no-such-compiler'\\)"):
        build.load_library(source)
    monkeypatch.setenv("SSM_LAB_CPU_KERNELS", "0")
    with pytest.raises(ImportError, match="turned off"):
        build.load_library(source)


def test_fastmath_exp_log1p_and_sigmoid_are_accurate_in_float(tmp_path, monkeypatch):
    """The float exp and log1p of fastmath.h (written out to vectorise; the kernels' tanh, softplus and sigmoid
    are made of them) against float64 libm: within a few float32 roundings over their ranges, exp clamped to
    the normal floats, and log1p keeping full relative precision for tiny arguments."""
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler here")
    monkeypatch.setenv("SSM_LAB_CACHE_DIR", str(tmp_path / "cache"))
    header = Path(build.__file__).with_name("fastmath.h")
    source = tmp_path / "fastmath_probe.c"
    source.write_text(
        f'#include "{header}"\n'
        "void probe(const float *x, float *e, float *l, float *s, long n) {\n"
        "  for (long i = 0; i < n; i++) { e[i] = exp_float32(x[i]); s[i] = sigmoid_float32(x[i]); }\n"
        "  for (long i = 0; i < n; i++) l[i] = log1p_float32(x[i] < 0 ? -x[i] / 100 : x[i] / 100);\n"
        "}\n"
    )
    library = build.load_library(source)
    library.probe.argtypes = [build.POINTER] * 4 + [build.LONG]
    far = torch.tensor([-1000.0, -100.0, -88.0, 89.0, 100.0])  # outside the clamp [-87.3, 88.37]
    x = torch.cat([torch.linspace(-87, 88, 100001), torch.tensor([0.0, 1e-30, -1e-30, 1e-8]), far])
    outputs = [torch.empty_like(x) for _ in range(3)]
    library.probe(x.data_ptr(), *(output.data_ptr() for output in outputs), x.numel())
    exp, log1p, sigmoid = (output.double() for output in outputs)
    wide, inside = x.double(), slice(0, -len(far))
    assert ((exp - wide.exp()).abs() / wide.exp())[inside].max() < 4e-7
    y = wide.abs() / 100  # log1p's argument, in [0, 1]
    assert ((log1p - y.log1p()).abs() / y.log1p().clamp_min(1e-300))[y <= 1].max() < 4e-7
    assert (sigmoid - torch.sigmoid(wide)).abs().max() < 2e-7
    below, above = exp[-len(far) :][:3], exp[-len(far) :][3:]  # clamped: tiny positive, huge finite
    assert (below > 0).all() and (below < 2e-38).all() and torch.isfinite(above).all() and (above > 2e38).all()
