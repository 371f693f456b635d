"""Static layers: certified ones never exceed lipschitz_bound(), for any parameters; GLU has none."""

from __future__ import annotations

import pytest
import torch

from ssm_lab.layers.glu import GLU
from ssm_lab.layers.lipschitz import LGLU, LMLP, TLIP, LinearFF, group_sort_2
from ssm_lab.layers.mlp import MLP
from ssm_lab.ops.activations import gated_tanh, gated_tanh_ref

D_MODEL = 6
CERTIFIED = {
    "LMLP": lambda: LMLP(D_MODEL, lipschitz=1.3),
    "LGLU": lambda: LGLU(D_MODEL, lipschitz=0.7),
    "TLIP": lambda: TLIP(D_MODEL, d_hidden=8, n_hidden_layers=2),
    "Linear": lambda: LinearFF(D_MODEL, lipschitz=1.1),
}


def perturb(layer: torch.nn.Module, scale: float, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in layer.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))


def largest_jacobian_norm(layer: torch.nn.Module, points: torch.Tensor) -> float:
    """max over points of ||J_f(x)||_2, the local Lipschitz constant (exact, by autograd)."""
    jacobians = torch.stack([torch.autograd.functional.jacobian(layer, x) for x in points])
    return float(torch.linalg.matrix_norm(jacobians.double(), ord=2).max())


@pytest.mark.parametrize("name", list(CERTIFIED))
def test_certified_layers_respect_their_bound_under_parameter_noise(name):
    for seed in range(3):
        torch.manual_seed(seed)
        layer = CERTIFIED[name]()
        perturb(layer, scale=3.0, seed=seed)
        layer.requires_grad_(False)
        bound = float(layer.lipschitz_bound())
        x = torch.randn(3, D_MODEL)
        output, bound_with_output = layer.forward_and_lipschitz_bound(x)
        assert torch.equal(output, layer(x)) and float(bound_with_output) == bound
        assert torch.equal(layer(torch.zeros(2, D_MODEL)), torch.zeros(2, D_MODEL))  # f(0) = 0: a gain bound too
        points = 5 * torch.randn(15, D_MODEL)
        assert largest_jacobian_norm(layer, points) <= bound * (1 + 1e-5)
        x, y = 3 * torch.randn(500, D_MODEL), 3 * torch.randn(500, D_MODEL)
        ratios = (layer(x) - layer(y)).norm(dim=1) / (x - y).norm(dim=1)
        assert float(ratios.max()) <= bound * (1 + 1e-5)


def test_adversarial_pairs_never_beat_the_lglu_bound():
    torch.manual_seed(0)
    layer = LGLU(D_MODEL)
    layer.requires_grad_(False)
    bound = float(layer.lipschitz_bound())
    x, y = torch.randn(8, D_MODEL, requires_grad=True), torch.randn(8, D_MODEL, requires_grad=True)
    optimizer = torch.optim.Adam([x, y], lr=0.05)
    for _ in range(100):
        ratio = (layer(x) - layer(y)).norm(dim=1) / (x - y).norm(dim=1)
        assert float(ratio.detach().max()) <= bound * (1 + 1e-5)
        optimizer.zero_grad()
        (-ratio.log().sum()).backward()
        optimizer.step()


def test_plain_glu_has_no_global_lipschitz_constant():
    torch.manual_seed(0)
    glu = GLU(D_MODEL)
    glu.requires_grad_(False)
    assert glu.lipschitz_bound() == float("inf")
    # along a direction orthogonal to the first gate row, that gate stays put while its value grows
    gate_row = glu.linear.weight[D_MODEL]
    direction = torch.randn(1, D_MODEL)
    direction = direction - (direction @ gate_row) / gate_row.dot(gate_row) * gate_row
    local = [largest_jacobian_norm(glu, scale * direction) for scale in (1.0, 100.0, 10000.0)]
    assert local[0] < local[1] < local[2]  # the Jacobian grows with ||x||


def test_mlp_bound_is_a_lipschitz_bound():
    torch.manual_seed(0)
    mlp = MLP(D_MODEL)
    mlp.requires_grad_(False)
    assert largest_jacobian_norm(mlp, 3 * torch.randn(10, D_MODEL)) <= float(mlp.lipschitz_bound())


