"""Train one run (or a sweep with -m): python run_experiment.py model=lru data=A5 seed=3."""

import hydra
from omegaconf import DictConfig

from ssm_lab.train import run


@hydra.main(config_path="configs", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
