"""The core benchmark's rows (ssm_lab.bench.cores): one per core, timed in a child process, with the allocator
setting the child ran under."""

from __future__ import annotations

import json
import os
import platform

import pytest

from ssm_lab.bench.cores import main

SIZES = ["--length", "16", "--batch", "2", "--d-model", "8", "--d-state", "4", "--repeats", "1"]
# keep_freed_memory applies on Linux with glibc unless the environment rules the allocator (ssm_lab.cpu_memory)
APPLIES = (
    platform.system() == "Linux"
    and platform.libc_ver()[0] == "glibc"
    and os.environ.get("SSM_LAB_KEEP_FREED_MEMORY", "1") != "0"
    and not any(name in os.environ for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"))
)


@pytest.mark.parametrize("default_allocator", [False, True])
def test_rows_time_each_core_and_say_which_allocator_it_ran_with(tmp_path, default_allocator):
    out = tmp_path / "cores.jsonl"
    allocator = ["--default-allocator"] if default_allocator else []
    main(["--cores", "s5,rglru:loop", *SIZES, "--out", str(out), *allocator])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(row["core"], row["mode"]) for row in rows] == [("s5", "scan"), ("rglru", "loop")]
    assert all(row["ms_median"] > 0 and row["finite_output"] and row["length"] == 16 for row in rows)
    assert all(row["keeps_freed_memory"] is (APPLIES and not default_allocator) for row in rows)
