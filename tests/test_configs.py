"""Every YAML of every config group composes and instantiates; every experiment preset runs at
smoke scale; bad names and values fail with errors that name them and the allowed choices."""

from pathlib import Path

import pytest
import torch
from hydra.errors import InstantiationException, MissingConfigException
from hydra.utils import instantiate

from ssm_lab.config import CONFIG_DIR
from ssm_lab.results import run_dir


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml"))


@pytest.mark.parametrize("data", _options("data"))
def test_every_data_config_builds_its_datamodule(make_config, data):
    datamodule = instantiate(make_config(f"data={data}").data)
    assert datamodule.spec.d_output > 0


@pytest.mark.parametrize("model", _options("model"))
def test_every_model_config_builds_a_model_that_maps_a5(make_config, model):
    cfg = make_config(f"model={model}")
    spec = instantiate(cfg.data).spec
    network = instantiate(cfg.model)(spec=spec)
    outputs = network(torch.randint(0, spec.vocab_size, (2, 5)))
    assert outputs.shape == (2, 5, spec.d_output)


@pytest.mark.parametrize("optim", _options("optim"))
def test_every_optim_config_builds_optimizer_and_scheduler(make_config, optim):
    cfg = make_config(f"optim={optim}")
    optimizer = instantiate(cfg.optim.optimizer)([torch.nn.Parameter(torch.zeros(3))])
    scheduler = instantiate(cfg.optim.scheduler)(optimizer)
    optimizer.step()
    scheduler.step()


@pytest.mark.parametrize("trainer", _options("trainer"))
def test_every_trainer_config_composes(make_config, trainer):
    cfg = make_config(f"trainer={trainer}")
    assert cfg.trainer._target_ == "lightning.Trainer" and cfg.trainer.max_steps > 0
    if trainer == "default":
        options = {key: value for key, value in cfg.trainer.items() if key != "cuda_graphs"}  # ssm_lab's own key
        assert instantiate(options, logger=False, enable_progress_bar=False).max_steps == cfg.trainer.max_steps


@pytest.mark.parametrize("logger", _options("logger"))
def test_every_logger_config_builds(make_config, logger, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    cfg = make_config(f"logger={logger}")
    if cfg.logger is None:
        assert logger == "none"
    else:
        assert instantiate(cfg.logger, save_dir=str(tmp_path)) is not None


@pytest.mark.parametrize("scale", _options("scale"))
def test_every_scale_sets_positive_budgets(make_config, scale):
    cfg = make_config(f"scale={scale}")
    for key in ("max_steps", "eval_every", "batch_size", "d_model", "n_layers", "num_train"):
        assert cfg.scale[key] > 0, key
    assert cfg.trainer.max_steps == cfg.scale.max_steps


def test_scales_grow(make_config):
    budgets = [make_config(f"scale={s}").scale for s in ("smoke", "small", "paper")]
    for key in ("max_steps", "d_model", "num_train"):
        assert budgets[0][key] < budgets[1][key] < budgets[2][key], key


def test_paper_scale_gives_each_model_its_learning_rate(make_config):
    """A5 protocol of Cirone et al. 2024: 1e-4 for the Transformer and RNNs, 3e-4 for S4/S5/Mamba/LCDE;
    the optimizer (and the recurrence parameters' own lr) follow, other scales keep one lr for all."""
    transformer, s4 = (make_config("scale=paper", f"model={m}") for m in ("transformer", "s4"))
    assert transformer.optim.optimizer.lr == transformer.optim.recurrence_lr == pytest.approx(1e-4)
    assert s4.optim.optimizer.lr == s4.optim.recurrence_lr == pytest.approx(3e-4)
    assert make_config("scale=paper", "experiment=a5_lru").optim.optimizer.lr == pytest.approx(3e-4)  # preset's model
    assert {make_config("scale=small", f"model={m}").optim.optimizer.lr for m in ("transformer", "s4")} == {1e-3}
    table = make_config("scale=paper").scale.lr_per_model
    assert set(table) == set(_options("model")), "every model needs its paper lr in configs/scale/paper.yaml"


@pytest.mark.parametrize("experiment", _options("experiment"))
def test_every_experiment_preset_runs_at_smoke_scale(make_config, train, experiment):
    summary = train(f"experiment={experiment}")
    assert summary["status"] == "completed"
    assert run_dir(make_config(f"experiment={experiment}")).parts[-2] == make_config(f"experiment={experiment}").name


@pytest.mark.parametrize(("group", "bad"), [("model", "lstmm"), ("data", "A6"), ("optim", "sgdd")])
def test_unknown_choice_lists_the_available_ones(make_config, group, bad):
    with pytest.raises(MissingConfigException) as error:
        make_config(f"{group}={bad}")
    message = str(error.value)
    assert bad in message and f"Available options in '{group}'" in message
    for option in _options(group)[:3]:
        assert option in message


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.d_model=0", "d_model must be a positive integer, got 0"),
        ("model.n_layers=-1", "n_layers must be a positive integer, got -1"),
        ("data.seq_len=0", "seq_len must be a positive integer, got 0"),
        ("data.batch_size=0", "batch_size must be a positive integer, got 0"),
        ("trainer.max_steps=0", "trainer.max_steps must be a positive integer, got 0"),
        ("model=rnn model.encoder=linear", "encoder 'linear' takes continuous inputs, but dataset 'A5' gives tokens"),
        ("seed=abc", "seed must be a non-negative integer, got 'abc'"),
        ("model=ids4 model.mode=conv", "IDS4 has no mode 'conv'; choose one of scan, parallel, loop"),
        ("model=lru model.mode=parallel", "param 'lru' has no mode 'parallel'; choose one of scan, loop, conv"),
        # built inside fit by Lightning: checked at build now, so no "interrupted" run is left to resume
        ("+optim.optimizer.lrr=0.1", "unexpected keyword argument 'lrr'"),
        ("optim.optimizer.lr=-1", "Invalid learning rate: -1"),
        ("optim.recurrence_lr=-0.1", "optim.recurrence_lr must be a positive number or null, got -0.1"),
        ("model=lru model.d_model=-4", "d_model must be a positive integer, got -4"),
        ("trainer.cuda_graphs=true", "trainer.cuda_graphs=true needs a CUDA GPU"),
        ("trainer=ddp trainer.accelerator=cpu trainer.cuda_graphs=true", "trains in one process, and this run has 2"),
        (
            "trainer.cuda_graphs=true +trainer.accumulate_grad_batches=2",
            "needs trainer.accumulate_grad_batches=1, got 2",
        ),
        ("model=lcde_random_ols trainer.cuda_graphs=true", "a least-squares readout takes none"),
        ("+trainer.max_time=00:00:00:03", "trainer.max_time='00:00:00:03' stops a run between two evaluations"),
    ],
)
def test_bad_values_name_the_key_and_value(train, tmp_path, override, message):
    # hydra wraps a constructor's ValueError in an InstantiationException that adds the config key
    with pytest.raises((ValueError, TypeError, InstantiationException), match=message):
        train(*override.split())
    runs = tmp_path / "results" / "runs"
    assert not runs.exists() or not any(path.is_dir() for path in runs.glob("*/*"))  # no run folder is left


