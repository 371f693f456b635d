"""The layer benchmark (issue 9, benchmark 2) on a short sequence: every ssm_lab row is timed eagerly and replayed
from a CUDA graph, which needs a training step without host synchronisation."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.gpu


def test_layer_benchmark_times_each_layer_eagerly_and_from_a_cuda_graph(tmp_path):
    from ssm_lab.bench.layer import PARAMS, run

    out = tmp_path / "layer.jsonl"
    records = run([64], out)
    assert [json.loads(line)["name"] for line in out.read_text().splitlines()] == [r["name"] for r in records]
    ours = [r for r in records if r["name"].startswith("ssm_lab")]
    assert [r["name"] for r in ours] == [f"ssm_lab DeepSSM {param}" for param in PARAMS]
    for record in ours:
        assert "graphed_error" not in record, record.get("graphed_error")
        assert 0 < record["graphed_ms"] and 0 < record["gpu_busy_ms"] and record["gemm_ms"] <= record["gpu_busy_ms"]
        yardstick = min(records[0]["ms"], records[0]["graphed_ms"])
        assert record["graphed_ratio"] == pytest.approx(record["graphed_ms"] / yardstick)
