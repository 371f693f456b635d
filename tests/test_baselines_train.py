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


def test_least_squares_backbone_has_nothing_to_train():
    model = Backbone(SPEC, lambda d_model: S5(d_model, d_state=4), d_model=8, readout="least_squares")
    assert not any(p.requires_grad for p in model.parameters())
