"""Dataset text files read line by line, so that a bad byte is reported with its file and line."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path


def utf8_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 file, line endings kept (``csv`` wants them). A byte sequence that is not
    UTF-8 raises ValueError naming the file, the line and the column, where a text-mode read would
    raise a bare UnicodeDecodeError at some buffer offset."""
    with open(path, "rb") as f:
        for line_number, raw in enumerate(f, start=1):
            try:
                yield raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise ValueError(
                    f"{path}:{line_number}: not UTF-8 text (byte {raw[error.start]:#04x} at column "
                    f"{error.start + 1}); save the file as UTF-8"
                ) from None
