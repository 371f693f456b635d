"""The selective scan of Mamba (Gu & Dao 2023, "Mamba: Linear-Time Sequence Modeling with
Selective State Spaces"), channels last, with the discretisation fused:

    h_t = exp(delta_t A) * h_{t-1} + delta_t B_t u_t,      y_t = C_t . h_t + D u_t

u, delta: (B, L, D) (delta already positive), A: (D, N), B, C: (B, L, N), D: (D,),
state: (B, D, N). ``selective_scan_ref`` is the plain loop (the reference); ``selective_scan`` the
chunked pure-PyTorch fast path. The ``signed_*`` twins use the decay 2 exp(delta A) - 1 in (-1, 1)
(Grazzi et al. 2025, "Unlocking State-Tracking in Linear RNNs Through Negative Eigenvalues").
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ssm_lab.ops.scan import linear_recurrence

__all__ = [
    "chunk_major_recurrence",
    "chunked_linear_recurrence",
    "positive_decay",
    "selective_scan",
    "selective_scan_ref",
    "signed_decay",
    "signed_selective_scan",
    "signed_selective_scan_ref",
]

DEFAULT_CHUNK_SIZE = 32


def to_chunk_major(x: Tensor, chunk: int) -> Tensor:
    """(B, L, ...) -> (T, B, L / T, ...), position l = c T + t at [t, :, c]; L must divide by T."""
    return x.reshape(x.shape[0], x.shape[1] // chunk, chunk, *x.shape[2:]).movedim(2, 0)


def from_chunk_major(x: Tensor) -> Tensor:
    """Inverse of ``to_chunk_major``: (T, B, C, ...) -> (B, C T, ...)."""
    x = x.movedim(0, 2)
    return x.reshape(x.shape[0], x.shape[1] * x.shape[2], *x.shape[3:])


def chunked_linear_recurrence(
    a: Tensor, b: Tensor, h0: Tensor | None = None, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> Tensor:
    """Every state of h_t = a_t * h_{t-1} + b_t for a, b: (B, L, *S), h0: (B, *S) -> (B, L, *S).

    A layout wrapper around ``chunk_major_recurrence`` (padding L to a multiple of the chunk)."""
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    if a.shape != b.shape or a.dim() < 3:
        raise ValueError(f"a and b must share a shape (B, L, ...), got {tuple(a.shape)} and {tuple(b.shape)}")
    batch, length, *state_shape = b.shape
    chunk = min(chunk_size, length)
    pad = (-length) % chunk
    if pad:  # identity steps: decay 1, input 0
        a = torch.cat([a, a.new_ones(batch, pad, *state_shape)], dim=1)
        b = torch.cat([b, b.new_zeros(batch, pad, *state_shape)], dim=1)
    states = chunk_major_recurrence(to_chunk_major(a, chunk), to_chunk_major(b, chunk), h0)
    return from_chunk_major(states)[:, :length]


def chunk_major_recurrence(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    """The recurrence h_l = a_l h_{l-1} + b_l on chunk-major tensors a, b: (T, B, C, *S), l = c T + t.

    Pass 1 runs the recurrence inside every chunk at once from a zero state (T vectorised steps
    over contiguous slices) and keeps the running decay products P_t; the chunk-end states are
    joined by a parallel scan over chunks (carry_c = P_end,c carry_{c-1} + local_end,c); then
    h = local + P carry_in. Only products of decays appear (no division by a cumulative
    product), so it is stable for any |a| <= 1, signs included, in T + log C sequential steps.
    The backward pass is the same scan reversed in time (``_ChunkMajorRecurrence``), so autograd
    keeps the states once, not every intermediate of the T steps.
    """
    if a.shape != b.shape or a.dim() < 3:
        raise ValueError(f"a and b must share a shape (T, B, C, ...), got {tuple(a.shape)} and {tuple(b.shape)}")
    if h0 is not None and h0.shape != (b.shape[1], *b.shape[3:]):
        raise ValueError(f"initial state must be (B, ...) = {(b.shape[1], *b.shape[3:])}, got {tuple(h0.shape)}")
    return _ChunkMajorRecurrence.apply(a, b, h0)


def _chunk_major_states(a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:
    # written in place into preallocated (T, B, C, *S) buffers: this runs without autograd
    local_states, decays = torch.empty_like(b), torch.empty_like(a)
    local_states[0], decays[0] = b[0], a[0]
    for t in range(1, a.shape[0]):
        torch.addcmul(b[t], a[t], local_states[t - 1], out=local_states[t])
        torch.mul(decays[t - 1], a[t], out=decays[t])
    batch, n_chunks = b.shape[1], b.shape[2]
    flat = (batch, n_chunks, -1)
    h0_flat = None if h0 is None else h0.reshape(batch, -1)
    carries = linear_recurrence(decays[-1].reshape(flat), local_states[-1].reshape(flat), h0_flat, mode="scan")
    first = torch.zeros_like(carries[:, :1]) if h0 is None else h0_flat.unsqueeze(1)
    incoming = torch.cat([first, carries[:, :-1]], 1).reshape(b.shape[1:])
    return torch.addcmul(local_states, decays, incoming)


class _ChunkMajorRecurrence(torch.autograd.Function):
    """Forward: ``_chunk_major_states``. Backward: with g_l = dLoss/dh_l through all later steps,
    g_l = grad_l + conj(a_{l+1}) g_{l+1} (the same recurrence reversed in time: flipping both the
    step and the chunk axes reverses l), then dLoss/db_l = g_l, dLoss/da_l = g_l conj(h_{l-1}),
    dLoss/dh0 = conj(a_0) g_0 (conjugates for complex inputs, PyTorch's convention)."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor | None) -> Tensor:
        states = _chunk_major_states(a, b, h0)
        ctx.save_for_backward(a, states, h0)
        return states

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_states: Tensor):
        a, states, h0 = ctx.saved_tensors
        # a_{l+1}: the next step in the chunk, or the first of the next chunk; 1 after the end
        next_chunk_first = torch.cat([a[:1, :, 1:], torch.ones_like(a[:1, :, :1])], dim=2)
        successor = torch.cat([a[1:], next_chunk_first], dim=0).conj()
        g = _chunk_major_states(successor.flip(0, 2), grad_states.flip(0, 2), None).flip(0, 2)
        grad_a = torch.empty_like(g)
        torch.mul(g[1:], states[:-1].conj(), out=grad_a[1:])
        start = torch.zeros_like(states[0, :, :1]) if h0 is None else h0.unsqueeze(1)
        grad_a[0] = g[0] * torch.cat([start, states[-1, :, :-1]], dim=1).conj()  # h_{l-1} from the previous chunk
        grad_h0 = None if h0 is None else a[0, :, 0].conj() * g[0, :, 0]
        return grad_a, g, grad_h0


