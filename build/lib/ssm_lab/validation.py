"""Argument checks shared by cores, models and data modules, with errors that name the key."""

from __future__ import annotations


def check_positive(**values: int) -> None:
    """Raise naming the key when a size is not a positive integer."""
    for key, value in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
            raise ValueError(f"{key} must be a positive integer, got {value!r}")
