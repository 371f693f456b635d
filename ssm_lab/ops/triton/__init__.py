"""GPU kernels (Triton) for the recurrences of ssm_lab.ops; each has its torch reference twin there.

Importing a kernel module imports Triton; the op that calls it (``ssm_lab.ops.scan`` and the like) decides when a
kernel runs (CUDA tensors of a supported dtype, each module's ``applies``) and falls back to the torch path
otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["holds_state"]


def holds_state(dtypes: Sequence[torch.dtype], max_state: int, *tensors: torch.Tensor | None) -> bool:
    """Whether a kernel that keeps its step's N x N matrix in registers takes these tensors (None skipped): CUDA
    tensors on one device, of one dtype among ``dtypes``, the first with a last axis N <= ``max_state``."""
    given = [x for x in tensors if x is not None]
    return (
        bool(given)
        and all(x.is_cuda and x.device == given[0].device and x.dtype == given[0].dtype in dtypes for x in given)
        and given[0].shape[-1] <= max_state
    )
