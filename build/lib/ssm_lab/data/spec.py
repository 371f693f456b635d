"""TaskSpec: what a data module asks a model to map, so models and data never configure each other.

The backbone builds its encoder/decoder from it; the task picks its loss and metrics from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

INPUT_KINDS = ("tokens", "continuous")
OUTPUT_KINDS = ("sequence_class", "token_class", "step_regression", "sequence_regression")


@dataclass(frozen=True)
class TaskSpec:
    """name: dataset name; input_kind: "tokens" (needs vocab_size) or "continuous" (needs d_input);
    output_kind: one of OUTPUT_KINDS; d_output: classes or regression dims;
    eval_warmup: leading steps left out of evaluation (system identification);
    units: units of the regression targets, for reporting; vocab: token strings (index = id);
    target_scale, target_offset: per output, when the data module normalised its targets as
    (y - offset) / scale; metrics map predictions and targets back with y = scale * z + offset,
    so errors are reported in ``units`` (both empty: the targets are in their units already)."""

    name: str
    input_kind: str
    output_kind: str
    d_output: int
    vocab_size: int | None = None
    d_input: int | None = None
    eval_warmup: int = 0
    units: str | None = None
    vocab: tuple[str, ...] = field(default=(), repr=False)
    target_scale: tuple[float, ...] = ()
    target_offset: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if self.input_kind not in INPUT_KINDS:
            raise ValueError(f"unknown input_kind {self.input_kind!r}; choose one of {', '.join(INPUT_KINDS)}")
        if self.output_kind not in OUTPUT_KINDS:
            raise ValueError(f"unknown output_kind {self.output_kind!r}; choose one of {', '.join(OUTPUT_KINDS)}")
        if self.d_output <= 0:
            raise ValueError(f"d_output must be positive, got {self.d_output}")
        if self.input_kind == "tokens" and not (self.vocab_size and self.vocab_size > 0):
            raise ValueError(f"token inputs need a positive vocab_size, got {self.vocab_size}")
        if self.input_kind == "continuous" and not (self.d_input and self.d_input > 0):
            raise ValueError(f"continuous inputs need a positive d_input, got {self.d_input}")
        if self.vocab and len(self.vocab) != self.vocab_size:
            raise ValueError(f"vocab has {len(self.vocab)} tokens but vocab_size is {self.vocab_size}")
        if self.eval_warmup < 0:
            raise ValueError(f"eval_warmup must be >= 0, got {self.eval_warmup}")
        if (self.target_scale or self.target_offset) and not (
            len(self.target_scale) == len(self.target_offset) == self.d_output
        ):
            raise ValueError(
                f"target_scale and target_offset need one value per output ({self.d_output}), "
                f"got {len(self.target_scale)} and {len(self.target_offset)}"
            )
        if any(not scale > 0 for scale in self.target_scale):
            raise ValueError(f"target_scale must be positive, got {self.target_scale}")

    @property
    def is_classification(self) -> bool:
        return self.output_kind.endswith("class")

    @property
    def per_step(self) -> bool:
        """True when targets are one per position (token_class, step_regression)."""
        return self.output_kind in ("token_class", "step_regression")
