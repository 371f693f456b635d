"""Exact signature terms of piecewise-linear paths (the labels of the toy dataset of Cirone et al.
2024, "Theoretical Foundations of Deep Selective State-Space Models", Figure 1).

For a path X through points x_0, ..., x_N (increments D_t = x_{t+1} - x_t) and a word
w = (i_1, ..., i_k), the signature term is the iterated integral

    S^w(X) = int_{0 < s_1 < ... < s_k < T} dX^{i_1}_{s_1} ... dX^{i_k}_{s_k}.

Chen's identity, S(X * Y) = S(X) (x) S(Y), with the signature of one linear segment,
S^{(i_1..i_k)}(segment t) = D_t^{i_1} ... D_t^{i_k} / k!, gives for the prefixes w_j = (i_1..i_j)
of w and P_j(t) = S^{w_j}(first t segments):

    P_j(t + 1) = P_j(t) + sum_{m < j} P_m(t) * D_t^{i_{m+1}} ... D_t^{i_j} / (j - m)!,   P_0 = 1.

``signature_term`` evaluates this for all t at once (an exclusive cumulative sum per level);
``signature_term_loop`` steps through the segments one by one, the reference twin.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor


def _letters(path: Tensor, word: Sequence[int]) -> Tensor:
    """Increments of the channels the word reads, in word order: (B, N, k)."""
    if path.dim() != 3 or path.shape[1] < 2:
        raise ValueError(f"path must be (B, L, d) with L >= 2 points, got shape {tuple(path.shape)}")
    dim = path.shape[2]
    if len(word) == 0 or any(not 0 <= letter < dim for letter in word):
        raise ValueError(f"word must be a non-empty sequence of channels in 0..{dim - 1}, got {tuple(word)}")
    return path.diff(dim=1)[..., list(word)]


def _segment_term(letters: Tensor, start: int, stop: int) -> Tensor:
    """Signature term of the sub-word (i_{start+1} .. i_stop) over each single segment: (B, N)."""
    return letters[..., start:stop].prod(dim=-1) / math.factorial(stop - start)


def signature_term(path: Tensor, word: Sequence[int]) -> Tensor:
    """S^word of the piecewise-linear path through ``path``: (B, L, d) -> (B,), vectorised over
    paths and segments (cost O(B N k^2) for a word of length k)."""
    letters = _letters(path, word)
    before = [torch.ones_like(letters[..., 0])]  # before[m][:, t] = P_m(t)
    for level in range(1, len(word) + 1):
        increment = sum(before[m] * _segment_term(letters, m, level) for m in range(level))
        if level == len(word):
            return increment.sum(dim=1)
        before.append(increment.cumsum(dim=1) - increment)
    raise AssertionError("unreachable: the loop returns at the last level")


def signature_term_loop(path: Tensor, word: Sequence[int]) -> Tensor:
    """Reference twin of ``signature_term``: Chen's identity applied one segment at a time."""
    letters = _letters(path, word)
    prefix = [torch.ones_like(letters[:, 0, 0])] + [torch.zeros_like(letters[:, 0, 0]) for _ in word]
    for t in range(letters.shape[1]):
        segment = letters[:, t : t + 1]
        # highest level first, so the lower levels still hold P_m(t) when they are read
        for level in range(len(word), 0, -1):
            prefix[level] = prefix[level] + sum(
                prefix[m] * _segment_term(segment, m, level)[:, 0] for m in range(level)
            )
    return prefix[len(word)]
