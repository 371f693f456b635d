"""The machinery every figure shares: which runs a figure needs at a scale (Hydra overrides), which
of them are already recorded, launching only the missing ones through Hydra multirun, and saving
what a figure draws (PDF + PNG per figure, CSV + Markdown per table) into ``<results_dir>/figures/<scale>/`` (a
smoke drawing never replaces a paper one):
``<figure>_<key>.*``, or ``<figure>--<tag>_<key>.*`` for a variant (``--set`` overrides, some of its models).

A figure module (``experiments/<name>.py``) defines:
    EXPERIMENT                         the preset in configs/experiment/ (and the runs' folder name)
    needed_runs(scale, done) -> [Run]  the runs it needs given the finished ones (``done``: a gather
                                       table); called again after each launch, so a sweep may grow
                                       with the results (deeper models only where shallow ones fail)
    draw(runs, curves, scale) -> Drawing   from the finished runs (gather) and their learning curves
    plot(...) -> Drawing               the pure drawing from DataFrames, which draw() calls
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from pathlib import Path
from types import ModuleType

import matplotlib

matplotlib.use("Agg")  # files only: no display on clusters or in CI
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402

from experiments.drawings import DRAWING_KEY, drawing_files, record_drawn_runs, remove_outdated_drawings  # noqa: E402
from ssm_lab.config import CONFIG_DIR, compose_config  # noqa: E402
from ssm_lab.plotting import save_figure  # noqa: E402
from ssm_lab.results import gather, read_summary, run_dir  # noqa: E402

REPOSITORY = Path(__file__).resolve().parents[1]
SCALES = ("smoke", "small", "paper")
#: Statuses whose record is a result: a run that diverged (failed) did not learn the task.
FINISHED = ("completed", "failed")
#: Short launcher names accepted besides the files of configs/hydra/launcher/.
LAUNCHER_ALIASES = {"slurm": "submitit_slurm", "local": "submitit_local"}


@dataclass(frozen=True)
class Run:
    """One run a figure needs: the Hydra overrides on top of its preset and scale."""

    overrides: tuple[str, ...]

    @property
    def settings(self) -> dict[str, str]:
        return dict(override.split("=", 1) for override in self.overrides)

    @property
    def model(self) -> str | None:
        return self.settings.get("model")

    def __str__(self) -> str:
        return " ".join(self.overrides)


def run(**settings: object) -> Run:
    """Run(model="lru", **{"model.n_layers": 2}) with values written as Hydra reads them."""
    return Run(tuple(f"{key}={hydra_value(value)}" for key, value in settings.items()))


def hydra_value(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


@dataclass
class Drawing:
    """What a figure module draws: named figures and tables (keys: one word each). ``missing``: the runs it
    lacks, named; ``notes``: what sets it apart from the figure's default drawing (see variant)."""

    figures: dict[str, plt.Figure] = field(default_factory=dict)
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def check_choice(key: str, value: str, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"unknown {key} {value!r}; choose one of {', '.join(allowed)}")


@cache
def available_models() -> frozenset[str]:
    return frozenset(path.stem for path in (CONFIG_DIR / "model").glob("*.yaml"))


def is_launch_setting(override: str) -> bool:
    """``hydra.*`` and ``hydra/...`` overrides (``hydra.launcher.n_jobs=12``) say how runs are launched,
    never what they compute: passed to the multirun, left out of the composed run config."""
    return override.lstrip("+~").startswith(("hydra.", "hydra/"))


def launcher_override(launcher: str) -> list[str]:
    """The Hydra override choosing a launcher (basic: Hydra's default, in this process's order)."""
    choice = LAUNCHER_ALIASES.get(launcher, launcher)
    check_choice("launcher", launcher, ("basic", *LAUNCHER_ALIASES, *launchers()))
    return [] if choice == "basic" else [f"hydra/launcher={choice}"]


def launchers() -> list[str]:
    return sorted(path.stem for path in (CONFIG_DIR / "hydra" / "launcher").glob("*.yaml"))


