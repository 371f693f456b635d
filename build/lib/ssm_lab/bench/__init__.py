"""Speed and memory benchmarks (run on a GPU; results appended to benchmarks/results/<date>-<device>.jsonl)."""