def _check_shapes(
    u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None, h0: Tensor | None
) -> None:
    batch, length, channels = u.shape
    n = B.shape[-1]
    expected = {
        "delta": (delta, (batch, length, channels)),
        "A": (A, (channels, n)),
        "B": (B, (batch, length, n)),
        "C": (C, (batch, length, n)),
    }
    if D is not None:
        expected["D"] = (D, (channels,))
    if h0 is not None:
        expected["initial_state"] = (h0, (batch, channels, n))
    for name, (tensor, shape) in expected.items():
        if tuple(tensor.shape) != shape:
            raise ValueError(
                f"{name} must have shape {shape} for u of shape {tuple(u.shape)}, got {tuple(tensor.shape)}"
            )


def positive_decay(delta_a: Tensor) -> Tensor:
    """exp(delta A) in (0, 1): Mamba's decay."""
    return torch.exp(delta_a)


def signed_decay(delta_a: Tensor) -> Tensor:
    """2 exp(delta A) - 1 in (-1, 1): the negative-eigenvalue decay of Grazzi et al. 2025."""
    return 2 * torch.exp(delta_a) - 1


def _loop(u, delta, A, B, C, D, h0, decay_of: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    _check_shapes(u, delta, A, B, C, D, h0)
    h = u.new_zeros(u.shape[0], u.shape[2], A.shape[-1]) if h0 is None else h0
    outputs = []
    for t in range(u.shape[1]):
        decay = decay_of(delta[:, t, :, None] * A)
        h = decay * h + (delta[:, t] * u[:, t])[:, :, None] * B[:, t, None, :]
        outputs.append((h * C[:, t, None, :]).sum(-1))
    y = torch.stack(outputs, dim=1)
    return (y if D is None else y + D * u), h


def _chunked(u, delta, A, B, C, D, h0, chunk_size, decay_of: Callable[[Tensor], Tensor]) -> tuple[Tensor, Tensor]:
    """The (B, L, D, N) tensors are built directly in chunk-major layout (only the small (B, L, D)
    and (B, L, N) inputs are rearranged), so no big tensor is ever copied between layouts."""
    _check_shapes(u, delta, A, B, C, D, h0)
    if chunk_size <= 0:
        raise ValueError(f"chunk_size must be positive, got {chunk_size}")
    length = u.shape[1]
    chunk = min(chunk_size, length)
    pad = (-length) % chunk

    def rearranged(x: Tensor) -> Tensor:  # padding steps have delta = 0: decay 1, input 0
        return to_chunk_major(nn.functional.pad(x, (0, 0, 0, pad)), chunk)

    u_c, delta_c, B_c, C_c = (rearranged(x) for x in (u, delta, B, C))
    decay = decay_of(delta_c.unsqueeze(-1) * A)  # (T, B, C, D, N)
    inputs = (delta_c * u_c).unsqueeze(-1) * B_c.unsqueeze(-2)
    states = chunk_major_recurrence(decay, inputs, h0)
    y = from_chunk_major(torch.einsum("tbcdn,tbcn->tbcd", states, C_c))[:, :length]
    return (y if D is None else y + D * u), states[-1, :, -1]


def selective_scan_ref(u, delta, A, B, C, D=None, initial_state=None) -> tuple[Tensor, Tensor]:
    """The plain loop over time (the reference). Returns (y: (B, L, D), final_state: (B, D, N))."""
    return _loop(u, delta, A, B, C, D, initial_state, positive_decay)


def selective_scan(
    u, delta, A, B, C, D=None, initial_state=None, chunk_size=DEFAULT_CHUNK_SIZE
) -> tuple[Tensor, Tensor]:
    """Chunked scan (``chunked_linear_recurrence``), same results as ``selective_scan_ref``."""
    return _chunked(u, delta, A, B, C, D, initial_state, chunk_size, positive_decay)


def signed_selective_scan_ref(u, delta, A, B, C, D=None, initial_state=None) -> tuple[Tensor, Tensor]:
    """Loop reference with decay 2 exp(delta A) - 1 in (-1, 1) (Grazzi et al. 2025)."""
    return _loop(u, delta, A, B, C, D, initial_state, signed_decay)


def signed_selective_scan(
    u, delta, A, B, C, D=None, initial_state=None, chunk_size=DEFAULT_CHUNK_SIZE
) -> tuple[Tensor, Tensor]:
    """Chunked twin of ``signed_selective_scan_ref``."""
    return _chunked(u, delta, A, B, C, D, initial_state, chunk_size, signed_decay)
