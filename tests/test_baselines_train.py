"""Every baseline trains a few smoke steps on A5 through the real config and training loop, the
random-feature LCDE fits its readout in closed form, and the backbone refuses options it would
otherwise ignore."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from ssm_lab.cores.s4d import S4D
from ssm_lab.cores.s5 import S5
from ssm_lab.data.spec import TaskSpec
from ssm_lab.models.backbone import Backbone

MODELS = ["rnn", "lstm", "gru", "transformer", "s4", "s4d", "s5", "mamba", "rglru", "ids4", "lcde"]
SHORT = ("trainer.max_steps=4", "scale.eval_every=2", "scale.num_val=64", "scale.num_test=64")


@pytest.mark.parametrize("model", MODELS)
def test_baseline_trains_on_a5(train, model):
    summary = train(f"model={model}", *SHORT)
    assert summary["status"] == "completed"
    assert summary["steps"] == 4
    assert math.isfinite(summary["final"]["val/loss"])


def test_random_lcde_with_least_squares_readout_learns_without_gradients(train, make_config):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = train("model=lcde_random_ols", *SHORT)
    assert not any("training_step" in str(warning.message) for warning in caught)  # None is on purpose here
    assert summary["status"] == "completed"
    assert summary["final"]["val/accuracy"] > 5 / 60  # chance is 1/60: the readout was fitted
    assert make_config("model=lcde_random_ols").model.readout == "least_squares"


SPEC = TaskSpec(name="toy", input_kind="continuous", output_kind="step_regression", d_output=2, d_input=3)


def test_timesteps_reach_time_varying_cores_and_change_the_output():
    torch.manual_seed(0)
    model = Backbone(SPEC, lambda d_model: S5(d_model, d_state=4), d_model=8, n_layers=2)
    x = torch.randn(2, 5, 3)
    regular = model(x)
    torch.testing.assert_close(model(x, integration_timesteps=torch.ones(2, 5)), regular)
    assert not torch.allclose(model(x, integration_timesteps=torch.full((2, 5), 3.0)), regular)


def test_timesteps_for_a_time_invariant_core_are_an_error():
    model = Backbone(SPEC, lambda d_model: S4D(d_model, d_state=4), d_model=8, mode="conv")
    with pytest.raises(ValueError, match="S4D is time-invariant and takes no integration_timesteps"):
        model(torch.randn(2, 5, 3), integration_timesteps=torch.ones(2, 5))


def test_backbone_options_are_checked():
    with pytest.raises(ValueError, match="unknown readout 'ridge'; choose one of trained, least_squares"):
        Backbone(SPEC, lambda d_model: S4D(d_model), readout="ridge")
    with pytest.raises(ValueError, match="S4D has no mode 'scan_fast'"):
        Backbone(SPEC, lambda d_model: S4D(d_model), mode="scan_fast")(torch.randn(1, 2, 3))


def test_no_residual_block_is_the_bare_core():
    torch.manual_seed(0)
    model = Backbone(
        SPEC, lambda d_model: S5(d_model, d_state=4), d_model=8, n_layers=1, norm="none", mixing="none", residual=False
    )
    x = torch.randn(2, 5, 3)
    core_output, _ = model.blocks[0].core(model.encoder(x))
    torch.testing.assert_close(model(x), model.decoder(core_output))


@pytest.mark.parametrize("core", [lambda d_model: S5(d_model, d_state=4), lambda d_model: S4D(d_model, d_state=4)])
def test_a_stack_without_nonlinearity_is_affine(core):
    """nonlinear=False, norm=none: the blocks of linear cores compose to an affine map of the whole input sequence,
    f(a x + b y) = a f(x) + b f(y) + (1 - a - b) f(0); with a LayerNorm left in, it would not be."""
    torch.manual_seed(0)
    model = Backbone(SPEC, core, d_model=8, n_layers=3, nonlinear=False, norm="none").double()
    x, y = torch.randn(2, 2, 5, 3, dtype=torch.float64)
    f = model
    torch.testing.assert_close(f(2.5 * x - 0.7 * y), 2.5 * f(x) - 0.7 * f(y) - 0.8 * f(torch.zeros_like(x)))
    with pytest.raises(ValueError, match="nonlinear=False .* norm='pre' keeps a LayerNorm .* set norm=none"):
        Backbone(SPEC, core, d_model=8, nonlinear=False)


class _Ones(torch.nn.Module):
    """A core that outputs ones."""

    modes = ("scan",)

    def forward(self, x, **_):
        return torch.ones_like(x), None


def test_dropout_is_applied_once_without_mixing():
    torch.manual_seed(0)
    model = Backbone(SPEC, lambda d_model: _Ones(), d_model=64, mixing="none", norm="none", dropout=0.5)
    out = model.blocks[0].train()(torch.zeros(1, 1000, 64))[0]
    # one Dropout(0.5): half zeroed, the rest doubled (twice: three quarters zeroed, the rest times 4)
    assert set(out.unique().tolist()) == {0.0, 2.0} and 0.45 < float((out == 0).float().mean()) < 0.55


def test_least_squares_readout_is_fitted_on_the_features_it_will_read(train):
    """Dropout is off when the features are read for the normal equations, as when the fitted readout is used:
    the fit, and so every val and test metric, is that of the model without dropout (train metrics are taken
    with dropout on)."""
    with_dropout = train("model=lcde_random_ols", "model.dropout=0.3", *SHORT)["final"]
    without = train("model=lcde_random_ols", *SHORT)["final"]
    held_out = [key for key in without if not key.startswith("train/")]
    assert len(held_out) == 4
    assert {key: with_dropout[key] for key in held_out} == {key: without[key] for key in held_out}


def test_least_squares_backbone_has_nothing_to_train():
    model = Backbone(SPEC, lambda d_model: S5(d_model, d_state=4), d_model=8, readout="least_squares")
    assert not any(p.requires_grad for p in model.parameters())
