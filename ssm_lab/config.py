"""Composing the project's Hydra config outside the command line (tests, figures, benchmarks)
and finalising a composed config into the plain, fully resolved one a run records."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf, open_dict

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"


def compose_config(overrides: Sequence[str] = (), config_name: str = "config") -> DictConfig:
    """The config ``python run_experiment.py OVERRIDES`` would run, finalised."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(config_name, overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return finalize(cfg)


def finalize(cfg: DictConfig) -> DictConfig:
    """Resolve every interpolation (``${hydra:...}`` included, so HydraConfig must be set) and
    drop the ``hydra`` node: what is left is what the run computes and records. A data source
    "auto" becomes the source it picks now (``resolve_data_source``)."""
    cfg = cfg.copy()
    with open_dict(cfg):
        cfg.pop("hydra", None)
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    resolve_data_source(cfg)
    return cfg


def resolve_data_source(cfg: DictConfig) -> None:
    """``data.source: auto`` replaced, in place, by what the data module would pick from the files in
    ``data_dir`` (``<DataModule>.auto_source``): the run records, and its identity holds, the data it
    actually reads, so a run on generated data is never taken for one on the benchmark's files once
    they arrive (nor the other way round)."""
    data = cfg.get("data")
    if not isinstance(data, DictConfig) or data.get("source") != "auto" or "_target_" not in data:
        return
    data.source = get_class(data._target_).auto_source(data)
