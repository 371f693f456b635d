"""What each benchmark declares: units of the output, warm-up window, sampling time, its test
records, its official files, and where its records come from (files or a simulator)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ssm_lab.data.sysid import bouc_wen, cascaded_tanks, emps, files, surrogates
from ssm_lab.data.sysid.records import Record


@dataclass(frozen=True)
class Benchmark:
    """warmup: leading test samples left out of the error (the state-initialisation window of the
    ``nonlinear_benchmarks`` package); test_records: the names a run may evaluate on, the first
    the default; files: what to put in ``<data_dir>/sysid/<name>/``; load(directory) reads them;
    simulate(seed, record_length) replaces them; simulator_kind: "simulator" when it follows the
    benchmark's published model, "surrogate" when it only keeps its structure."""

    name: str
    units: str
    warmup: int
    sampling_time: float
    test_records: tuple[str, ...]
    files: tuple[str, ...]
    load: Callable[[Path], dict[str, Record]]
    simulate: Callable[[int, int | None], dict[str, Record]]
    simulator_kind: str
    train_from_simulator: bool = False  # the benchmark ships test data only


BENCHMARKS = {
    benchmark.name: benchmark
    for benchmark in (
        Benchmark(
            "wiener_hammerstein",
            "mV",
            50,
            1 / 51_200,
            ("test",),
            ("WienerHammerBenchMark.mat",),
            files.wiener_hammerstein_files,
            surrogates.wiener_hammerstein_records,
            "surrogate",
        ),
        Benchmark(
            "silverbox",
            "mV",
            50,
            1 / 610.35,
            ("multisine", "arrow_full", "arrow_no_extrapolation"),
            ("SNLS80mV.mat",),
            files.silverbox_files,
            surrogates.silverbox_records,
            "surrogate",
        ),
        # the package's state-initialisation window for the tanks is 5 samples (20 s)
        Benchmark(
            "cascaded_tanks",
            "V",
            5,
            4.0,
            ("test",),
            ("dataBenchmark.mat",),
            files.cascaded_tanks_files,
            cascaded_tanks.simulated_records,
            "surrogate",
        ),
        Benchmark(
            "emps",
            "mm",
            20,
            1e-3,
            ("test",),
            ("DATA_EMPS.mat", "DATA_EMPS_PULSES.mat"),
            files.emps_files,
            emps.simulated_records,
            "simulator",
        ),
        # no window is published for Bouc-Wen: 50 samples (67 ms, two periods of its mode)
        Benchmark(
            "bouc_wen",
            "mm",
            50,
            1 / 750,
            ("multisine", "sinesweep"),
            ("uval_multisine.mat", "yval_multisine.mat", "uval_sinesweep.mat", "yval_sinesweep.mat"),
            files.bouc_wen_files,
            bouc_wen.simulated_records,
            "simulator",
            train_from_simulator=True,
        ),
    )
}
