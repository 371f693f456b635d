"""System identification: simulators (physics, determinism), official-file loaders (splits,
units, bad files), the data module (windows, warm-up, normalisation) and metrics in units."""

import logging
import math

import numpy as np
import pytest
import torch
from scipy.io import savemat

from ssm_lab.data.sysid import bouc_wen, cascaded_tanks, emps, surrogates
from ssm_lab.data.sysid.benchmarks import BENCHMARKS
from ssm_lab.data.sysid.datamodule import SysIdDataModule
from ssm_lab.data.sysid.excitation import linear_sine_sweep, random_phase_multisine
from ssm_lab.data.sysid.files import read_mat
from ssm_lab.data.sysid.integrate import simulate
from ssm_lab.data.sysid.records import Record
from ssm_lab.metrics import build_metrics


def test_rk4_engine_is_fourth_order_and_honours_feedback_and_constraints():
    decay = simulate(lambda x, u: (-x[0] + u,), (1.0,), np.zeros(11), 0.1, substeps=1)[:, 0]
    assert np.abs(decay - np.exp(-0.1 * np.arange(11))).max() < 1e-6
    # a sampled proportional controller drives x' = u to the reference
    tracked = simulate(lambda x, u: (u,), (0.0,), np.full(200, 2.0), 0.01, 2, feedback=lambda x, r: 5 * (r - x[0]))
    assert tracked[-1, 0] == pytest.approx(2.0, rel=1e-3)
    clipped = simulate(lambda x, u: (u,), (0.0,), np.full(50, 1.0), 1.0, 1, constrain=lambda x: (min(x[0], 10.0),))
    assert clipped.max() == 10.0


def test_multisine_excites_exactly_its_band_at_the_requested_rms():
    u = random_phase_multisine(1000, 2, 1000.0, (50.0, 100.0), 0.7, np.random.default_rng(0))
    np.testing.assert_allclose(u[:1000], u[1000:])  # periodic
    assert np.sqrt(np.mean(u**2)) == pytest.approx(0.7)
    spectrum = np.abs(np.fft.rfft(u[:1000]))
    excited = np.flatnonzero(spectrum > 1e-9 * spectrum.max())
    assert excited.min() == 50 and excited.max() == 100 and len(excited) == 51
    sweep = linear_sine_sweep(10_000, 1000.0, 1.0, 20.0, 2.0)
    assert np.abs(sweep).max() == pytest.approx(2.0, rel=1e-3)


def test_bouc_wen_static_stiffness_is_k_plus_alpha_for_small_loads():
    # a slow monotonic ramp (no ringing, whose hysteresis would shift the rest point):
    # dz/dy = alpha - beta (gamma + delta) z ~ alpha, so y -> F / (k + alpha) to ~1e-3
    p = bouc_wen.BoucWenParameters()
    load = np.concatenate([np.linspace(0.0, 0.1, 3000), np.full(3000, 0.1)])
    y = bouc_wen.simulate_bouc_wen(load)
    assert y[-1] == pytest.approx(0.1 / (p.stiffness + p.alpha), rel=2e-3)


def test_bouc_wen_dissipates_energy_in_a_hysteresis_loop():
    u = 80 * np.sin(2 * np.pi * 10 * np.arange(3000) / 750)
    y = bouc_wen.simulate_bouc_wen(u)
    last = slice(3000 - 75, 3000)  # one steady-state period
    work = np.sum(u[last][:-1] * np.diff(y[last]))
    assert work > 0  # the force does net work on the oscillator every cycle


def test_cascaded_tanks_settle_at_the_torricelli_equilibrium_and_overflow_at_the_rim():
    p = cascaded_tanks.TankParameters()
    levels = cascaded_tanks.simulate_cascaded_tanks(np.full(600, 4.0))
    x1 = (p.k4 * 4.0 / p.k1) ** 2
    np.testing.assert_allclose(levels[-1], [x1, (p.k2 / p.k3) ** 2 * x1], rtol=1e-3)
    flooded = cascaded_tanks.simulate_cascaded_tanks(np.full(600, 9.0))
    assert flooded.max() == cascaded_tanks.RIM and flooded.min() >= 0


