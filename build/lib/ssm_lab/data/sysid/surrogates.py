"""Surrogates of two electronic benchmarks whose real circuits cannot be simulated exactly; both
keep the benchmark's structure, sampling rate, record lengths and splits, not its numbers.

Wiener-Hammerstein (Schoukens, Suykens & Ljung 2009): linear filter -> static nonlinearity ->
linear filter, at 51.2 kHz, driven by band-limited Gaussian noise. Surrogate: a 3rd-order
Chebyshev type I low-pass (0.5 dB ripple, 4.4 kHz), a smooth saturation s tanh(x / s), and a
3rd-order Chebyshev type II low-pass (40 dB, 5 kHz), the filter families of the circuit.
Output in mV (the circuit's is in V).

Silverbox (Wigren & Schoukens 2013): an electronic Duffing oscillator,
y'' + 2 zeta w y' + w^2 (y + c y^3) = w^2 u, at 610.35 Hz; training and "multisine" test on
random-phase multisines, a new realisation every 8192 samples (75/25 split of one record, as
the ``nonlinear_benchmarks`` package splits the real one), the "arrow" test on band-limited
noise whose amplitude grows linearly (its last fifth beyond the training amplitudes: the
extrapolation part). Output in mV.
"""

from __future__ import annotations

import numpy as np
from scipy import signal

from ssm_lab.data.sysid.excitation import band_limited_noise, multisine_realisations
from ssm_lab.data.sysid.integrate import State, simulate
from ssm_lab.data.sysid.records import Record, column

VOLTS_TO_MV = 1e3

WH_SAMPLING_FREQUENCY = 51_200.0
WH_TRAIN, WH_TEST = 100_000, 78_800  # the package's split of samples 5200..184000
WH_SATURATION = 0.3


def simulate_wiener_hammerstein(u: np.ndarray) -> np.ndarray:
    """u: (L,) volts -> y: (L,) volts, from rest."""
    nyquist = WH_SAMPLING_FREQUENCY / 2
    first = signal.cheby1(3, 0.5, 4_400 / nyquist, output="sos")
    second = signal.cheby2(3, 40, 5_000 / nyquist, output="sos")
    inner = signal.sosfilt(first, u)
    return signal.sosfilt(second, WH_SATURATION * np.tanh(inner / WH_SATURATION))


def wiener_hammerstein_records(seed: int, record_length: int | None = None) -> dict[str, Record]:
    """{"train", "test"}: one noise record simulated whole, split as the benchmark is."""
    u = band_limited_noise(WH_TRAIN + WH_TEST, cutoff_fraction=0.4, std=0.5, rng=np.random.default_rng(seed))
    y = simulate_wiener_hammerstein(u) * VOLTS_TO_MV
    dt = 1 / WH_SAMPLING_FREQUENCY
    full = Record(column(u), column(y), dt, "wiener_hammerstein (surrogate)")
    train, test = full[:WH_TRAIN], full[WH_TRAIN:]
    cap = slice(record_length)
    return {"train": train[cap], "test": test[cap]}


SB_SAMPLING_FREQUENCY = 610.35
SB_MULTISINE, SB_ARROW, SB_ARROW_INTERPOLATION = 86_750, 40_475, 32_000
SB_NATURAL_FREQUENCY, SB_DAMPING, SB_CUBIC = 2 * np.pi * 60.0, 0.05, 12.0
SB_SUBSTEPS = 4
SB_PERIOD, SB_BAND, SB_RMS = 8_192, (0.5, 200.0), 0.05


def simulate_silverbox(u: np.ndarray) -> np.ndarray:
    """u: (L,) volts -> y: (L,) volts, from rest (the Duffing oscillator above)."""
    w2, two_zeta_w = SB_NATURAL_FREQUENCY**2, 2 * SB_DAMPING * SB_NATURAL_FREQUENCY

    def derivative(state: State, drive: float) -> State:
        y, velocity = state
        return velocity, w2 * (drive - y - SB_CUBIC * y**3) - two_zeta_w * velocity

    return simulate(derivative, (0.0, 0.0), u, 1 / SB_SAMPLING_FREQUENCY, SB_SUBSTEPS)[:, 0]


def silverbox_records(seed: int, record_length: int | None = None) -> dict[str, Record]:
    """{"train", "multisine", "arrow_full", "arrow_no_extrapolation"}, each capped at record_length."""
    dt, cap = 1 / SB_SAMPLING_FREQUENCY, slice(record_length)
    periods = -(-SB_MULTISINE // SB_PERIOD)
    u = multisine_realisations(
        SB_PERIOD, periods, SB_SAMPLING_FREQUENCY, SB_BAND, SB_RMS, np.random.default_rng([seed, 0])
    )
    u = u[:SB_MULTISINE]
    multisine = Record(column(u), column(simulate_silverbox(u) * VOLTS_TO_MV), dt, "silverbox multisine (surrogate)")
    split = int(SB_MULTISINE * 0.75)
    envelope = np.linspace(0.0, 1.0, SB_ARROW)
    # the arrow's peak amplitude is 1.25x the training's: its last fifth is extrapolation
    peak = 1.25 * np.abs(u).max()
    noise = band_limited_noise(
        SB_ARROW, cutoff_fraction=200 / (SB_SAMPLING_FREQUENCY / 2), std=1.0, rng=np.random.default_rng([seed, 1])
    )
    u_arrow = envelope * noise * peak / np.abs(noise).max()
    arrow = Record(
        column(u_arrow), column(simulate_silverbox(u_arrow) * VOLTS_TO_MV), dt, "silverbox arrow (surrogate)"
    )
    return {
        "train": multisine[:split][cap],
        "multisine": multisine[split:][cap],
        "arrow_full": arrow[cap],
        "arrow_no_extrapolation": arrow[:SB_ARROW_INTERPOLATION][cap],
    }
