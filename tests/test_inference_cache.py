"""ssm_lab.inference_cache: the certified parametrisations are rebuilt once while autograd is off and nothing
changed, and rebuilt again after any change; with autograd on they are always rebuilt and carry the graph."""

from __future__ import annotations

import pytest
import torch

from ssm_lab.cores.l2n import L2N
from ssm_lab.cores.l2ru import L2RU
from ssm_lab.cores.lru import LRU
from ssm_lab.cores.tv import TV
from ssm_lab.layers.lipschitz import ContractiveLinear
from ssm_lab.models.deep_ssm import DeepSSM
from ssm_lab.ops import spectral

# (name, module, the call that rebuilds the parametrisation); each rebuild runs one Gram iteration or more
CASES = {
    "tv": (lambda: TV(4, d_state=6), lambda m, x: m(x)[0]),
    "l2n": (lambda: L2N(4, d_state=6), lambda m, x: m(x)[0]),
    "l2ru": (lambda: L2RU(4, d_state=6), lambda m, x: m(x)[0]),
    "lru gain bound": (lambda: LRU(4, d_state=6), lambda m, x: m.forward_and_gain_bound(x)[2]),
    "contractive linear": (lambda: ContractiveLinear(4, 5), lambda m, x: m(x)),
    "deep ssm, prescribed gamma": (
        lambda: DeepSSM(4, 3, d_model=4, d_state=6, n_layers=2, param="tv", gamma=1.0),
        lambda m, x: m(x)[0],
    ),
}


@pytest.fixture
def gram_iterations(monkeypatch) -> list[int]:
    """Counts the Gram iterations run (every bound and normalisation goes through spectral's _gram_iteration)."""
    calls = []
    original = spectral._gram_iteration
    monkeypatch.setattr(spectral, "_gram_iteration", lambda *args: calls.append(1) or original(*args))
    return calls


@pytest.mark.parametrize("case", list(CASES))
def test_rebuilt_once_without_grad_and_after_every_change(case, gram_iterations):
    build, call = CASES[case]
    torch.manual_seed(0)
    module, x = build(), torch.randn(2, 5, 4)
    expected = call(module, x).detach()  # autograd on: the plain computation
    per_rebuild = len(gram_iterations)
    assert per_rebuild >= 1
    with torch.no_grad():
        first, second = call(module, x), call(module, x)
    assert len(gram_iterations) == 2 * per_rebuild  # built once for both calls
    torch.testing.assert_close(first, expected)  # l2ru's solve may round differently without autograd: an ulp
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    with torch.no_grad():  # an in-place update (what an optimizer step does): rebuilt, and equal to a fresh build
        for parameter in module.parameters():
            parameter.mul_(0.9)
        changed = call(module, x)
    assert len(gram_iterations) == 3 * per_rebuild
    torch.testing.assert_close(changed, call(module, x).detach())
    with torch.inference_mode():
        call(module, x)
        call(module, x)
    assert len(gram_iterations) == 5 * per_rebuild  # one rebuild with grad above, one here for both calls


@pytest.mark.parametrize("case", list(CASES))
def test_with_autograd_on_every_call_rebuilds_and_carries_the_graph(case, gram_iterations):
    build, call = CASES[case]
    module, x = build(), torch.randn(2, 5, 4)
    with torch.no_grad():
        call(module, x)  # kept: it must not stand in for a training call's parametrisation
    per_rebuild = len(gram_iterations)
    for step in (1, 2):
        module.zero_grad()
        call(module, x).square().sum().backward()
        assert len(gram_iterations) == (1 + step) * per_rebuild
        assert all(p.grad is not None for p in module.parameters() if p.requires_grad)


def test_dtype_device_moves_state_loads_and_autocast_rebuild(gram_iterations):
    torch.manual_seed(0)
    core, x = TV(4, d_state=6), torch.randn(2, 5, 4)
    with torch.no_grad():
        core(x)
        core.double()
        assert core(x.double())[0].dtype == torch.float64  # not the float32 result kept before
        core.float()
        core.load_state_dict(TV(4, d_state=6).state_dict())  # copies in place: new versions
        loaded = core(x)[0]
        with torch.autocast("cpu", dtype=torch.bfloat16):
            core(x)
    assert len(gram_iterations) == 4
    fresh = TV(4, d_state=6)
    fresh.load_state_dict(core.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loaded, fresh(x)[0], rtol=0, atol=0)
    assert not any("_cached_" in key for key in core.state_dict())
