"""Training-step overhead of the Lightning run vs a bare PyTorch loop on the same model, data,
optimizer and schedule. Goal: <= 1.1x.

python -m ssm_lab.bench.overhead [--steps 60] [--out FILE] [hydra overrides ...]   (a word-problem dataset)
Appends one JSON line to benchmarks/results/<date>-<device>.jsonl (or --out).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import lightning as L
import torch
from hydra.utils import instantiate

from ssm_lab.bench.recording import append_records, positive_int, results_path
from ssm_lab.config import compose_config
from ssm_lab.task import SequenceTask

DEFAULT_OVERRIDES = ["scale=smoke", "scale.d_model=128", "scale.n_layers=2", "scale.seq_len=64", "logger=none"]


class StepTimer(L.Callback):
    """Wall time of every training step after ``warmup`` steps (batch fetch included)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.times, self.last = warmup, [], None

    def on_train_batch_end(self, trainer, *args) -> None:
        now = time.perf_counter()
        if self.last is not None and trainer.global_step > self.warmup:
            self.times.append(now - self.last)
        self.last = now


def build(cfg, cuda_graphs: bool = False):
    L.seed_everything(cfg.seed, verbose=False)
    datamodule = instantiate(cfg.data)
    if datamodule.spec.output_kind != "token_class":  # what bare_step_time's loss computes
        raise ValueError(
            f"the bare loop computes the per-token cross-entropy of a word problem; data={cfg.choices.data} is "
            f"{datamodule.spec.output_kind}: choose data=A5, S5, A4xZ5 or Z60"
        )
    datamodule.setup("fit")
    model = instantiate(cfg.model)(spec=datamodule.spec)
    task = SequenceTask(
        model,
        datamodule.spec,
        optimizer=instantiate(cfg.optim.optimizer),
        scheduler=instantiate(cfg.optim.scheduler),
        recurrence_lr=cfg.optim.recurrence_lr,
        cuda_graphs=cuda_graphs,
    )
    return datamodule, task


def lightning_step_time(cfg, steps: int, warmup: int, cuda_graphs: bool = False) -> float:
    datamodule, task = build(cfg, cuda_graphs)
    timer = StepTimer(warmup)
    trainer = L.Trainer(
        accelerator=cfg.trainer.accelerator,
        devices=1,
        max_steps=steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        gradient_clip_val=cfg.trainer.gradient_clip_val,
        callbacks=[timer],
    )
    trainer.fit(task, datamodule=datamodule)
    return sum(timer.times) / len(timer.times)


def bare_step_time(cfg, steps: int, warmup: int) -> float:
    datamodule, task = build(cfg)
    device = torch.device("cuda" if cfg.trainer.accelerator == "gpu" else "cpu")
    task.to(device)
    configured = task.configure_optimizers()
    optimizer, scheduler = configured["optimizer"], configured["lr_scheduler"]["scheduler"]
    times, last, step = [], None, 0
    while step < steps:
        for batch in datamodule.train_dataloader():
            batch = {k: v.to(device) for k, v in batch.items()}
            outputs = task.model(batch["inputs"]).flatten(0, 1)
            loss = torch.nn.functional.cross_entropy(outputs, batch["targets"].flatten())
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(task.parameters(), cfg.trainer.gradient_clip_val)
            optimizer.step()
            scheduler.step()
            loss.item()  # the Lightning task reads the loss every step too (non-finite check)
            step += 1
            now = time.perf_counter()
            if last is not None and step > warmup:
                times.append(now - last)
            last = now
            if step >= steps:
                break
    return sum(times) / len(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=positive_int, default=60)
    parser.add_argument("--warmup", type=int, default=10)
    rounds_help = "alternating rounds; the fastest of each is kept"
    parser.add_argument("--rounds", type=positive_int, default=3, help=rounds_help)
    parser.add_argument("--out", type=Path, default=None, help="jsonl to append to (default: benchmarks/results/)")
    parser.add_argument("overrides", nargs="*", help="hydra overrides (default: a 2-layer d_model=128 A5 run)")
    args = parser.parse_args()
    if not 0 <= args.warmup < args.steps:
        parser.error(f"--warmup must be in 0..steps - 1 = {args.steps - 1}, got {args.warmup}")
    cfg = compose_config([*DEFAULT_OVERRIDES, *args.overrides])
    # alternate the two and keep each one's best round, so a busy machine penalises neither
    bare_rounds, lightning_rounds = [], []
    for _ in range(args.rounds):
        bare_rounds.append(bare_step_time(cfg, args.steps, args.warmup))
        lightning_rounds.append(lightning_step_time(cfg, args.steps, args.warmup))
    bare, lightning = min(bare_rounds), min(lightning_rounds)
    result = {
        "benchmark": "overhead",
        "model": cfg.choices.model,
        "data": cfg.choices.data,
        "overrides": [*DEFAULT_OVERRIDES, *args.overrides],
        "bare_step_ms": 1e3 * bare,
        "lightning_step_ms": 1e3 * lightning,
        "ratio": lightning / bare,
        "torch_threads": torch.get_num_threads(),
    }
    append_records([result], args.out or results_path(gpu=False), gpu=False)  # a CPU-side measurement
    print(f"bare {1e3 * bare:.2f} ms/step, lightning {1e3 * lightning:.2f} ms/step, ratio {lightning / bare:.3f}")


if __name__ == "__main__":
    main()
