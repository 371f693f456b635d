"""The files of a figure's drawings in a figures folder (``<results_dir>/figures/<scale>/``): which files belong
to which drawing (the default one, ``<figure>``, and its variants, ``<figure>--<tag>``), the runs each was drawn
from (``<name>.runs.txt``), and which drawings outlived their runs."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

#: A drawing's figure and table keys are one word, so that ``<name>_<key>.<suffix>`` never matches the files
#: of another figure or variant (``a5_min_depth_figure.png`` is no key "min_depth_figure" of a figure "a5").
DRAWING_KEY = "[A-Za-z0-9]+"
#: What follows a drawing's name in its files: a figure (PDF, PNG) or table (CSV, Markdown) per key, the runs
#: it lacks and the runs it was drawn from.
_DRAWING_FILE = rf"(?:_{DRAWING_KEY}\.(?:pdf|png|csv|md)|\.missing\.txt|\.runs\.txt)"


def drawing_files(directory: Path, name: str) -> list[Path]:
    """The files of the drawing ``name`` in ``directory``: ``<name>_<key>.{pdf,png,csv,md}``,
    ``<name>.missing.txt`` and ``<name>.runs.txt``; never another drawing's (keys are one word)."""
    pattern = re.compile(re.escape(name) + _DRAWING_FILE)
    return sorted(path for path in directory.iterdir() if pattern.fullmatch(path.name)) if directory.is_dir() else []


def drawing_names(directory: Path, figure: str) -> list[str]:
    """The drawings of ``figure`` that have files in ``directory``: its default one (``figure``) and its
    variants (``figure--<tag>``)."""
    pattern = re.compile(f"({re.escape(figure)}(?:--.+)?){_DRAWING_FILE}")
    matches = (pattern.fullmatch(path.name) for path in directory.iterdir()) if directory.is_dir() else ()
    return sorted({match.group(1) for match in matches if match})


def record_drawn_runs(directory: Path, name: str, run_dirs: Iterable[str | Path]) -> list[Path]:
    """Write ``<name>.runs.txt``, the run folders the drawing ``name`` was drawn from, one a line, relative to
    ``directory`` (a results folder moved or copied whole keeps them), unless it drew none. Returns the file
    written, if any: an earlier one it does not replace is among the drawing's files no longer written."""
    lines = sorted(os.path.relpath(Path(run_dir).resolve(), directory.resolve()) for run_dir in run_dirs)
    if not lines:
        return []
    path = directory / f"{name}.runs.txt"
    path.write_text("".join(f"{line}\n" for line in lines))
    return [path]


def vanished_runs(directory: Path, name: str, recorded: Callable[[Path], bool]) -> list[Path]:
    """The runs the drawing ``name`` was drawn from (its ``.runs.txt``) for which ``recorded`` is false now:
    a drawing with any shows results that are no longer in the run records. [] when it names no runs (it
    drew none, or was drawn before drawings named their runs: nothing to judge it by)."""
    path = directory / f"{name}.runs.txt"
    if not path.exists():
        return []
    runs = [directory / line for line in path.read_text().splitlines() if line]
    return [run for run in runs if not recorded(run)]


def remove_outdated_drawings(
    directory: Path, figure: str, recorded: Callable[[Path], bool], keep: str
) -> list[tuple[Path, str]]:
    """Remove the files of every drawing of ``figure`` in ``directory`` but ``keep`` (the one just drawn) that
    was drawn from a run no longer recorded (see vanished_runs): its figures and tables would look current.
    Drawings whose runs are all still recorded stay, whoever asked for them. Returns (file, why) per file."""
    removed = []
    for name in drawing_names(directory, figure):
        vanished = vanished_runs(directory, name, recorded) if name != keep else []
        if vanished:
            more = f" and {len(vanished) - 1} more" if len(vanished) > 1 else ""
            why = f"drawn from {os.path.relpath(vanished[0], directory)}{more}, no longer recorded"
            for path in drawing_files(directory, name):
                path.unlink()
                removed.append((path, why))
    return removed
