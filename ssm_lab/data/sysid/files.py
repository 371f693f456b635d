"""Loaders of the official benchmark files, read as the ``nonlinear_benchmarks`` package reads
them (same variables, same index splits), with outputs converted to the reporting units.
Each returns {"train": Record, <test record name>: Record, ...}; files live in
``<data_dir>/sysid/<benchmark>/`` (data_dir/README.md lists them)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ssm_lab.data.sysid.records import Record, column

VOLTS_TO_MV = 1e3
METRES_TO_MM = 1e3


def read_mat(path: Path, names: tuple[str, ...], min_samples: int = 1) -> dict[str, np.ndarray]:
    """The named variables of a MATLAB file as 1-D float64 arrays. Each must be a vector (shape
    (n,), (n, 1) or (1, n): a matrix is never flattened into one signal) of at least
    ``min_samples`` values. Errors name the file and what is wrong (unreadable; a variable
    missing, not numeric, not a vector or too short, with its shape)."""
    from scipy.io import loadmat  # only the file loaders need scipy.io

    try:
        contents = loadmat(path)
    except Exception as error:  # scipy raises several types for a corrupt file
        raise ValueError(f"{path}: not a readable MATLAB file ({error})") from error
    variables = {}
    for name in names:
        if name not in contents:
            found = sorted(k for k in contents if not k.startswith("__"))
            raise ValueError(f"{path}: no variable {name!r}; the file holds {found}")
        value = np.asarray(contents[name])
        if not np.issubdtype(value.dtype, np.number):
            raise ValueError(f"{path}: variable {name!r} is not numeric (dtype {value.dtype})")
        if value.size < min_samples:
            raise ValueError(
                f"{path}: variable {name!r} holds {value.size} value(s) (shape {value.shape}); "
                f"need at least {min_samples}"
            )
        if value.ndim > 2 or (value.ndim == 2 and 1 not in value.shape):
            raise ValueError(
                f"{path}: variable {name!r} must be a vector ((n,), (n, 1) or (1, n)), got shape {value.shape}"
            )
        variables[name] = value.astype(np.float64).ravel()
    return variables


def _one_value(path: Path, name: str, values: np.ndarray) -> float:
    """The value of a variable that holds one number (a sampling time or frequency)."""
    if len(values) != 1:
        raise ValueError(f"{path}: variable {name!r} must hold one value, got {len(values)}")
    return float(values[0])


def _sampling_time(path: Path, sampling_time: float, where: str) -> float:
    """``sampling_time`` (s), read from ``path`` as ``where`` says, after checking it is positive and finite."""
    if not (math.isfinite(sampling_time) and sampling_time > 0):
        raise ValueError(f"{path}: {where}; a sampling time must be a positive finite number of s")
    return sampling_time


def _sampling_time_of_frequency(path: Path, name: str, values: np.ndarray) -> float:
    """1 / the sampling frequency in Hz a variable holds, which must be positive and finite and so
    must its inverse (a frequency of 0, or below 1 / the largest float, is an infinite sampling time)."""
    frequency = _one_value(path, name, values)
    sampling_time = 1 / frequency if frequency else math.inf
    if not (math.isfinite(frequency) and frequency > 0 and math.isfinite(sampling_time)):
        raise ValueError(
            f"{path}: variable {name!r} is {frequency}; a sampling frequency must be a positive finite number of Hz "
            f"(its inverse, the sampling time, finite too)"
        )
    return sampling_time


def _same_length(path: Path, **signals: np.ndarray) -> None:
    lengths = {name: len(v) for name, v in signals.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"{path}: signals have different lengths {lengths}")


def wiener_hammerstein_files(directory: Path) -> dict[str, Record]:
    """WienerHammerBenchMark.mat: samples 5200..184000, the first 100000 for training."""
    path = directory / "WienerHammerBenchMark.mat"
    v = read_mat(path, ("uBenchMark", "yBenchMark", "fs"))
    _same_length(path, uBenchMark=v["uBenchMark"], yBenchMark=v["yBenchMark"])
    sampling_time = _sampling_time_of_frequency(path, "fs", v["fs"])
    full = Record(column(v["uBenchMark"]), column(v["yBenchMark"] * VOLTS_TO_MV), sampling_time, str(path))
    data = full[5200:184000]
    return {"train": data[:100000], "test": data[100000:]}


def silverbox_files(directory: Path) -> dict[str, Record]:
    """SNLS80mV.mat: the arrow (samples 100..40575) and the multisines (40650..127400, 75% for
    training, 25% the "multisine" test)."""
    path = directory / "SNLS80mV.mat"
    v = read_mat(path, ("V1", "V2"))
    _same_length(path, V1=v["V1"], V2=v["V2"])
    full = Record(column(v["V1"]), column(v["V2"] * VOLTS_TO_MV), 1 / 610.35, str(path))
    arrow, multisine = full[100:40575], full[40650:127400]
    split = int(len(multisine) * 0.75)
    return {
        "train": multisine[:split],
        "multisine": multisine[split:],
        "arrow_full": arrow,
        "arrow_no_extrapolation": arrow[:32000],
    }


def cascaded_tanks_files(directory: Path) -> dict[str, Record]:
    """dataBenchmark.mat: the estimation record for training, the validation record for test."""
    path = directory / "dataBenchmark.mat"
    v = read_mat(path, ("uEst", "uVal", "yEst", "yVal", "Ts"))
    _same_length(path, uEst=v["uEst"], yEst=v["yEst"])
    _same_length(path, uVal=v["uVal"], yVal=v["yVal"])
    ts = _one_value(path, "Ts", v["Ts"])
    ts = _sampling_time(path, ts, f"variable 'Ts' is {ts}")
    return {
        "train": Record(column(v["uEst"]), column(v["yEst"]), ts, f"{path} (Est)"),
        "test": Record(column(v["uVal"]), column(v["yVal"]), ts, f"{path} (Val)"),
    }


def emps_files(directory: Path) -> dict[str, Record]:
    """DATA_EMPS.mat for training, DATA_EMPS_PULSES.mat for test: input vir (V), output qm (m -> mm)."""
    records = {}
    for split, name in (("train", "DATA_EMPS.mat"), ("test", "DATA_EMPS_PULSES.mat")):
        path = directory / name
        v = read_mat(path, ("qm", "vir", "t"), min_samples=2)  # the sampling time is t[1] - t[0]
        _same_length(path, qm=v["qm"], vir=v["vir"], t=v["t"])
        step = float(v["t"][1] - v["t"][0])
        step = _sampling_time(path, step, f"variable 't' steps by t[1] - t[0] = {step}")
        records[split] = Record(column(v["vir"]), column(v["qm"] * METRES_TO_MM), step, str(path))
    return records


def bouc_wen_files(directory: Path) -> dict[str, Record]:
    """The benchmark's test signals (force in N, displacement m -> mm, 750 Hz): u/yval_multisine.mat
    and u/yval_sinesweep.mat. The benchmark ships no training data: it is simulated."""
    records = {}
    for test in ("multisine", "sinesweep"):
        u_path, y_path = directory / f"uval_{test}.mat", directory / f"yval_{test}.mat"
        u = read_mat(u_path, (f"uval_{test}",))[f"uval_{test}"]
        y = read_mat(y_path, (f"yval_{test}",))[f"yval_{test}"]
        if len(u) != len(y):
            raise ValueError(f"{u_path} has {len(u)} samples but {y_path} has {len(y)}")
        records[test] = Record(column(u), column(y * METRES_TO_MM), 1 / 750.0, str(y_path))
    return records
