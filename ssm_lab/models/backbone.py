"""Backbone: encoder (from the TaskSpec) -> n_layers residual blocks around a recurrent core ->
decoder. The block follows the protocol of the Linear-CDE paper (Cirone et al. 2024):

    post-norm:  x <- LayerNorm(x + Dropout(Mix(Dropout(Core(x)))))
    pre-norm:   x <- x + Dropout(Mix(Dropout(Core(LayerNorm(x)))))

Mix is GLU, MLP or nothing (then one Dropout); ``nonlinear=False`` replaces it with a Linear(H, H) so
that, with ``norm="none"`` (required: a LayerNorm is a nonlinearity too), a stack of blocks of linear
cores is an affine map (linear up to the biases) of its input: the ablation of their Figure 1;
``residual=False``
drops the skip connection (their A5LinearCDE: embedding -> Linear CDE -> norm -> readout).

``readout="least_squares"`` freezes everything but the decoder, which the task fits in closed form
(normal equations over the training data) instead of by gradient descent: the random-feature
baseline of their Figure 1. ``integration_timesteps`` (B, L) reach every core, and only
time-varying cores (``time_varying = True``) accept them.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import Tensor, nn

from ssm_lab.cores.base import check_mode
from ssm_lab.data.spec import TaskSpec
from ssm_lab.layers.glu import GLU
from ssm_lab.layers.mlp import MLP
from ssm_lab.models.pooling import POOLS, pool_sequence
from ssm_lab.validation import check_positive

NORMS = ("pre", "post", "none")
MIXINGS = ("glu", "mlp", "none")
ENCODERS = ("auto", "embedding", "linear")
READOUTS = ("trained", "least_squares")


def _choice(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {key} {value!r}; choose one of {', '.join(allowed)}")


class Block(nn.Module):
    """One residual block; x: (B, L, H) -> (B, L, H), plus the core's final state."""

    def __init__(
        self,
        core: nn.Module,
        d_model: int,
        norm: str,
        mixing: str,
        nonlinear: bool,
        dropout: float,
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.core, self.norm_position, self.residual = core, norm, residual
        self.norm = nn.LayerNorm(d_model) if norm != "none" else nn.Identity()
        if mixing == "none":
            self.mix = None
        elif not nonlinear:
            self.mix = nn.Linear(d_model, d_model)
        else:
            self.mix = GLU(d_model) if mixing == "glu" else MLP(d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        x: Tensor,
        state=None,
        mode: str = "scan",
        lengths: Tensor | None = None,
        integration_timesteps: Tensor | None = None,
    ):
        time = {}
        if integration_timesteps is not None:
            if not getattr(self.core, "time_varying", False):
                raise ValueError(
                    f"core {type(self.core).__name__} is time-invariant and takes no integration_timesteps; "
                    "use a time-varying core (s5, mamba, rglru, ids4, lcde)"
                )
            time["integration_timesteps"] = integration_timesteps
        z = self.norm(x) if self.norm_position == "pre" else x
        z, state = self.core(z, state=state, mode=mode, lengths=lengths, **time)
        z = self.dropout(z)
        if self.mix is not None:
            z = self.dropout(self.mix(z))
        x = x + z if self.residual else z
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
        residual: bool = True,
        readout: str = "trained",
        ridge: float = 1e-6,
    ) -> None:
        super().__init__()
        check_positive(d_model=d_model, n_layers=n_layers)
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        choices = (("norm", norm, NORMS), ("mixing", mixing, MIXINGS), ("encoder", encoder, ENCODERS))
        for key, value, allowed in (*choices, ("pool", pool, POOLS), ("readout", readout, READOUTS)):
            _choice(key, value, allowed)
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        if not nonlinear and norm != "none":
            raise ValueError(
                f"nonlinear=False takes the nonlinearity out of the blocks, but norm={norm!r} keeps a LayerNorm (a "
                "nonlinearity) in each: set norm=none"
            )
        self.spec, self.mode, self.pool = spec, mode, pool
        self.encoder = self._make_encoder(spec, encoder, d_model)
        self.blocks = nn.ModuleList(
            Block(core(d_model=d_model), d_model, norm, mixing, nonlinear, dropout, residual) for _ in range(n_layers)
        )
        check_mode(mode, self.blocks[0].core.modes, type(self.blocks[0].core).__name__)  # at build, not first call
        self.final_norm = nn.LayerNorm(d_model) if norm == "pre" else nn.Identity()
        self.decoder = nn.Linear(d_model, spec.d_output)
        self.readout, self.ridge = readout, ridge
        if readout == "least_squares":  # random features: nothing is trained by gradient
            self.requires_grad_(False)

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

    def features(
        self, inputs: Tensor, lengths: Tensor | None = None, integration_timesteps: Tensor | None = None
    ) -> Tensor:
        """What the decoder reads: (B, L, d_model) for per-step tasks, (B, d_model) pooled otherwise."""
        x = self.encoder(inputs)
        for block in self.blocks:
            x, _ = block(x, mode=self.mode, lengths=lengths, integration_timesteps=integration_timesteps)
        x = self.final_norm(x)
        return x if self.spec.per_step else pool_sequence(x, lengths, self.pool)

    def forward(
        self, inputs: Tensor, lengths: Tensor | None = None, integration_timesteps: Tensor | None = None
    ) -> Tensor:
        return self.decoder(self.features(inputs, lengths, integration_timesteps))
