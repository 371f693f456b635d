"""Backbone: encoder (from the TaskSpec) -> n_layers residual blocks around a recurrent core ->
decoder. The block follows the protocol of the Linear-CDE paper (Cirone et al. 2024):

    post-norm:  x <- LayerNorm(x + Dropout(Mix(Dropout(Core(x)))))
    pre-norm:   x <- x + Dropout(Mix(Dropout(Core(LayerNorm(x)))))

Mix is GLU, MLP or nothing; ``nonlinear=False`` replaces it with a Linear(H, H) so a stack of
blocks is a composition of linear recurrences (the ablation of their Figure 1).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn

from ssm_lab.data.spec import TaskSpec
from ssm_lab.layers.glu import GLU
from ssm_lab.layers.mlp import MLP

NORMS = ("pre", "post", "none")
MIXINGS = ("glu", "mlp", "none")
ENCODERS = ("auto", "embedding", "linear")
POOLS = ("mean", "last")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {key} {value!r}; choose one of {', '.join(allowed)}")


class Block(nn.Module):
    """One residual block; x: (B, L, H) -> (B, L, H), plus the core's final state."""

    def __init__(self, core: nn.Module, d_model: int, norm: str, mixing: str, nonlinear: bool, dropout: float) -> None:
        super().__init__()
        self.core, self.norm_position = core, norm
        self.norm = nn.LayerNorm(d_model) if norm != "none" else nn.Identity()
        if mixing == "none":
            self.mix = nn.Identity()
        elif not nonlinear:
            self.mix = nn.Linear(d_model, d_model)
        else:
            self.mix = GLU(d_model) if mixing == "glu" else MLP(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor, state=None, mode: str = "scan", lengths: Tensor | None = None):
        z = self.norm(x) if self.norm_position == "pre" else x
        z, state = self.core(z, state=state, mode=mode, lengths=lengths)
        x = x + self.dropout(self.mix(self.dropout(z)))
        return (self.norm(x) if self.norm_position == "post" else x), state


class Backbone(nn.Module):
    """inputs: (B, L) token ids or (B, L, d_input) values -> (B, L, d_output) for per-step
    outputs, (B, d_output) for per-sequence ones (pooled over the valid positions).

    ``core`` builds one core from ``d_model`` (a partial from the model config)."""

    def __init__(
        self,
        spec: TaskSpec,
        core: Callable[..., nn.Module],
        d_model: int = 64,
        n_layers: int = 2,
        norm: str = "pre",
        mixing: str = "glu",
        nonlinear: bool = True,
        dropout: float = 0.0,
        encoder: str = "auto",
        pool: str = "mean",
        mode: str = "scan",
    ) -> None:
        super().__init__()
        for key, value in (("d_model", d_model), ("n_layers", n_layers)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"{key} must be a positive integer, got {value!r}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        for key, value, allowed in (("norm", norm, NORMS), ("mixing", mixing, MIXINGS), ("encoder", encoder, ENCODERS), ("pool", pool, POOLS)):
            _choice(key, value, allowed)
        self.spec, self.mode, self.pool = spec, mode, pool
        self.encoder = self._make_encoder(spec, encoder, d_model)
        self.blocks = nn.ModuleList(
            Block(core(d_model=d_model), d_model, norm, mixing, nonlinear, dropout) for _ in range(n_layers)
        )
        self.final_norm = nn.LayerNorm(d_model) if norm == "pre" else nn.Identity()
        self.decoder = nn.Linear(d_model, spec.d_output)

    @staticmethod
    def _make_encoder(spec: TaskSpec, encoder: str, d_model: int) -> nn.Module:
        if encoder == "auto":
            encoder = "embedding" if spec.input_kind == "tokens" else "linear"
        if encoder == "embedding":
            if spec.input_kind != "tokens":
                raise ValueError(
                    f"encoder 'embedding' takes token inputs, but dataset {spec.name!r} gives continuous inputs "
                    f"(d_input={spec.d_input}); use encoder=linear or auto"
                )
            return nn.Embedding(spec.vocab_size, d_model)
        if spec.input_kind != "continuous":
            raise ValueError(
                f"encoder 'linear' takes continuous inputs, but dataset {spec.name!r} gives tokens "
                f"(vocab_size={spec.vocab_size}); use encoder=embedding or auto"
            )
        return nn.Linear(spec.d_input, d_model)

    def forward(self, inputs: Tensor, lengths: Tensor | None = None) -> Tensor:
        x = self.encoder(inputs)
        for block in self.blocks:
            x, _ = block(x, mode=self.mode, lengths=lengths)
        x = self.final_norm(x)
        if not self.spec.per_step:
            x = self._pool(x, lengths)
        return self.decoder(x)

    def _pool(self, x: Tensor, lengths: Tensor | None) -> Tensor:
        """(B, L, H) -> (B, H): mean over valid positions, or the last valid one."""
        if lengths is None:
            return x.mean(dim=1) if self.pool == "mean" else x[:, -1]
        if self.pool == "last":
            return x[torch.arange(x.shape[0], device=x.device), lengths - 1]
        mask = (torch.arange(x.shape[1], device=x.device) < lengths.unsqueeze(1)).unsqueeze(-1)
        return (x * mask).sum(dim=1) / lengths.unsqueeze(1).to(x.dtype)
