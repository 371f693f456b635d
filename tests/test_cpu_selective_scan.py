"""The C selective-scan kernel against the torch loop reference (outputs, final state, every gradient), its
determinism, its dtype checks, and the "scan" mode's dispatch to it on CPU."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

import ssm_lab.ops.selective_scan as selective_module
from ssm_lab.ops.selective_scan import (
    cpu_kernel_applies,
    cpu_kernel_selective_scan,
    selective_scan,
    selective_scan_by_mode,
    selective_scan_ref,
    signed_selective_scan,
    signed_selective_scan_ref,
)

needs_kernel = pytest.mark.skipif(
    selective_module.cpu_selective_scan is None, reason=f"{selective_module.CPU_KERNEL_UNAVAILABLE}"
)

BATCH, CHANNELS = 2, 70  # one full block of 64 channels (LANES in selective_scan.c) and a remainder of 6
# relative error ||out - ref|| / ||ref|| against the float64 reference computed from the same inputs
TOLERANCE = {torch.float64: 1e-12, torch.float32: 2e-5}


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return ((value.to(reference.dtype) - reference).norm() / reference.norm().clamp_min(1e-30)).item()


def _inputs(length: int, size: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Float64 inputs with delta |A| spread around log 2 (signed decays of both signs), and the weights of a loss."""
    generator = torch.Generator().manual_seed(seed)

    def sample(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    return {
        "u": sample(BATCH, length, CHANNELS),
        "delta": torch.nn.functional.softplus(sample(BATCH, length, CHANNELS)),
        "A": -torch.exp(sample(CHANNELS, size)),
        "B": sample(BATCH, length, size),
        "C": sample(BATCH, length, size),
        "D": sample(CHANNELS),
        "initial_state": sample(BATCH, CHANNELS, size),
        "weights_y": sample(BATCH, length, CHANNELS),
        "weights_final": sample(BATCH, CHANNELS, size),
    }


def _outputs_and_gradients(scan, inputs: dict, dtype: torch.dtype, names: list[str], grad_final: bool) -> list:
    """(y, final state, the gradients of ``names``) of scan(u, delta, A, B, C, D, initial_state) (absent names
    passed as None) for the loss sum(y weights_y) [+ sum(final weights_final)]."""
    leaves = {name: inputs[name].to(dtype).requires_grad_() for name in names}
    y, final = scan(*(leaves.get(name) for name in ("u", "delta", "A", "B", "C", "D", "initial_state")))
    loss = (y * inputs["weights_y"].to(dtype)).sum()
    if grad_final:
        loss = loss + (final * inputs["weights_final"].to(dtype)).sum()
    return [y, final, *torch.autograd.grad(loss, list(leaves.values()))]


def _kernel(signed: bool):
    return lambda *args: cpu_kernel_selective_scan(*args, signed=signed)


def _reference(signed: bool):
    return signed_selective_scan_ref if signed else selective_scan_ref


@needs_kernel
@pytest.mark.parametrize("signed", [False, True], ids=["positive", "signed"])
@pytest.mark.parametrize("length", [1, 7, 33, 100])  # 16-step checkpoint blocks: none crossed, 2 + 1, 6 + 4 steps
@pytest.mark.parametrize("size", [1, 5, 16])
@pytest.mark.parametrize("optional", [("D", "initial_state"), ("D",), ("initial_state",), ()], ids=str)
@pytest.mark.parametrize("grad_final", [True, False], ids=["grad_final", "no_grad_final"])
def test_kernel_matches_the_loop_in_float64(signed, length, size, optional, grad_final):
    """Outputs, final state and the gradients of u, delta, A, B, C and of D and the initial state where given."""
    inputs = _inputs(length, size, seed=length * size)
    names = ["u", "delta", "A", "B", "C", *optional]
    ours = _outputs_and_gradients(_kernel(signed), inputs, torch.float64, names, grad_final)
    expected = _outputs_and_gradients(_reference(signed), inputs, torch.float64, names, grad_final)
    for name, value, reference in zip(["y", "final", *names], ours, expected, strict=True):
        assert value.shape == reference.shape, name
        assert _relative_error(value, reference) < TOLERANCE[torch.float64], name


@needs_kernel
@pytest.mark.parametrize("signed", [False, True], ids=["positive", "signed"])
@pytest.mark.parametrize("length", [7, 100])
def test_kernel_in_float32_matches_the_float64_loop(signed, length):
    inputs = _inputs(length, 16, seed=length)
    names = ["u", "delta", "A", "B", "C", "D", "initial_state"]
    ours = _outputs_and_gradients(_kernel(signed), inputs, torch.float32, names, grad_final=True)
    expected = _outputs_and_gradients(_reference(signed), inputs, torch.float64, names, grad_final=True)
    for name, value, reference in zip(["y", "final", *names], ours, expected, strict=True):
        assert value.dtype == torch.float32, name
        assert _relative_error(value, reference) < TOLERANCE[torch.float32], name


@needs_kernel
def test_kernel_results_do_not_depend_on_the_thread_count():
    """Channel and batch sums are made per block and per row and summed in a fixed order: bit for bit the same."""
    inputs = _inputs(40, 5)
    names = ["u", "delta", "A", "B", "C", "D", "initial_state"]
    threads = torch.get_num_threads()
    results = []
    try:
        for count in (1, 3):
            torch.set_num_threads(count)
            results.append(_outputs_and_gradients(_kernel(False), inputs, torch.float32, names, grad_final=True))
    finally:
        torch.set_num_threads(threads)
    for ours, theirs in zip(*results, strict=True):
        assert torch.equal(ours, theirs)


@needs_kernel
@pytest.mark.parametrize("signed", [False, True], ids=["positive", "signed"])
def test_scan_mode_runs_the_kernel_on_cpu_and_torch_scan_the_torch_path(signed):
    inputs = _inputs(20, 4)
    args = [inputs[name].float() for name in ("u", "delta", "A", "B", "C", "D", "initial_state")]
    assert cpu_kernel_applies(*args)
    y, final = selective_scan_by_mode(*args, mode="scan", signed=signed)
    y_kernel, final_kernel = cpu_kernel_selective_scan(*args, signed=signed)
    assert torch.equal(y, y_kernel) and torch.equal(final, final_kernel)
    y, final = selective_scan_by_mode(*args, mode="torch_scan", signed=signed, chunk_size=8)
    y_torch, final_torch = (signed_selective_scan if signed else selective_scan)(*args, chunk_size=8)
    assert torch.equal(y, y_torch) and torch.equal(final, final_torch)


def test_scan_mode_takes_the_torch_path_where_the_kernel_does_not_apply():
    """Mixed dtypes (a float32 A with float64 activations) and half precision run the torch path."""
    inputs = _inputs(9, 3)
    args = [inputs[name] for name in ("u", "delta", "A", "B", "C", "D", "initial_state")]
    args[2] = args[2].float()
    assert not cpu_kernel_applies(*args)
    assert not cpu_kernel_applies(*(x.half() for x in args))
    y, final = selective_scan_by_mode(*args, mode="scan")
    y_torch, final_torch = selective_scan(*args)
    assert torch.equal(y, y_torch) and torch.equal(final, final_torch)


def test_scan_mode_takes_the_torch_path_where_the_kernel_was_not_built(monkeypatch):
    """No compiler, or SSM_LAB_CPU_KERNELS=0: the module is None and "scan" is the torch path; asking for the
    kernel itself says why it is missing."""
    monkeypatch.setattr(selective_module, "cpu_selective_scan", None)
    monkeypatch.setattr(selective_module, "CPU_KERNEL_UNAVAILABLE", "no C compiler found ('cc')")
    inputs = _inputs(9, 3)
    args = [inputs[name].float() for name in ("u", "delta", "A", "B", "C", "D", "initial_state")]
    assert not cpu_kernel_applies(*args)
    y, final = selective_scan_by_mode(*args, mode="scan")
    y_torch, final_torch = selective_scan(*args)
    assert torch.equal(y, y_torch) and torch.equal(final, final_torch)
    with pytest.raises(ValueError, match="not available here: no C compiler found"):
        cpu_kernel_selective_scan(*args)


@needs_kernel
@pytest.mark.parametrize("dtypes", [(torch.float16,) * 2, (torch.float32, torch.float64)], ids=["half", "mixed"])
def test_the_kernel_refuses_other_dtypes_with_a_clear_error(dtypes):
    inputs = _inputs(5, 3)
    u, delta, A, B, C = (inputs[name] for name in ("u", "delta", "A", "B", "C"))
    u, delta, A, B, C = u.to(dtypes[0]), delta.to(dtypes[0]), A.to(dtypes[1]), B.to(dtypes[0]), C.to(dtypes[0])
    with pytest.raises(ValueError, match=f"the C selective scan takes CPU tensors.*A: {dtypes[1]}"):
        cpu_kernel_selective_scan(u, delta, A, B, C)


@needs_kernel
def test_the_kernel_checks_shapes_and_length():
    inputs = _inputs(5, 3)
    u, delta, A, B, C = (inputs[name] for name in ("u", "delta", "A", "B", "C"))
    with pytest.raises(ValueError, match="A must have shape"):
        cpu_kernel_selective_scan(u, delta, A[:, :2], B, C)
    with pytest.raises(ValueError, match="L = 0"):
        cpu_kernel_selective_scan(u[:, :0], delta[:, :0], A, B[:, :0], C[:, :0])


def test_the_kernel_builds_where_a_compiler_is():
    """A machine with a C compiler (CI's) must build the kernel: a failed build would otherwise only show as the
    slower torch path."""
    if shutil.which(os.environ.get("CC", "cc")) is None or os.environ.get("SSM_LAB_CPU_KERNELS") == "0":
        pytest.skip("no C compiler here, or the kernels are turned off")
    assert selective_module.cpu_selective_scan is not None, selective_module.CPU_KERNEL_UNAVAILABLE
