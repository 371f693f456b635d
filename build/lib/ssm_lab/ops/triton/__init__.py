"""GPU kernels (Triton) for the recurrences of ssm_lab.ops; each has its torch reference twin there.

Importing this package imports Triton; ``ssm_lab.ops.scan`` decides when a kernel runs (CUDA tensors of a
supported dtype) and falls back to the torch path otherwise.
"""
