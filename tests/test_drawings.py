"""experiments.drawings: a figure's drawings and their files told apart by name, the runs each names, and the
drawings whose runs are gone removed while the others stay."""

from __future__ import annotations

import shutil
from pathlib import Path

from experiments.drawings import (
    drawing_files,
    drawing_names,
    record_drawn_runs,
    remove_outdated_drawings,
    vanished_runs,
)
from ssm_lab.results import read_summary, write_summary


def test_a_figures_drawings_and_their_files_are_told_apart_by_name(tmp_path):
    names = ["listops_figure.png", "listops.runs.txt", "listops--set-weight_decay=0.0-1a2b3c_figure.pdf",
             "listops--set-lr=0.001-abcdef.missing.txt", "listops--models-lru_table.md", "listops_long_figure.png",
             "a5_min_depth_table.csv", "listops_notes.txt"]  # fmt: skip
    for name in names:
        (tmp_path / name).write_text("drawn")
    assert drawing_names(tmp_path, "listops") == [
        "listops", "listops--models-lru", "listops--set-lr=0.001-abcdef", "listops--set-weight_decay=0.0-1a2b3c",
    ]  # fmt: skip
    assert [p.name for p in drawing_files(tmp_path, "listops")] == ["listops.runs.txt", "listops_figure.png"]
    assert drawing_names(tmp_path, "a5") == [] and drawing_names(tmp_path / "absent", "listops") == []


def test_drawings_whose_runs_are_gone_are_removed_and_the_others_kept(tmp_path):
    """A drawing names its runs relative to its folder (a results folder moved whole keeps them); once one of
    them is no longer recorded, its drawing is outdated and goes, whichever drawing of the figure is made."""
    results = tmp_path / "results"
    runs = [results / "runs" / "listops" / name for name in ("lru-s0", "s4-s0")]
    for path in runs:
        path.mkdir(parents=True)
        write_summary(path, {"status": "completed"})
    figures = results / "figures" / "smoke"
    figures.mkdir(parents=True)
    drawn_from = {"listops": runs, "listops--models-lru": runs[:1], "listops--models-s4": runs[1:]}
    for name, run_dirs in drawn_from.items():
        (figures / f"{name}_figure.png").write_text("drawn")
        assert record_drawn_runs(figures, name, [str(path) for path in run_dirs]) == [figures / f"{name}.runs.txt"]
    (figures / "listops--models-l2n_figure.png").write_text("drawn before drawings named their runs")
    assert (figures / "listops--models-lru.runs.txt").read_text() == "../../runs/listops/lru-s0\n"
    assert record_drawn_runs(figures, "listops--models-tv", []) == []

    def recorded(path: Path) -> bool:
        return (read_summary(path) or {}).get("status") == "completed"

    moved = tmp_path / "moved"
    results.rename(moved)
    figures = moved / "figures" / "smoke"
    assert all(vanished_runs(figures, name, recorded) == [] for name in drawn_from)
    assert remove_outdated_drawings(figures, "listops", recorded, keep="listops--models-s4") == []

    shutil.rmtree(moved / "runs" / "listops" / "lru-s0")
    assert vanished_runs(figures, "listops", recorded) == [figures / "../../runs/listops/lru-s0"]
    removed = remove_outdated_drawings(figures, "listops", recorded, keep="listops")  # the one just drawn stays
    why = "drawn from ../../runs/listops/lru-s0, no longer recorded"
    assert removed == [(figures / f"listops--models-lru{end}", why) for end in (".runs.txt", "_figure.png")]
    assert {p.name for p in figures.iterdir()} == {
        "listops_figure.png", "listops.runs.txt", "listops--models-s4_figure.png", "listops--models-s4.runs.txt",
        "listops--models-l2n_figure.png",
    }  # fmt: skip