def test_emps_closed_loop_tracks_its_reference():
    reference = emps.trapezoidal_moves(6000, np.random.default_rng(0), max_step=0.1, dwell=(800, 900))
    voltage, position = emps.simulate_emps(reference)
    settled = np.diff(reference, prepend=reference[0]) == 0
    assert np.abs(position - reference)[settled][-100:].max() < 1e-4  # within 0.1 mm at rest
    assert np.abs(voltage).max() <= emps.EMPSParameters().saturation
    assert reference.min() >= 0 and reference.max() <= 0.2


def test_surrogates_reduce_to_their_static_maps_for_constant_inputs():
    y = surrogates.simulate_wiener_hammerstein(np.full(5000, 0.2))
    assert y[-1] == pytest.approx(surrogates.WH_SATURATION * np.tanh(0.2 / surrogates.WH_SATURATION), rel=1e-3)
    y = surrogates.simulate_silverbox(np.full(1500, 0.01))
    assert y[-1] + surrogates.SB_CUBIC * y[-1] ** 3 == pytest.approx(0.01, rel=1e-3)


@pytest.mark.parametrize("name", ["cascaded_tanks", "emps", "bouc_wen", "wiener_hammerstein"])
def test_simulated_records_are_deterministic_by_seed(name):
    simulate_records = BENCHMARKS[name].simulate
    a, b, c = simulate_records(1, 600), simulate_records(1, 600), simulate_records(2, 600)
    assert set(a) == {"train", *BENCHMARKS[name].test_records}
    for key in a:
        np.testing.assert_array_equal(a[key].y, b[key].y)
        assert len(a[key]) == 600 and a[key].sampling_time == pytest.approx(BENCHMARKS[name].sampling_time)
    assert not np.array_equal(a["train"].y, c["train"].y)


def test_silverbox_surrogate_keeps_the_benchmark_splits():
    records = surrogates.silverbox_records(0)
    assert len(records["train"]) == 65062 and len(records["multisine"]) == 21688
    assert len(records["arrow_full"]) == 40475 and len(records["arrow_no_extrapolation"]) == 32000
    # the arrow's last part exceeds every training amplitude: extrapolation
    assert np.abs(records["arrow_full"].u[-2000:]).max() > np.abs(records["train"].u).max()


def _write_official_files(directory, n_wh=184_000, n_sb=127_400):
    """Files with the official variable names; outputs ramp so that splits can be located."""
    directory.mkdir(parents=True, exist_ok=True)
    ramp = np.arange(n_wh, dtype=float)
    savemat(
        directory / "WienerHammerBenchMark.mat",
        {"uBenchMark": np.sin(ramp)[:, None], "yBenchMark": ramp[:, None] * 1e-6, "fs": [[51200.0]]},
    )
    ramp = np.arange(n_sb, dtype=float)
    savemat(directory / "SNLS80mV.mat", {"V1": np.cos(ramp)[None], "V2": ramp[None] * 1e-6})


def test_official_files_are_split_and_converted_as_the_benchmark_package_does(tmp_path):
    _write_official_files(tmp_path / "sysid" / "wiener_hammerstein")
    records = BENCHMARKS["wiener_hammerstein"].load(tmp_path / "sysid" / "wiener_hammerstein")
    assert len(records["train"]) == 100_000 and len(records["test"]) == 78_800
    assert records["train"].y[0, 0] == pytest.approx(5200 * 1e-6 * 1e3)  # sample 5200, V -> mV
    assert records["test"].y[0, 0] == pytest.approx(105_200 * 1e-3)
    assert records["train"].sampling_time == pytest.approx(1 / 51200)

    _write_official_files(tmp_path / "sysid" / "silverbox")
    records = BENCHMARKS["silverbox"].load(tmp_path / "sysid" / "silverbox")
    assert records["arrow_full"].y[0, 0] == pytest.approx(100 * 1e-3) and len(records["arrow_full"]) == 40475
    assert records["train"].y[0, 0] == pytest.approx(40650 * 1e-3) and len(records["multisine"]) == 86750 - 65062

    directory = tmp_path / "sysid" / "emps"
    directory.mkdir(parents=True)
    t = np.arange(500) * 1e-3
    for name in ("DATA_EMPS.mat", "DATA_EMPS_PULSES.mat"):
        savemat(
            directory / name, {"qm": (0.1 + t)[:, None], "qg": t[:, None], "vir": np.sin(t)[:, None], "t": t[:, None]}
        )
    records = BENCHMARKS["emps"].load(directory)
    assert records["test"].y[0, 0] == pytest.approx(100.0)  # m -> mm
    assert records["train"].sampling_time == pytest.approx(1e-3)


