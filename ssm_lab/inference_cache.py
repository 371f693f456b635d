"""Reuse a module's parametrisation while it cannot change.

The certified cores and layers rebuild their weights from the raw parameters on every call: Gram-iteration
bounds and normalised contractions (tv, l2n, lru's gain bound, contractive layers, the DeepSSM's encoder and
decoder norms), the bounded-real-lemma system (l2ru). Training needs that (the result carries the graph back to
the raw parameters), but inference pays it again for every call, and streaming inference (``step()`` token by
token, stateful calls) for every token: on CPU a 256-wide tv core spent ~8 ms of its ~8 ms step in its bound,
l2n ~29 ms.

``cached_without_grad`` wraps such a method (one without arguments). While autograd is off (``torch.no_grad``,
``torch.inference_mode``: validation, testing, streaming) its result is kept on the module and returned again as
long as every parameter and buffer of the module is the same tensor, with the same storage and version counter,
under the same autocast setting. In-place updates (an optimizer step, ``load_state_dict``, an EMA's
``copy_`` under ``torch.no_grad()``), ``.to()`` and replaced parameters all change one of these, so the result is
rebuilt. An in-place change made through ``p.data`` is not seen: ``.data`` is a tensor with a version counter of its
own, which no check short of reading every parameter at every call could follow; change parameters under
``torch.no_grad()`` instead (as torch's own optimizers do). With autograd on it is always rebuilt
and nothing is kept. Attributes that are not tensors (``gram_iterations``, ...) are taken as fixed after
construction.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["cached_without_grad"]

Result = TypeVar("Result")


def _key(module: nn.Module) -> tuple:
    """What the result depends on: each tensor's identity, storage, version, dtype, device and shape, and the
    autocast setting of their device type."""
    tensors = [*module.parameters(), *module.buffers()]
    device_type = tensors[0].device.type if tensors else "cpu"
    autocast = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    return autocast, *((id(t), t.data_ptr(), t._version, t.dtype, t.device, t.shape) for t in tensors)


def cached_without_grad(method: Callable[[Any], Result]) -> Callable[[Any], Result]:
    """Decorate a module's argument-free method: with autograd off, its last result is reused while ``_key``
    of the module is unchanged (module docstring)."""
    slot = f"_cached_{method.__name__}"

    @functools.wraps(method)
    def reused(module: nn.Module) -> Result:
        if torch.is_grad_enabled():
            module.__dict__.pop(slot, None)
            return method(module)
        key = _key(module)
        cached = module.__dict__.get(slot)
        if cached is None or cached[0] != key:
            cached = (key, method(module))
            module.__dict__[slot] = cached  # a plain attribute: in no state_dict, not a registered tensor
        return cached[1]

    return reused