@cache
def launcher_options(launcher: str) -> tuple[str, ...]:
    """The options of a launcher (``hydra.launcher.<option>``): the keys of its config, as its plugin receives it."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"), warnings.catch_warnings():
        # the launcher configs set their plugins' values under the plugins' own names, on purpose (ssm_lab.train)
        warnings.filterwarnings("ignore", message="(?s).*is validated against ConfigStore schema")
        cfg = compose("config", overrides=launcher_override(launcher), return_hydra_config=True)
    return tuple(key for key in cfg.hydra.launcher if key != "_target_")


def check_launcher_option(override: str, launcher: str) -> None:
    """``--set hydra.launcher.<option>=...`` for an option ``launcher`` has; else an error naming its options and the
    launchers that have this one."""
    option = override.lstrip("+~").partition("=")[0].split(".")[2]
    options = launcher_options(launcher)
    if option in options:
        return
    choice = LAUNCHER_ALIASES.get(launcher, launcher)
    having = [name for name in launchers() if option in launcher_options(name)]
    elsewhere = f"{option} is an option of --launcher {' or '.join(having)}" if having else "no launcher has it"
    if not options:
        raise ValueError(f"--set {override}: the basic launcher (one run after another) has no options; {elsewhere}")
    raise ValueError(
        f"--set {override}: the {choice} launcher has no option {option!r} (its options: {', '.join(options)}); "
        f"{elsewhere}"
    )


def cartesian_blocks(runs: Sequence[Run]) -> list[dict[str, list[str]]]:
    """Exact cover of ``runs`` by Cartesian products (what one Hydra multirun launches): blocks that
    agree on every key but one are merged along it, one key at a time. Runs with the same keys and a
    full grid of values become one block; a grid with holes becomes a few."""
    blocks = [{key: [value] for key, value in r.settings.items()} for r in dict.fromkeys(runs)]
    keys = list(dict.fromkeys(key for r in runs for key in r.settings))
    for key in keys:
        merged: dict[tuple, dict[str, list[str]]] = {}
        for block in blocks:
            rest = tuple((k, tuple(v)) for k, v in block.items() if k != key)
            signature = (key in block, rest)
            if signature in merged and key in block:
                merged[signature][key] += [v for v in block[key] if v not in merged[signature][key]]
            elif signature in merged:
                continue  # the same block twice
            else:
                merged[signature] = {k: list(v) for k, v in block.items()}
        blocks = list(merged.values())
    return blocks


def block_overrides(block: dict[str, list[str]]) -> list[str]:
    return [f"{key}={','.join(values)}" for key, values in block.items()]


#: Overrides a figure session sets itself, and the option that sets each.
SESSION_KEYS = {"results_dir": "--results-dir", "data_dir": "--data-dir", "scale": "--scale", "experiment": "--figure"}


@dataclass
class Session:
    """Where and how the figures' runs are recorded and launched.

    extra: overrides added to every run (e.g. ``trainer=gpu``): part of the runs' identity, so the
    same extra overrides find the same runs again; ``hydra.*`` ones (``hydra.launcher.n_jobs=12``)
    only go to the multirun. models: when given, only runs of these models."""

    scale: str
    results_dir: Path
    data_dir: Path
    launcher: str = "basic"
    extra: tuple[str, ...] = ()
    models: tuple[str, ...] | None = None
    launch: bool = True
    log: Callable[[str], None] = print

    def __post_init__(self) -> None:
        check_choice("scale", self.scale, SCALES)
        for model in self.models or ():  # a misspelt model would draw a variant without it
            check_choice("model", model, sorted(path.stem for path in (CONFIG_DIR / "model").glob("*.yaml")))
        launcher_override(self.launcher)  # a bad launcher fails before anything is trained
        for override in self.extra:
            key = override.lstrip("+~").partition("=")[0]
            if key.startswith("hydra.launcher."):  # an option the launcher lacks fails every run in Hydra, one by one
                check_launcher_option(override, self.launcher)
            if key in SESSION_KEYS:  # the runs would land where the figure never looks, or not be the figure's
                raise ValueError(f"--set {override}: {key} is the session's own, set it with {SESSION_KEYS[key]}")

    def base_overrides(self, experiment: str) -> list[str]:
        """What every run of the figure computes with: preset, scale, folders and the extra overrides."""
        return [
            f"experiment={experiment}", f"scale={self.scale}", f"results_dir={self.results_dir}",
            f"data_dir={self.data_dir}", *(o for o in self.extra if not is_launch_setting(o)),
        ]  # fmt: skip

    def launch_overrides(self) -> list[str]:
        """The launcher and the extra ``hydra.*`` overrides (after the launcher, whose keys they set)."""
        return [*launcher_override(self.launcher), *(o for o in self.extra if is_launch_setting(o))]

    def run_path(self, experiment: str, needed: Run) -> Path:
        return _run_path((*self.base_overrides(experiment), *needed.overrides))

    def launch_runs(self, experiment: str, runs: Sequence[Run], tag: str) -> None:
        """One Hydra multirun per Cartesian block of ``runs`` through run_experiment.py."""
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S-%f")
        for index, block in enumerate(cartesian_blocks(runs)):
            command = [
                sys.executable, str(REPOSITORY / "run_experiment.py"), "-m", *self.base_overrides(experiment),
                *block_overrides(block), *self.launch_overrides(),
                f"hydra.sweep.dir={self.results_dir}/hydra/figures/{tag}/{stamp}-{index}",
            ]  # fmt: skip
            self.log(f"[figures] launching: {' '.join(command[1:])}")
            done = subprocess.run(command, cwd=REPOSITORY)
            if done.returncode != 0:
                self.log(f"[figures] the sweep exited with status {done.returncode}; its runs stay missing")


@cache
def _run_path(overrides: tuple[str, ...]) -> Path:
    return run_dir(compose_config(overrides))


def finished(path: Path) -> bool:
    summary = read_summary(path)
    return bool(summary) and summary.get("status") in FINISHED


@dataclass
class Collected:
    runs: pd.DataFrame  # one row per finished run the figure needs (gather's columns)
    missing: list[Run]  # runs of available models with no finished record
    unavailable: list[Run]  # runs of models with no configs/model/<name>.yaml


def collect(figure: ModuleType, session: Session) -> Collected:
    """The figure's finished runs, launching the missing ones (when ``session.launch``) until the
    figure needs no more runs or a launch finishes none of them. ``needed_runs`` sees the finished
    runs each time, so a sweep that grows with its results (a5_min_depth) grows here."""
    done = pd.DataFrame(columns=["run_dir"])
    attempted: set[Run] = set()
    while True:
        needed = figure.needed_runs(session.scale, done)
        if session.models is not None:
            needed = [r for r in needed if r.model in session.models]
        unavailable = [r for r in needed if r.model is not None and r.model not in available_models()]
        needed = [r for r in needed if r not in unavailable]
        paths = {r: session.run_path(figure.EXPERIMENT, r) for r in needed}
        missing = [r for r in needed if not finished(paths[r])]
        table = gather(session.results_dir)
        finished_dirs = {str(path) for r, path in paths.items() if r not in missing}
        now_done = table[table["run_dir"].isin(finished_dirs)].reset_index(drop=True)
        if len(now_done) > len(done):  # new results: ask the figure again what it needs
            done = now_done
            continue
        retry = [r for r in missing if r not in attempted]
        if not session.launch or not retry:
            return Collected(now_done, missing, unavailable)
        attempted.update(retry)
        session.launch_runs(figure.EXPERIMENT, retry, figure.__name__.rsplit(".", 1)[-1])


def save_drawing(
    drawing: Drawing, name: str, directory: Path, run_dirs: Iterable[str] = ()
) -> tuple[list[Path], list[Path]]:
    """<name>_<figure>.{pdf,png}, <name>_<table>.{csv,md}, when runs are missing <name>.missing.txt, and when it
    was drawn from runs (``run_dirs``) <name>.runs.txt naming them; each figure and table headed by INCOMPLETE
    when runs are missing (the CSV has it in an ``incomplete`` column instead, to stay one table) and then by
    the drawing's notes. The files of an earlier drawing of ``name`` that this one does not write (all of them
    when no run has finished) are removed, so that none is left looking like this drawing's result. Returns
    the files written and those removed."""
    for key in (*drawing.figures, *drawing.tables):
        if not re.fullmatch(DRAWING_KEY, key):
            raise ValueError(f"drawing key {key!r} must be one word of letters and digits, e.g. 'figure'")
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    note = directory / f"{name}.missing.txt"
    count = len(drawing.missing)
    incomplete = f"INCOMPLETE: {count} run{'s' if count > 1 else ''} missing, listed in {note.name}" if count else ""
    if drawing.missing:
        note.write_text("\n".join(drawing.missing) + "\n")
        written.append(note)
    else:
        note.unlink(missing_ok=True)
    header = [*([incomplete] if incomplete else []), *drawing.notes]  # a partial result says so first
    for key, figure in drawing.figures.items():
        for line in reversed(header):  # stacked upwards: the header reads top down
            stamp_above(figure, line, "red" if line == incomplete else "black")
        written += save_figure(figure, directory / f"{name}_{key}")
    for key, table in drawing.tables.items():
        csv, markdown = directory / f"{name}_{key}.csv", directory / f"{name}_{key}.md"
        (table.assign(incomplete=incomplete) if incomplete else table).to_csv(csv, index=False)
        lines = [f"**{line}**" if line == incomplete else line for line in header]
        markdown.write_text("".join(f"{line}\n\n" for line in lines) + markdown_table(table) + "\n")
        written += [csv, markdown]
    written += record_drawn_runs(directory, name, run_dirs)
    stale = [path for path in drawing_files(directory, name) if path not in written]
    for path in stale:
        path.unlink()
    return written, stale


def stamp_above(figure: plt.Figure, text: str, color: str) -> None:
    """``text`` above everything already drawn on ``figure`` (titles, legends, tick labels), where it overlaps
    nothing: savefig's bbox_inches="tight" widens the page to hold it."""
    figure.draw_without_rendering()  # runs the figure's layout engine, which places the axes
    box = figure.get_tightbbox()  # inches
    figure.text(
        box.x0 / figure.get_figwidth(), box.y1 / figure.get_figheight() + 0.01, text,
        color=color, fontsize=8, ha="left", va="bottom",
    )  # fmt: skip


