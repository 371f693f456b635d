"""Electro-Mechanical Positioning System (Janot, Gautier & Brunot 2019, "Data set and reference
models of EMPS", nonlinearbenchmark.org): a prismatic joint driven in closed loop. The published
reference model is a rigid body with viscous and Coulomb friction and an offset,

    M q'' = g_tau u - F_v q' - F_c sign(q') - offset,

u the drive's control voltage (the benchmark's input ``vir``), q the motor position (output,
reported in mm), under the benchmark's cascade controller u = K_v (K_p (q_ref - q) - q'),
saturated at +-10 V, sampled at 1 kHz. Parameters as published (see ``EMPSParameters``).

The measured files use the benchmark's own reference trajectories; the simulator draws its own:
moves between random positions in [0, 0.2] m with trapezoidal velocity profiles and dwells
("train"), and short back-and-forth pulses ("test", after the benchmark's DATA_EMPS_PULSES).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ssm_lab.data.sysid.integrate import State, simulate
from ssm_lab.data.sysid.records import Record, column

SAMPLING_TIME = 1e-3
SUBSTEPS = 2
RECORD_LENGTH = 24_841  # samples in each benchmark file
METRES_TO_MM = 1e3


@dataclass(frozen=True)
class EMPSParameters:
    """M [kg], F_v [N s/m], F_c [N], offset [N], g_tau [N/V], K_p [1/s], K_v [V s/m], saturation [V]."""

    mass: float = 95.1089
    viscous_friction: float = 203.5034
    coulomb_friction: float = 20.3935
    offset: float = -3.1648
    force_gain: float = 35.15
    position_gain: float = 160.18
    velocity_gain: float = 243.45
    saturation: float = 10.0


def simulate_emps(
    reference: np.ndarray, parameters: EMPSParameters = EMPSParameters()
) -> tuple[np.ndarray, np.ndarray]:
    """Closed loop from rest at q = reference[0]: reference (L,) in m -> (control voltage u (L,),
    position q (L,) in m); the controller acts at each sample and holds its output (1 kHz)."""
    p = parameters

    def derivative(state: State, voltage: float) -> State:
        velocity = state[1]
        friction = p.coulomb_friction * (velocity > 0) - p.coulomb_friction * (velocity < 0)
        force = p.force_gain * voltage - p.viscous_friction * velocity - friction - p.offset
        return velocity, force / p.mass

    def control(state: State, reference_now: float) -> float:
        position, velocity = state
        voltage = p.velocity_gain * (p.position_gain * (reference_now - position) - velocity)
        return min(max(voltage, -p.saturation), p.saturation)

    states = simulate(derivative, (reference[0], 0.0), reference, SAMPLING_TIME, SUBSTEPS, feedback=control)
    voltages = np.array([control(tuple(s), r) for s, r in zip(states.tolist(), reference.tolist(), strict=True)])
    return voltages, states[:, 0]


def trapezoidal_moves(
    num_samples: int, rng: np.random.Generator, max_step: float, dwell: tuple[int, int]
) -> np.ndarray:
    """Reference positions (m): from 0.1 m, moves to random targets in [0, 0.2] m, each at most
    ``max_step`` away, with a trapezoidal velocity profile (0.25 m/s, 2 m/s^2), then a dwell of a
    random number of samples in ``dwell``; (num_samples,)."""
    speed, acceleration = 0.25, 2.0
    positions, current = [], 0.1
    while len(positions) < num_samples:
        target = float(np.clip(current + rng.uniform(-max_step, max_step), 0.0, 0.2))
        distance = abs(target - current)
        ramp = min(speed / acceleration, math.sqrt(distance / acceleration))  # time to top speed
        cruise = max(distance - acceleration * ramp**2, 0.0) / speed
        duration = 2 * ramp + cruise
        top = acceleration * ramp
        for t in np.arange(0.0, duration, SAMPLING_TIME):
            if t < ramp:
                travelled = 0.5 * acceleration * t**2
            elif t < ramp + cruise:
                travelled = 0.5 * acceleration * ramp**2 + top * (t - ramp)
            else:
                left = duration - t
                travelled = distance - 0.5 * acceleration * left**2
            positions.append(current + math.copysign(travelled, target - current))
        positions.extend([target] * int(rng.integers(*dwell)))
        current = target
    return np.asarray(positions[:num_samples])


def simulated_records(seed: int, record_length: int | None = None) -> dict[str, Record]:
    """{"train", "test"} records of ``record_length`` samples (None: the benchmark's 24841)."""
    length = min(record_length or RECORD_LENGTH, RECORD_LENGTH)
    references = {
        "train": trapezoidal_moves(length, np.random.default_rng([seed, 0]), max_step=0.2, dwell=(200, 1000)),
        "test": trapezoidal_moves(length, np.random.default_rng([seed, 1]), max_step=0.02, dwell=(50, 300)),
    }
    records = {}
    for name, reference in references.items():
        voltage, position = simulate_emps(reference)
        records[name] = Record(
            column(voltage), column(position * METRES_TO_MM), SAMPLING_TIME, f"emps {name} (simulated)"
        )
    return records
