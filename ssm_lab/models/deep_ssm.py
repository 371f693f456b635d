"""DeepSSM: the certified deep state-space model of "Free Parametrization of L2-bounded State
Space Models" (Massai et al., arXiv 2503.23818), with the call semantics of the neural-ssm package.

    u: (B, L, d_input) -> E u -> n_layers x SSL block -> s * W y -> y: (B, L, d_output)
    SSL block:  x <- x + alpha * Core(x);  x <- x + beta * FF(x)      (alpha, beta = sigmoid(learned))

Zero-state l2 gain <= ||E|| prod_k (1 + alpha_k gamma_k)(1 + beta_k L_k) ||W|| * s, with gamma_k the
core's gain_bound(), L_k the static layer's lipschitz_bound() (certified layers send 0 to 0) and
the norms Gram-iteration bounds. gamma=float prescribes the bound: s = gamma / max(gamma, raw bound),
so it is <= gamma for every parameter value; gamma=None leaves s = 1 and reports the bound.
``TaskDeepSSM`` adapts it to the training contract (tokens -> embedding, per-sequence pooling).
"""

from __future__ import annotations

import functools
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
import torch.utils.checkpoint
from torch import Tensor, nn

from ssm_lab.cores.l2n import L2N, check_gamma
from ssm_lab.cores.l2ru import L2RU
from ssm_lab.cores.lru import LRU
from ssm_lab.cores.tv import TV
from ssm_lab.data.spec import TaskSpec
from ssm_lab.inference_cache import cached_without_grad
from ssm_lab.layers.glu import GLU
from ssm_lab.layers.lipschitz import LGLU, LMLP, TLIP, LinearFF
from ssm_lab.layers.mlp import MLP
from ssm_lab.models.certificate import prescribed_output_scale, residual_gain
from ssm_lab.models.pooling import pool_sequence
from ssm_lab.ops.spectral import spectral_norm_bound
from ssm_lab.validation import check_positive

CORES = {"lru": LRU, "l2n": L2N, "tv": TV, "l2ru": L2RU}
FEEDFORWARDS = {"LGLU": LGLU, "LMLP": LMLP, "TLIP": TLIP, "Linear": LinearFF, "GLU": GLU, "MLP": MLP}
CERTIFIED_FEEDFORWARDS = ("LGLU", "LMLP", "TLIP", "Linear")