def markdown_table(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' to_markdown needs the optional tabulate package)."""

    def cell(value: object) -> str:
        if isinstance(value, float):
            return "" if pd.isna(value) else f"{value:.4g}"
        return str(value).replace("|", "\\|")

    header = [str(c) for c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def variant(figure: ModuleType, session: Session) -> tuple[str, list[str]]:
    """What sets this session's drawing of ``figure`` apart from its default one: a file-name tag ("" for
    the default) and the lines that say it on the drawing. ``--models`` keeping only some of the figure's
    models tags ``models-<models>``; ``--set`` overrides that change the runs (not ``hydra.*``) tag
    ``set-<key=value+...>-<hash>``: the overrides' last key parts, cut to 40 characters, and a hash of the
    whole overrides, so that no two variants share a name."""
    every_model = figure_models(figure, session.scale)
    models = every_model if session.models is None else sorted(set(every_model) & set(session.models))
    overrides = sorted(o for o in session.extra if not is_launch_setting(o))
    tags, notes = [], []
    if models != every_model:
        tags.append(f"models-{'-'.join(models) or 'none'}")
        notes.append(f"models {', '.join(models) or 'none'} only (of {', '.join(every_model)})")
    if overrides:
        # "optim.optimizer.weight_decay=0.0" -> "weight_decay=0.0"; any character a file name may trip on -> "_"
        short = "+".join(re.sub(r"[^\w.=-]", "_", re.sub(r"^[+~]*(?:[^=]*\.)?", "", o)) for o in overrides)
        digest = hashlib.sha1("\n".join(overrides).encode()).hexdigest()[:6]
        tags.append(f"set-{short[:40]}-{digest}")
        notes.append(f"--set {' '.join(overrides)}")
    return "".join(f"--{tag}" for tag in tags), notes


def figure_models(figure: ModuleType, scale: str) -> list[str]:
    """The models the figure draws at ``scale``."""
    return sorted({r.model for r in figure.needed_runs(scale, pd.DataFrame(columns=["run_dir"]))} - {None})


def make_figure(figure: ModuleType, session: Session) -> tuple[list[Path], list[Run]]:
    """Collect (launching what is missing) and draw one figure module; returns the files written
    and the runs still missing. Runs of unavailable models are reported, never silently dropped.
    A variant (identity --set overrides, a subset of the models) is saved as <figure>--<tag>_* (see variant).
    The figure's other drawings in the folder stay, unless they were drawn from a run no longer recorded."""
    name = figure.__name__.rsplit(".", 1)[-1]
    if session.models is not None:  # --models names models of any figure: say which this one has not
        drawn = figure_models(figure, session.scale)
        if absent := sorted(set(session.models) - set(drawn)):
            session.log(f"[figures] {name}: has no model {', '.join(absent)} (its models: {', '.join(drawn)})")
        if len(absent) == len(set(session.models)):
            return [], []
    collected = collect(figure, session)
    for model in sorted({r.model for r in collected.unavailable}):
        session.log(f"[figures] {name}: skipped model {model!r}: no configs/model/{model}.yaml")
    for missing in collected.missing:
        session.log(f"[figures] {name}: missing run: {missing}")
    missing_lines = [f"missing: {r}" for r in collected.missing]
    missing_lines += [f"unavailable model (no config): {r}" for r in collected.unavailable]
    if collected.runs.empty:
        drawing = Drawing(missing=missing_lines or ["no runs"])
    else:
        curves = gather(session.results_dir, metrics=True)
        curves = curves[curves["run_dir"].isin(set(collected.runs["run_dir"]))]
        drawing = figure.draw(collected.runs, curves, session.scale)
        drawing.missing = missing_lines
    tag, drawing.notes = variant(figure, session)
    directory = session.results_dir / "figures" / session.scale
    written, removed = save_drawing(drawing, name + tag, directory, collected.runs.get("run_dir", ()))
    for path in written:
        session.log(f"[figures] wrote {path}")
    for path in removed:
        session.log(f"[figures] removed {path}: not part of this drawing")
    for path, why in remove_outdated_drawings(directory, name, finished, keep=name + tag):
        session.log(f"[figures] removed {path}: {why}")
    return written, collected.missing