def test_data_module_reads_files_when_present(tmp_path):
    directory = tmp_path / "sysid" / "cascaded_tanks"
    directory.mkdir(parents=True)
    n = 300
    u, y = np.linspace(2, 8, n), np.linspace(0, 5, n)
    savemat(
        directory / "dataBenchmark.mat",
        {"uEst": u[:, None], "yEst": y[:, None], "uVal": u[:, None], "yVal": 2 * y[:, None], "Ts": [[4.0]]},
    )
    module = SysIdDataModule("cascaded_tanks", window=32, batch_size=4, steps_per_epoch=1, data_dir=tmp_path)
    module.setup()
    assert module.from_files
    test = module.datasets["test"][0]
    assert test["inputs"].shape == (n, 1)  # the whole validation record, one sequence
    spec = module.spec
    in_units = test["targets"].double() * spec.target_scale[0] + spec.target_offset[0]
    np.testing.assert_allclose(in_units[:, 0].numpy(), 2 * y, rtol=1e-5, atol=1e-5)
    assert spec.units == "V" and spec.eval_warmup == 5


def test_bad_files_name_the_file_and_the_problem(tmp_path):
    path = tmp_path / "DATA_EMPS.mat"
    savemat(path, {"qm": np.zeros((10, 1)), "vir": np.zeros((10, 1))})
    with pytest.raises(ValueError, match=r"DATA_EMPS.mat: no variable 't'; the file holds \['qm', 'vir'\]"):
        read_mat(path, ("qm", "vir", "t"))
    savemat(path, {"qm": np.zeros((10, 1)), "vir": np.zeros((9, 1)), "t": np.zeros((10, 1))})
    with pytest.raises(
        ValueError, match=r"DATA_EMPS.mat: signals have different lengths \{'qm': 10, 'vir': 9, 't': 10\}"
    ):
        BENCHMARKS["emps"].load(tmp_path)
    path.write_text("not a mat file")
    with pytest.raises(ValueError, match=r"DATA_EMPS.mat: not a readable MATLAB file"):
        read_mat(path, ("qm",))
    savemat(path, {"qm": np.full((10, 1), np.nan), "vir": np.zeros((10, 1)), "t": np.arange(10.0)[:, None]})
    (tmp_path / "DATA_EMPS_PULSES.mat").write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match=r"DATA_EMPS.mat.*NaN or Inf"):
        BENCHMARKS["emps"].load(tmp_path)


def test_mat_variables_must_be_vectors_of_enough_samples(tmp_path):
    n = 512
    tanks = {"uEst": np.zeros((n, 1)), "yEst": np.zeros((n, 1)), "uVal": np.zeros((1, n)), "yVal": np.zeros(n)}
    savemat(tmp_path / "dataBenchmark.mat", {**tanks, "Ts": [[4.0]]})
    assert len(BENCHMARKS["cascaded_tanks"].load(tmp_path)["test"]) == n  # (n, 1), (1, n) and (n,) are vectors
    # two-column records would be read as 2n interleaved samples
    savemat(
        tmp_path / "dataBenchmark.mat", {**tanks, "uEst": np.zeros((n, 2)), "yEst": np.zeros((n, 2)), "Ts": [[4.0]]}
    )
    with pytest.raises(
        ValueError,
        match=r"dataBenchmark.mat: variable 'uEst' must be a vector \(\(n,\), \(n, 1\) or \(1, n\)\), "
        r"got shape \(512, 2\)",
    ):
        BENCHMARKS["cascaded_tanks"].load(tmp_path)
    savemat(tmp_path / "dataBenchmark.mat", {**tanks, "Ts": np.zeros((0, 0))})
    with pytest.raises(
        ValueError, match=r"dataBenchmark.mat: variable 'Ts' holds 0 value\(s\) \(shape \(0, 0\)\); need at least 1"
    ):
        BENCHMARKS["cascaded_tanks"].load(tmp_path)
    savemat(tmp_path / "dataBenchmark.mat", {**tanks, "Ts": [[4.0, 2.0]]})
    with pytest.raises(ValueError, match=r"dataBenchmark.mat: variable 'Ts' must hold one value, got 2"):
        BENCHMARKS["cascaded_tanks"].load(tmp_path)
    one_sample = {"qm": np.zeros((1, 1)), "vir": np.zeros((1, 1)), "t": np.zeros((1, 1))}
    savemat(tmp_path / "DATA_EMPS.mat", one_sample)
    with pytest.raises(
        ValueError, match=r"DATA_EMPS.mat: variable 'qm' holds 1 value\(s\) \(shape \(1, 1\)\); need at least 2"
    ):
        BENCHMARKS["emps"].load(tmp_path)