class SSL(nn.Module):
    """One residual block x: (B, L, H) -> (B, L, H): core then static layer, each mixed in by a learned weight."""

    def __init__(
        self,
        core: nn.Module,
        feedforward: nn.Module,
        certified_feedforward: bool,
        mix_logit: float,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        self.core, self.feedforward, self.certified_feedforward = core, feedforward, certified_feedforward
        self.checkpoint = checkpoint
        self.core_mix_logit = nn.Parameter(torch.tensor(float(mix_logit)))
        self.feedforward_mix_logit = nn.Parameter(torch.tensor(float(mix_logit)))

    def forward(
        self, x: Tensor, state: Tensor | None, mode: str, lengths: Tensor | None, with_bound: bool = False
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(output, core's final state, this block's gain bound or None). ``with_bound`` (certified
        layers only) takes the bounds from the same normalisation that the forward pass computes."""
        x, state, core_gain = self._call(self._core_residual, x, state, mode, lengths, with_bound)
        x, feedforward_gain = self._call(self._feedforward_residual, x, with_bound)
        if not with_bound:
            return x, state, None
        core_mix, feedforward_mix = torch.sigmoid(self.core_mix_logit), torch.sigmoid(self.feedforward_mix_logit)
        return x, state, residual_gain(core_mix, core_gain) * residual_gain(feedforward_mix, feedforward_gain)

    def _core_residual(
        self, x: Tensor, state: Tensor | None, mode: str, lengths: Tensor | None, with_bound: bool
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """(x + alpha Core(x), final state, the core's gain bound when ``with_bound``): the core folds
        alpha and the skip into its output products (``residual_scale``), no extra full-size pass; not
        under autocast, where those products run in half precision and would round the residual stream."""
        alpha = torch.sigmoid(self.core_mix_logit)
        fold = not torch.is_autocast_enabled(x.device.type)
        options = {"state": state, "mode": mode, "lengths": lengths, "residual_scale": alpha if fold else None}
        if with_bound:
            z, state, gain = self.core.forward_and_gain_bound(x, **options)
        else:
            (z, state), gain = self.core(x, **options), None
        return (z if fold else torch.addcmul(x, alpha, z)), state, gain

    def _feedforward_residual(self, x: Tensor, with_bound: bool) -> tuple[Tensor, Tensor | None]:
        """(x + beta FF(x), the static layer's Lipschitz bound when ``with_bound``): the layer adds the residual
        itself (``StaticLayer.residual``), GLU and LGLU in their own last pass."""
        beta = torch.sigmoid(self.feedforward_mix_logit)
        if with_bound:
            return self.feedforward.residual_and_lipschitz_bound(x, beta)
        return self.feedforward.residual(x, beta), None

    def _call(self, function: Callable[..., Any], *args: Any) -> Any:
        """function(*args); with ``checkpoint`` (and gradients on) its activations are not kept but
        recomputed in the backward pass (torch.utils.checkpoint): memory for time."""
        if self.checkpoint and torch.is_grad_enabled():
            return torch.utils.checkpoint.checkpoint(function, *args, use_reentrant=False)
        return function(*args)

    def gain_bound(self) -> Tensor:
        """(1 + alpha gamma_core)(1 + beta L_ff); infinite for an uncertified static layer (GLU has no
        Lipschitz bound, MLP's biases move 0, so a Lipschitz bound is no gain bound)."""
        core_gain = self.core.gain_bound()
        if self.certified_feedforward:
            feedforward_gain = self.feedforward.lipschitz_bound()
        else:
            feedforward_gain = torch.full_like(core_gain, float("inf"))
        return residual_gain(torch.sigmoid(self.core_mix_logit), core_gain) * residual_gain(
            torch.sigmoid(self.feedforward_mix_logit), feedforward_gain
        )


class DeepSSM(nn.Module):
    """u: (B, L, d_input) -> (y: (B, L, d_output), states: list of each block's final state).

    param: core, one of CORES; ff: static layer, one of FEEDFORWARDS; gamma: prescribed bound of
    the whole network (needs a certified ff) or None (the bound is reported, not imposed).
    core_options go to the core (e.g. r_min for lru); mix_logit initialises the residual weights.
    checkpoint: recompute each core's and static layer's activations in the backward pass instead
    of storing them (a few times less memory on long sequences, one more forward pass of time).
    """

    def __init__(
        self,
        d_input: int,
        d_output: int,
        d_model: int = 64,
        d_state: int = 64,
        n_layers: int = 2,
        param: str = "l2n",
        ff: str = "LGLU",
        gamma: float | None = None,
        core_options: Mapping[str, Any] | None = None,
        mix_logit: float = -1.0,
        checkpoint: bool = False,
    ) -> None:
        super().__init__()
        check_positive(d_model=d_model, d_state=d_state, n_layers=n_layers, d_input=d_input, d_output=d_output)
        if param not in CORES:
            raise ValueError(f"unknown param {param!r}; choose one of {', '.join(CORES)}")
        if ff not in FEEDFORWARDS:
            raise ValueError(f"unknown ff {ff!r}; choose one of {', '.join(FEEDFORWARDS)}")
        if gamma is not None:
            check_gamma(gamma, "DeepSSM")
            if ff not in CERTIFIED_FEEDFORWARDS:
                raise ValueError(
                    f"gamma={gamma} needs a certified ff, but ff {ff!r} has no gain bound; "
                    f"choose one of {', '.join(CERTIFIED_FEEDFORWARDS)} or set gamma=None (model.gamma=null)"
                )
        self.d_input, self.d_output, self.param, self.ff, self.gamma = d_input, d_output, param, ff, gamma
        self.encoder = nn.Linear(d_input, d_model, bias=False)
        self.blocks = nn.ModuleList(
            SSL(
                CORES[param](d_model=d_model, d_state=d_state, **dict(core_options or {})),
                FEEDFORWARDS[ff](d_model),
                ff in CERTIFIED_FEEDFORWARDS,
                mix_logit,
                checkpoint,
            )
            for _ in range(n_layers)
        )
        self.decoder = nn.Linear(d_model, d_output, bias=False)
        self._states: list[Tensor] | None = None

    def raw_gain_bound(self) -> Tensor:
        """||E|| prod_k block bound ||W||: the bound before the prescribed-gamma scaling."""
        return _product([*self._linear_norms(), *(block.gain_bound() for block in self.blocks)])

    @cached_without_grad
    def _linear_norms(self) -> list[Tensor]:
        return [spectral_norm_bound(self.encoder.weight), spectral_norm_bound(self.decoder.weight)]

    def _output_scale(self, raw_bound: Tensor) -> Tensor:
        return torch.ones_like(raw_bound) if self.gamma is None else prescribed_output_scale(raw_bound, self.gamma)

    def certified_gain_bound(self) -> Tensor:
        """Upper bound of the zero-state l2 gain of u -> y; <= gamma when gamma is prescribed."""
        raw = self.raw_gain_bound()
        return raw * self._output_scale(raw)

    def reset(self) -> None:
        """Forget the internal state kept for ``reset_state=False``."""
        self._states = None

    def _initial_states(self, state: Sequence[Tensor | None] | None, reset_state: bool) -> list[Tensor | None]:
        if state is None:
            return [None] * len(self.blocks) if reset_state or self._states is None else list(self._states)
        if not isinstance(state, (list, tuple)) or len(state) != len(self.blocks):
            got = f"a list of {len(state)}" if isinstance(state, (list, tuple)) else type(state).__name__
            raise ValueError(f"state must be a list of {len(self.blocks)} tensors, one per block; got {got}")
        return list(state)

    def forward(
        self,
        u: Tensor,
        state: Sequence[Tensor | None] | None = None,
        mode: str = "scan",
        reset_state: bool = True,
        detach_state: bool = True,
        lengths: Tensor | None = None,
    ) -> tuple[Tensor, list[Tensor]]:
        """u: (B, L, d_input). state: one tensor per block (None: zero, or the internal state when
        reset_state=False). The final states are kept for the next call, detached unless
        detach_state=False (then gradients flow across calls: truncated BPTT is up to the caller)."""
        if u.dim() != 3 or u.shape[-1] != self.d_input:
            last = u.shape[-1] if u.dim() else None
            raise ValueError(
                f"DeepSSM input must be (B, L, d_input={self.d_input}); got shape {tuple(u.shape)} (last dim {last})"
            )
        states = self._initial_states(state, reset_state)
        prescribed = self.gamma is not None
        x = self.encoder(u)
        block_bounds = []
        for index, block in enumerate(self.blocks):
            x, states[index], bound = block(x, states[index], mode, lengths, with_bound=prescribed)
            block_bounds.append(bound)
        y = self.decoder(x)
        if prescribed:
            y = y * self._output_scale(_product([*self._linear_norms(), *block_bounds]))
        self._states = [s.detach() if detach_state else s for s in states]
        return y, states


def _product(factors: list[Tensor]) -> Tensor:
    """The product of scalar bounds by multiplications: ``Tensor.prod``'s backward looks for zero factors on the
    host (a GPU synchronisation in every training step)."""
    return functools.reduce(operator.mul, factors)


class TaskDeepSSM(nn.Module):
    """The training contract around a DeepSSM: inputs (B, L) token ids (embedded first) or
    (B, L, d_input) values -> (B, L, d_output) per-step or (B, d_output) mean-pooled outputs.
    The certified map is ``network``'s u -> y (the embedding and pooling are outside it)."""

    def __init__(self, spec: TaskSpec, d_model: int = 64, mode: str = "scan", **deep_ssm_options: Any) -> None:
        super().__init__()
        check_positive(d_model=d_model)  # before the embedding, whose own error would name no key
        self.spec, self.mode = spec, mode
        self.embedding = nn.Embedding(spec.vocab_size, d_model) if spec.input_kind == "tokens" else None
        d_input = d_model if self.embedding is not None else spec.d_input
        self.network = DeepSSM(d_input=d_input, d_output=spec.d_output, d_model=d_model, **deep_ssm_options)
        modes = self.network.blocks[0].core.modes
        if mode not in modes:
            raise ValueError(f"param {self.network.param!r} has no mode {mode!r}; choose one of {', '.join(modes)}")

    def forward(self, inputs: Tensor, lengths: Tensor | None = None) -> Tensor:
        u = self.embedding(inputs) if self.embedding is not None else inputs
        y, _ = self.network(u, mode=self.mode, lengths=lengths)
        return y if self.spec.per_step else pool_sequence(y, lengths)

    def certified_gain_bound(self) -> Tensor:
        return self.network.certified_gain_bound()
