"""Bouc-Wen hysteretic benchmark (Noël & Schoukens 2016, "Hysteretic benchmark with a dynamic
nonlinearity", nonlinearbenchmark.org): a mass on a spring with a hysteretic restoring force z,

    m y'' + c y' + k y + z(y, y') = u(t)
    z' = alpha y' - beta (gamma |y'| |z|^(nu - 1) z + delta y' |z|^nu),

force u in N, displacement y (reported in mm), sampled at 750 Hz. The published parameters are
below. The benchmark integrates with Newmark at 15 kHz; we use RK4 at 3 kHz (``SUBSTEPS``),
which is of higher order (the fastest mode, ~36 Hz, is 80 steps per period). The benchmark
ships test signals only; training data come from the simulator, as the benchmark intends.

Excitations, our reading of the benchmark's section 5 (check before comparing numbers with
published results): random-phase multisines of 8192 samples per period, 5-150 Hz, RMS 50 N
(training: ``TRAIN_PERIODS`` periods, each a new realisation, simulated as one record from
rest; test: the steady-state second period of a separate realisation), and a linear sine sweep
of amplitude 50 N (``SWEEP``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ssm_lab.data.sysid.excitation import linear_sine_sweep, multisine_realisations, random_phase_multisine
from ssm_lab.data.sysid.integrate import State, simulate
from ssm_lab.data.sysid.records import Record, column

SAMPLING_FREQUENCY = 750.0
SUBSTEPS = 4
PERIOD = 8192
BAND = (5.0, 150.0)
RMS = 50.0
TRAIN_PERIODS = 5
SWEEP = {"num_samples": 153_000, "start_hz": 20.0, "stop_hz": 54.0, "amplitude": 50.0}
METRES_TO_MM = 1e3


@dataclass(frozen=True)
class BoucWenParameters:
    """The published values: m_L [kg], c_L [N s/m], k_L [N/m], alpha [N/m], beta [1/m], gamma,
    delta, nu (dimensionless)."""

    mass: float = 2.0
    damping: float = 10.0
    stiffness: float = 5e4
    alpha: float = 5e4
    beta: float = 1e3
    gamma: float = 0.8
    delta: float = -1.1
    nu: float = 1.0


def simulate_bouc_wen(u: np.ndarray, parameters: BoucWenParameters = BoucWenParameters()) -> np.ndarray:
    """Displacement in m at each sample, from rest: u: (L,) force in N -> (L,)."""
    p = parameters

    def derivative(state: State, force: float) -> State:
        y, velocity, z = state
        acceleration = (force - p.damping * velocity - p.stiffness * y - z) / p.mass
        abs_z = abs(z)
        dz = p.alpha * velocity - p.beta * (
            p.gamma * abs(velocity) * abs_z ** (p.nu - 1) * z + p.delta * velocity * abs_z**p.nu
        )
        return velocity, acceleration, dz

    return simulate(derivative, (0.0, 0.0, 0.0), u, 1 / SAMPLING_FREQUENCY, SUBSTEPS)[:, 0]


def simulated_records(seed: int, record_length: int | None = None) -> dict[str, Record]:
    """{"train", "multisine", "sinesweep"} records; ``record_length`` caps each (None: full)."""

    def capped(full: int) -> int:
        return min(record_length or full, full)

    train_periods = -(-capped(PERIOD * TRAIN_PERIODS) // PERIOD)
    u_train = multisine_realisations(
        PERIOD, train_periods, SAMPLING_FREQUENCY, BAND, RMS, np.random.default_rng([seed, 0])
    )
    u_train = u_train[: capped(PERIOD * TRAIN_PERIODS)]
    u_test = random_phase_multisine(PERIOD, 2, SAMPLING_FREQUENCY, BAND, RMS, np.random.default_rng([seed, 1]))
    y_test = simulate_bouc_wen(u_test)[PERIOD:][: capped(PERIOD)]
    sweep = linear_sine_sweep(
        SWEEP["num_samples"], SAMPLING_FREQUENCY, SWEEP["start_hz"], SWEEP["stop_hz"], SWEEP["amplitude"]
    )
    sweep = sweep[: capped(SWEEP["num_samples"])]
    dt = 1 / SAMPLING_FREQUENCY
    return {
        "train": Record(
            column(u_train), column(simulate_bouc_wen(u_train) * METRES_TO_MM), dt, "bouc_wen train (simulated)"
        ),
        "multisine": Record(
            column(u_test[PERIOD:][: capped(PERIOD)]),
            column(y_test * METRES_TO_MM),
            dt,
            "bouc_wen multisine (simulated)",
        ),
        "sinesweep": Record(
            column(sweep), column(simulate_bouc_wen(sweep) * METRES_TO_MM), dt, "bouc_wen sine sweep (simulated)"
        ),
    }
