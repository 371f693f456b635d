"""Shared fixtures: the real Hydra config, composed and shrunk to smoke scale."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest
import torch
from omegaconf import DictConfig

from ssm_lab.config import compose_config
from ssm_lab.train import run


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., DictConfig]:
    """make_config(*overrides) -> the finalised config of `run_experiment.py scale=smoke OVERRIDES`,
    recording into tmp_path with no extra logger."""

    def compose(*overrides: str) -> DictConfig:
        base = ["scale=smoke", f"results_dir={tmp_path / 'results'}", f"data_dir={tmp_path / 'data'}", "logger=none"]
        return compose_config([*base, *overrides])

    return compose


@pytest.fixture
def train(make_config) -> Callable[..., dict]:
    """train(*overrides, callbacks=()) -> the run's summary (runs the real training loop)."""

    def _train(*overrides: str, callbacks: Sequence = ()) -> dict:
        return run(make_config(*overrides), callbacks=callbacks)

    return _train