@pytest.mark.parametrize("fs", [0.0, -51200.0, math.nan, math.inf, 1e-310])  # 1 / 1e-310 overflows to inf
def test_a_sampling_frequency_that_is_not_positive_and_finite_names_file_variable_and_value(tmp_path, fs):
    n = 16
    signals = {"uBenchMark": np.zeros((n, 1)), "yBenchMark": np.zeros((n, 1))}
    savemat(tmp_path / "WienerHammerBenchMark.mat", {**signals, "fs": [[fs]]})
    message = rf"WienerHammerBenchMark.mat: variable 'fs' is {fs}; a sampling frequency must be a positive finite"
    with pytest.raises(ValueError, match=message):
        BENCHMARKS["wiener_hammerstein"].load(tmp_path)


def test_a_sampling_time_that_is_not_positive_and_finite_names_file_variable_and_value(tmp_path):
    n = 16
    tanks = {"uEst": np.zeros((n, 1)), "yEst": np.zeros((n, 1)), "uVal": np.zeros((n, 1)), "yVal": np.zeros((n, 1))}
    for ts in (0.0, math.nan):
        savemat(tmp_path / "dataBenchmark.mat", {**tanks, "Ts": [[ts]]})
        with pytest.raises(ValueError, match=rf"dataBenchmark.mat: variable 'Ts' is {ts}; a sampling time must be"):
            BENCHMARKS["cascaded_tanks"].load(tmp_path)
    t = np.zeros((n, 1))  # every sample at time 0
    savemat(tmp_path / "DATA_EMPS.mat", {"qm": np.zeros((n, 1)), "vir": np.zeros((n, 1)), "t": t})
    with pytest.raises(
        ValueError, match=r"DATA_EMPS.mat: variable 't' steps by t\[1\] - t\[0\] = 0.0; a sampling time"
    ):
        BENCHMARKS["emps"].load(tmp_path)
    for sampling_time in (math.nan, math.inf):  # a record made in code is held to the same rule
        with pytest.raises(
            ValueError, match=rf"record 'made': sampling_time must be a positive finite .* {sampling_time}"
        ):
            Record(np.zeros((n, 1)), np.zeros((n, 1)), sampling_time, "made")


def test_missing_files_say_where_to_put_them_or_which_simulator_runs(tmp_path, caplog):
    with pytest.raises(
        FileNotFoundError, match=r"emps: missing DATA_EMPS.mat, DATA_EMPS_PULSES.mat; put .* in .*sysid/emps"
    ):
        SysIdDataModule("emps", source="file", data_dir=tmp_path)
    with caplog.at_level(logging.WARNING):
        module = SysIdDataModule("silverbox", source="auto", data_dir=tmp_path)
    assert not module.from_files
    assert "silverbox: official files not found, using the surrogate instead" in caplog.text
    assert "SNLS80mV.mat" in caplog.text


