"""The CUDA-graph training benchmark on a tiny budget: both timings are real Lightning steps of the same run."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.gpu


def test_cuda_graph_benchmark_times_eager_and_graphed_training_steps():
    from ssm_lab.bench.cuda_graphs import measure

    record = measure("lru", "small", steps=6, warmup=2, rounds=1)
    assert record["model"] == "lru" and "trainer=gpu" in record["overrides"]
    assert 0 < record["eager_step_ms"] and 0 < record["graphed_step_ms"]
    assert record["speedup"] == pytest.approx(record["eager_step_ms"] / record["graphed_step_ms"])
