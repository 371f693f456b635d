"""fast_tanh equals torch.tanh: to a few eps absolutely in float32/float64 (its CPU identity), and
exactly where it calls torch.tanh (half precision, where the identity would lose small arguments)."""

from __future__ import annotations

import pytest
import torch

from ssm_lab.ops.activations import fast_tanh


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fast_tanh_is_tanh_to_a_few_eps(dtype):
    x = torch.cat([torch.linspace(-20, 20, 4001, dtype=dtype), torch.tensor([0.0, 1e-8, -3e-5], dtype=dtype)])
    torch.testing.assert_close(fast_tanh(x), torch.tanh(x), atol=4 * torch.finfo(dtype).eps, rtol=0)
    out = torch.empty_like(x)
    assert fast_tanh(x, out=out) is out


def test_fast_tanh_keeps_small_arguments_in_bfloat16():
    x = torch.tensor([1e-2, -3e-3, 1e-4, 0.5, -2.0], dtype=torch.bfloat16)
    torch.testing.assert_close(fast_tanh(x), torch.tanh(x), atol=0, rtol=0)
