"""Cascaded tanks (Schoukens, Mattsson, Wigren & Noël 2016, nonlinearbenchmark.org): a pump
fills an upper tank that drains through a small opening into a lower tank. The benchmark's
model structure, Torricelli outflow with overflow,

    x1' = -k1 sqrt(x1) + k4 u
    x2' =  k2 sqrt(x1) - k3 sqrt(x2) + k5 * (overflow of tank 1),

levels and pump input in V, output y = x2 (V), sampled every 4 s; a tank that reaches its rim
(10 V) overflows, and a fraction k5 of what spills from tank 1 falls into tank 2. The benchmark
publishes the structure, not parameter values: ``TankParameters`` are ours, chosen so that the
levels span the sensor range with a time constant of ~20 samples (a surrogate in its values).
Inputs: random-phase multisines up to 0.0144 Hz around 5 V, as in the benchmark's design.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ssm_lab.data.sysid.excitation import random_phase_multisine
from ssm_lab.data.sysid.integrate import State, simulate
from ssm_lab.data.sysid.records import Record, column

SAMPLING_TIME = 4.0
SUBSTEPS = 8
RECORD_LENGTH = 1024
RIM = 10.0
BAND = (0.0, 0.0144)
MEAN_INPUT, INPUT_RMS = 5.0, 1.2


@dataclass(frozen=True)
class TankParameters:
    k1: float = 0.06
    k2: float = 0.06
    k3: float = 0.05
    k4: float = 0.03
    k5: float = 0.5


def simulate_cascaded_tanks(u: np.ndarray, parameters: TankParameters = TankParameters()) -> np.ndarray:
    """Levels (x1, x2) at each sample from empty tanks: u: (L,) pump voltage -> (L, 2)."""
    p = parameters

    def derivative(state: State, pump: float) -> State:
        x1, x2 = state
        inflow, outflow1 = p.k4 * pump, p.k1 * math.sqrt(x1)
        # at the rim, whatever tank 1 cannot hold spills; part of it reaches tank 2
        spill = max(inflow - outflow1, 0.0) if x1 >= RIM else 0.0
        dx1 = inflow - outflow1 - spill
        dx2 = p.k2 * math.sqrt(x1) - p.k3 * math.sqrt(x2) + p.k5 * spill
        return dx1, dx2

    def constrain(state: State) -> State:
        return tuple(min(max(x, 0.0), RIM) for x in state)

    return simulate(derivative, (0.0, 0.0), u, SAMPLING_TIME, SUBSTEPS, constrain=constrain)


def simulated_records(seed: int, record_length: int | None = None) -> dict[str, Record]:
    """{"train", "test"} records of ``record_length`` samples (None: the benchmark's 1024), each
    from empty tanks, as the benchmark's measurements start from (nearly) empty tanks."""
    length = min(record_length or RECORD_LENGTH, RECORD_LENGTH)
    records = {}
    for index, name in enumerate(("train", "test")):
        rng = np.random.default_rng([seed, index])
        u = MEAN_INPUT + random_phase_multisine(RECORD_LENGTH, 1, 1 / SAMPLING_TIME, BAND, INPUT_RMS, rng)
        u = np.clip(u, 0.0, RIM)[:length]
        levels = simulate_cascaded_tanks(u)
        records[name] = Record(column(u), column(levels[:, 1]), SAMPLING_TIME, f"cascaded_tanks {name} (simulated)")
    return records