def test_group_sort_preserves_norms_and_sorts_pairs():
    x = torch.randn(5, 8)
    sorted_pairs = group_sort_2(x).unflatten(-1, (4, 2))
    assert torch.all(sorted_pairs[..., 0] >= sorted_pairs[..., 1])
    torch.testing.assert_close(group_sort_2(x).norm(dim=1), x.norm(dim=1))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: TLIP(4, d_hidden=5), "d_hidden must be a positive even number"),
        (lambda: TLIP(4, n_hidden_layers=-1), "n_hidden_layers must be >= 0"),
        (lambda: LGLU(4, lipschitz=0.0), "lipschitz must be a positive"),
        (lambda: LMLP(4, lipschitz=-2.0), "lipschitz must be a positive"),
    ],
)
def test_bad_settings_are_rejected(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_linear_feedforward_is_linear_and_its_bound_is_tight():
    layer = LinearFF(D_MODEL, lipschitz=1.5)
    x, y = torch.randn(4, D_MODEL), torch.randn(4, D_MODEL)
    torch.testing.assert_close(layer(2 * x - y), 2 * layer(x) - layer(y))
    with torch.no_grad():
        weight = layer.forward_and_lipschitz_bound(torch.eye(D_MODEL))[0].transpose(0, 1)
    exact = float(torch.linalg.matrix_norm(weight.double(), ord=2))
    bound = float(layer.lipschitz_bound())
    assert 0.99 * bound <= exact <= bound * (1 + 1e-6)  # a linear map's Lipschitz constant is its norm


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gated_tanh_node_equals_its_autograd_twin(dtype):
    """LGLU's activation as one autograd node: values and the gradients of the projection and the
    scale equal those of scale * tanh(v) * sigmoid(g) by autograd, and gradcheck passes in float64."""
    torch.manual_seed(0)
    projected = (3 * torch.randn(4, 9, 2 * D_MODEL, dtype=dtype)).requires_grad_(True)
    scale = torch.tensor(0.7, dtype=dtype, requires_grad=True)
    weights = torch.randn(4, 9, D_MODEL, dtype=dtype)
    y, y_ref = gated_tanh(projected, scale), gated_tanh_ref(projected, scale)
    tolerance = {"atol": 1e-6, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 1e-12, "rtol": 1e-12}
    torch.testing.assert_close(y, y_ref, **tolerance)
    got = torch.autograd.grad((weights * y).sum(), [projected, scale])
    want = torch.autograd.grad((weights * y_ref).sum(), [projected, scale])
    torch.testing.assert_close(got, want, **tolerance)
    if dtype == torch.float64:
        assert torch.autograd.gradcheck(gated_tanh, (projected[:2, :3], scale))


@pytest.mark.parametrize("name", ["GLU", "MLP", *CERTIFIED])
def test_residual_is_x_plus_scale_times_the_layer(name):
    """StaticLayer.residual (fused for GLU and LGLU) == x + scale f(x) in values and in the gradients of x, the
    scale and every parameter; the certified layers' residual_and_lipschitz_bound gives the same bound."""
    torch.manual_seed(0)
    layer = (GLU(D_MODEL) if name == "GLU" else MLP(D_MODEL) if name == "MLP" else CERTIFIED[name]()).double()
    x = torch.randn(2, 9, D_MODEL, dtype=torch.float64, requires_grad=True)
    scale = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    weights = torch.randn(2, 9, D_MODEL, dtype=torch.float64)
    leaves = [x, scale, *layer.parameters()]
    results = []
    for y in (layer.residual(x, scale), x + scale * layer(x)):
        results.append((y, *torch.autograd.grad((y * weights).sum(), leaves)))
    for got, expected in zip(*results, strict=True):
        torch.testing.assert_close(got, expected)
    if name in CERTIFIED:
        y, bound = layer.residual_and_lipschitz_bound(x, scale)
        torch.testing.assert_close(y, results[1][0])
        torch.testing.assert_close(bound, layer.lipschitz_bound())