def test_a_config_that_cannot_be_built_keeps_a_run_folder_it_did_not_create(make_config, train):
    """A folder from an earlier launch (here: a file in it) stays, whatever this launch fails on."""
    overrides = ("model=ids4", "model.mode=conv")
    folder = run_dir(make_config(*overrides))
    folder.mkdir(parents=True)
    (folder / "notes.txt").write_text("kept")
    with pytest.raises((ValueError, InstantiationException), match="IDS4 has no mode 'conv'"):
        train(*overrides)
    assert (folder / "notes.txt").read_text() == "kept"


def test_non_finite_loss_fails_the_run_with_the_reason(make_config, train):
    summary = train("optim.optimizer.lr=1e30", "optim.recurrence_lr=1e30", "trainer.gradient_clip_val=null")
    assert summary["status"] == "failed"
    assert "training loss is nan" in summary["reason"] or "training loss is inf" in summary["reason"]
    on_disk = (
        run_dir(make_config("optim.optimizer.lr=1e30", "optim.recurrence_lr=1e30", "trainer.gradient_clip_val=null"))
        / "summary.json"
    ).read_text()
    assert '"status": "failed"' in on_disk
    # a relaunch does not train it again to the same failure (a figure counts it as finished too)
    again = train("optim.optimizer.lr=1e30", "optim.recurrence_lr=1e30", "trainer.gradient_clip_val=null")
    assert again == summary


def test_config_dir_is_the_repository_configs():
    assert CONFIG_DIR == Path(__file__).resolve().parents[1] / "configs"


def test_an_auto_data_source_is_recorded_and_identified_as_the_source_it_picks(tmp_path):
    """source=auto is resolved when the config is finalised: a run on generated data and one on the benchmark's
    files, once they are in data_dir, are two runs, and each config records which it read."""
    from ssm_lab.config import compose_config
    from ssm_lab.data.listops import TSV_FILES
    from ssm_lab.data.word_problems import word_problem_file
    from ssm_lab.results import run_dir

    data_dir = tmp_path / "data"
    cases = {
        ("data=listops", "scale=paper"): ("generate", "tsv", [data_dir / "listops" / n for n in TSV_FILES.values()]),
        ("data=A5", "scale=paper"): ("generate", "file", [word_problem_file(data_dir, "A5", 20)]),
        ("data=silverbox", "scale=paper"): ("simulate", "file", [data_dir / "sysid" / "silverbox" / "SNLS80mV.mat"]),
    }
    for overrides, (before, after, files) in cases.items():
        first = compose_config([*overrides, f"data_dir={data_dir}"])
        for file in files:
            file.parent.mkdir(parents=True, exist_ok=True)
            file.touch()
        second = compose_config([*overrides, f"data_dir={data_dir}"])
        assert (first.data.source, second.data.source) == (before, after), overrides
        assert run_dir(first) != run_dir(second)
