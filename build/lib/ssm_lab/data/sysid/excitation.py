"""Input signals of the system-identification benchmarks: random-phase multisines, linear sine
sweeps, band-limited Gaussian noise (all deterministic given a numpy Generator)."""

from __future__ import annotations

import numpy as np
from scipy import signal


def random_phase_multisine(
    period: int,
    periods: int,
    sampling_frequency: float,
    band: tuple[float, float],
    rms: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """u_t = A sum_k cos(2 pi k t / period + phi_k) over the bins k with k fs / period in ``band``,
    phases phi_k uniform on [0, 2 pi), A set so the RMS is ``rms``; ``periods`` repetitions,
    (period * periods,). Periodic by construction: its spectrum has exactly the excited bins."""
    low, high = band
    bins = np.arange(period // 2 + 1)
    excited = (bins * sampling_frequency / period >= low) & (bins * sampling_frequency / period <= high) & (bins > 0)
    if not excited.any():
        raise ValueError(f"no frequency bin of a {period}-sample period at {sampling_frequency} Hz lies in {band} Hz")
    spectrum = np.zeros(period // 2 + 1, dtype=complex)
    spectrum[excited] = np.exp(2j * np.pi * rng.random(int(excited.sum())))
    one_period = np.fft.irfft(spectrum, n=period)
    one_period *= rms / np.sqrt(np.mean(one_period**2))
    return np.tile(one_period, periods)


def multisine_realisations(
    period: int, count: int, sampling_frequency: float, band: tuple[float, float], rms: float, rng: np.random.Generator
) -> np.ndarray:
    """``count`` one-period multisines, each with its own random phases, back to back: one
    continuous record that never repeats an input, (period * count,)."""
    return np.concatenate([random_phase_multisine(period, 1, sampling_frequency, band, rms, rng) for _ in range(count)])


def linear_sine_sweep(
    num_samples: int, sampling_frequency: float, start_hz: float, stop_hz: float, amplitude: float
) -> np.ndarray:
    """u(t) = A sin(2 pi (f_0 t + (f_1 - f_0) t^2 / (2 T))): instantaneous frequency from f_0 to f_1."""
    t = np.arange(num_samples) / sampling_frequency
    duration = num_samples / sampling_frequency
    return amplitude * np.sin(2 * np.pi * (start_hz * t + (stop_hz - start_hz) * t**2 / (2 * duration)))


def band_limited_noise(num_samples: int, cutoff_fraction: float, std: float, rng: np.random.Generator) -> np.ndarray:
    """White Gaussian noise through a 6th-order Butterworth low-pass at ``cutoff_fraction`` of the
    Nyquist frequency, scaled to standard deviation ``std``."""
    sos = signal.butter(6, cutoff_fraction, output="sos")
    noise = signal.sosfilt(sos, rng.standard_normal(num_samples))
    return noise * std / noise.std()
