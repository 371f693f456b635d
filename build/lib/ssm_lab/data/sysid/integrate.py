"""Fixed-step integration of a continuous-time system driven by a sampled input, the engine of
the simulators: classical Runge-Kutta 4 with ``substeps`` steps per sample and the input held
constant over each sample (zero-order hold), as a data-acquisition card drives a plant.

States are tuples of Python floats: for the 1-3 state benchmarks, scalar arithmetic is several
times faster than numpy calls on tiny arrays."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

State = tuple[float, ...]


def simulate(
    derivative: Callable[[State, float], State],
    initial_state: Sequence[float],
    inputs: np.ndarray,
    sampling_time: float,
    substeps: int,
    constrain: Callable[[State], State] | None = None,
    feedback: Callable[[State, float], float] | None = None,
) -> np.ndarray:
    """States at every sample: (L, n), row t the state at time t * sampling_time (before input
    u_t acts). ``derivative(x, u) -> dx/dt``; ``constrain`` projects a state back onto its
    admissible set after each step (e.g. a tank level clipped at its rim); ``feedback(x_t, r_t)``
    makes it a sampled closed loop: the input held over sample t is computed from the state at
    t and ``inputs[t]`` (then a reference)."""
    if substeps < 1:
        raise ValueError(f"substeps must be >= 1, got {substeps}")
    h = sampling_time / substeps
    state: State = tuple(float(v) for v in initial_state)
    states = np.empty((len(inputs), len(state)))
    for t, u in enumerate(inputs.tolist()):
        states[t] = state
        if feedback is not None:
            u = feedback(state, u)
        for _ in range(substeps):
            k1 = derivative(state, u)
            k2 = derivative(tuple(x + 0.5 * h * k for x, k in zip(state, k1, strict=True)), u)
            k3 = derivative(tuple(x + 0.5 * h * k for x, k in zip(state, k2, strict=True)), u)
            k4 = derivative(tuple(x + h * k for x, k in zip(state, k3, strict=True)), u)
            slopes = zip(state, k1, k2, k3, k4, strict=True)
            state = tuple(x + h / 6 * (a + 2 * b + 2 * c + d) for x, a, b, c, d in slopes)
            if constrain is not None:
                state = constrain(state)
    return states