def test_bad_options_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown benchmark 'f16'; choose one of wiener_hammerstein, silverbox"):
        SysIdDataModule("f16", data_dir=tmp_path)
    with pytest.raises(
        ValueError, match="unknown test_record 'arrow' for silverbox; choose one of multisine, arrow_full"
    ):
        SysIdDataModule("silverbox", test_record="arrow", data_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown source 'web'; choose one of auto, file, simulate"):
        SysIdDataModule("emps", source="web", data_dir=tmp_path)
    with pytest.raises(ValueError, match="window 20 must exceed the warm-up of 50 samples"):
        SysIdDataModule("bouc_wen", window=20, record_length=400, source="simulate", data_dir=tmp_path).setup()
    with pytest.raises(ValueError, match="window 500 is longer than the 320-sample training part"):
        SysIdDataModule("emps", window=500, record_length=400, source="simulate", data_dir=tmp_path).setup()


def test_simulated_data_module_windows_normalises_and_caches(tmp_path):
    def make():
        module = SysIdDataModule(
            "emps", window=40, record_length=500, source="simulate", batch_size=8, steps_per_epoch=2, data_dir=tmp_path
        )
        module.setup()
        return module

    module = make()
    assert len(list((tmp_path / "sysid" / "emps").glob("simulated-*.npz"))) == 1
    train = module.datasets["train"]
    assert len(train) == 400 - 40 + 1  # every 40-sample window of the first 80% of 500
    whole = train.targets
    assert whole.mean().abs() < 1e-5 and (whole.std(unbiased=False) - 1).abs() < 1e-4
    batch = next(iter(module.train_dataloader()))
    assert batch["inputs"].shape == (8, 40, 1) and batch["targets"].shape == (8, 40, 1)
    assert module.datasets["val"][0]["inputs"].shape == (100, 1) and module.datasets["test"][0]["inputs"].shape == (
        500,
        1,
    )
    again = make()
    assert torch.equal(again.datasets["test"][0]["targets"], module.datasets["test"][0]["targets"])


def test_metrics_report_rmse_in_benchmark_units_and_fit_index():
    module = SysIdDataModule("cascaded_tanks", window=32, record_length=300, source="simulate", data_dir="unused")
    spec = module.spec
    targets = torch.randn(200, 1, generator=torch.Generator().manual_seed(0))
    predictions = targets + 0.1 * torch.randn(200, 1, generator=torch.Generator().manual_seed(1))
    metrics = build_metrics(spec)
    metrics.update(predictions, targets)
    values = {k: v.item() for k, v in metrics.compute().items()}
    error = (predictions - targets) * spec.target_scale[0]
    assert values["rmse"] == pytest.approx(error.pow(2).mean().sqrt().item(), rel=1e-5)
    nrmse = (predictions - targets).pow(2).mean().sqrt() / targets.std(unbiased=False)
    assert values["nrmse"] == pytest.approx(nrmse.item(), rel=1e-5)
    fit = 100 * (1 - (predictions - targets).norm() / (targets - targets.mean()).norm())
    assert values["fit_index"] == pytest.approx(fit.item(), rel=1e-5)


def test_sysid_trains_end_to_end_in_simulation_mode(train):
    summary = train("data=emps", "trainer.max_steps=20")
    assert summary["status"] == "completed"
    assert all(math.isfinite(v) for v in summary["final"].values())
    assert {"test/rmse", "test/nrmse", "test/fit_index"} <= set(summary["final"])


def test_bouc_wen_tests_on_the_official_signals_and_trains_on_the_simulator(tmp_path):
    directory = tmp_path / "sysid" / "bouc_wen"
    directory.mkdir(parents=True)
    for test, n in (("multisine", 300), ("sinesweep", 200)):
        savemat(directory / f"uval_{test}.mat", {f"uval_{test}": np.ones((n, 1))})
        savemat(directory / f"yval_{test}.mat", {f"yval_{test}": np.full((n, 1), 2e-4)})
    module = SysIdDataModule("bouc_wen", window=64, record_length=500, test_record="sinesweep", data_dir=tmp_path)
    module.setup()
    assert module.from_files and module.datasets["test"][0]["targets"].shape == (200, 1)
    spec = module.spec
    in_units = module.datasets["test"][0]["targets"] * spec.target_scale[0] + spec.target_offset[0]
    torch.testing.assert_close(in_units, torch.full((200, 1), 0.2))  # m -> mm
    assert len(module.datasets["train"]) == 400 - 64 + 1  # the simulated record, capped at 500


def test_task_spec_refuses_inconsistent_target_scaling():
    from ssm_lab.data.spec import TaskSpec

    base = dict(name="x", input_kind="continuous", output_kind="step_regression", d_input=1, d_output=1)
    with pytest.raises(ValueError, match=r"need one value per output \(1\), got 2 and 1"):
        TaskSpec(**base, target_scale=(1.0, 2.0), target_offset=(0.0,))
    with pytest.raises(ValueError, match=r"target_scale must be positive, got \(0.0,\)"):
        TaskSpec(**base, target_scale=(0.0,), target_offset=(0.0,))
