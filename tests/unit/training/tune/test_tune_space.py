"""The search space of `atelier tune`: validation that names the bad parameter, and the mapping
of a trial's values onto the training config (a real in-memory Optuna study samples them)."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest

from atelier.runtime.errors import ConfigError
from atelier.tools.paths import project_file
from atelier.training.config import TrainConfig, load_config
from atelier.training.tune.report import write_best_config
from atelier.training.tune.space import DEFAULT_SPACE, apply_params, check_space, load_space
from atelier.training.tune.study import make_pruner, make_sampler
from atelier.training.tune.worker import trial_config

pytestmark = pytest.mark.unit

CONFIGS = project_file("training-job/configs")
FULL = load_config(CONFIGS / "fashion-mnist.yaml")


def space_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


def refused(tmp_path: Path, text: str, base: TrainConfig = FULL) -> str:
    path = space_file(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        check_space(load_space(path), base, str(path))
    return err.value.one_line()


def test_the_default_space_covers_the_searched_keys_and_fits_the_shipped_configs() -> None:
    space = load_space(None)
    assert set(space.params) == {
        "optim.lr",
        "train.batch_size",
        "optim.name",
        "optim.momentum",
        "optim.weight_decay",
        "model.dropout",
        "augment.probability",
        "augment.max_rotation_degrees",
        "model.arch",
        "train.epochs",
    }
    assert space.params["optim.lr"].log  # type: ignore[union-attr]
    assert space.params["optim.momentum"].when == {"optim.name": "sgd"}
    assert (space.sampler.name, space.pruner.name) == ("tpe", "median")
    for name in ("fashion-mnist.yaml", "compact.yaml"):
        check_space(space, load_config(CONFIGS / name), str(DEFAULT_SPACE))


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (
            "params:\n  optim.lr: {type: float, low: 0.001, high: 0.1}\nsampler: {nme: tpe}\n",
            "sampler.nme: unknown key",
        ),
        (
            "params:\n  optim.lr: {type: float, low: fast, high: 0.1}\n",
            "params.optim.lr.float.low: Input should be a valid number",
        ),
        ("params:\n  optim.lr: {type: uniform, low: 0.001, high: 0.1}\n", "params.optim.lr"),
        ("params:\n  optim.lr: {type: float, low: 0.1, high: 0.001}\n", "low 0.1 is above high"),
        (
            "params:\n  optim.lr: {type: float, low: 0, high: 0.1, log: true}\n",
            "a log range needs low > 0",
        ),
        (
            "params:\n  model.arch: {type: categorical, choices: [compact, compact]}\n",
            "choices must be unique",
        ),
        ("params: {}\n", "params: Dictionary should have at least 1 item"),
        (
            "sampler: {name: grid}\nparams:\n  optim.lr: {type: float, low: 0.001, high: 0.1}\n",
            "sampler.name",
        ),
    ],
)
def test_a_malformed_space_file_names_the_key(tmp_path: Path, text: str, names: str) -> None:
    path = space_file(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_space(path)
    assert str(path) in err.value.message and names in err.value.message


@pytest.mark.parametrize(
    ("param", "names"),
    [
        (
            "optim.lrate: {type: float, low: 0.001, high: 0.1}",
            "params.optim.lrate: optim.lrate is not a training config key",
        ),
        ("optim: {type: float, low: 0.001, high: 0.1}", "params.optim: is a section"),
        (
            "data.train_limit: {type: int, low: 100, high: 200}",
            "params.data.train_limit: not searchable",
        ),
        ("train.threads: {type: int, low: 1, high: 2}", "params.train.threads: not searchable"),
        (
            "train.epochs: {type: float, low: 1, high: 5}",
            "params.train.epochs: type float does not fit the key's type (int)",
        ),
        ("model.arch: {type: int, low: 1, high: 2}", "params.model.arch: type int does not fit"),
        ("data.channels: {type: int, low: 1, high: 3}", "params.data.channels"),
        (
            "model.arch: {type: categorical, choices: [compact, huge]}",
            "params.model.arch: value 'huge' is refused: model.arch: Input should be",
        ),
        (
            "model.dropout: {type: float, low: 0.0, high: 1.5}",
            "params.model.dropout: value 1.5 is refused: model.dropout: Input should be less",
        ),
        (
            "train.batch_size: {type: categorical, choices: [64, big]}",
            "params.train.batch_size: value 'big' is refused",
        ),
        (
            "optim.momentum: {type: float, low: 0.8, high: 0.9, when: {optim.name: sgd}}",
            "params.optim.momentum: when.optim.name: not a categorical parameter listed before",
        ),
    ],
)
def test_a_space_the_training_config_cannot_take_names_the_parameter(
    tmp_path: Path, param: str, names: str
) -> None:
    line = refused(tmp_path, f"params:\n  {param}\n")
    assert names in line, line


def test_when_must_name_one_of_the_choices(tmp_path: Path) -> None:
    line = refused(
        tmp_path,
        "params:\n  optim.name: {type: categorical, choices: [adam, sgd]}\n"
        "  optim.momentum: {type: float, low: 0.8, high: 0.9, when: {optim.name: rmsprop}}\n",
    )
    assert "when.optim.name: 'rmsprop' is not one of its choices" in line


def test_augmentation_parameters_need_augmentation_enabled(tmp_path: Path) -> None:
    smoke = load_config(CONFIGS / "smoke.yaml")
    assert not smoke.augment.enabled
    text = "params:\n  augment.probability: {type: float, low: 0.0, high: 0.8}\n"
    line = refused(tmp_path, text, smoke)
    assert "params.augment.probability: has no effect" in line and "augment.enabled" in line
    # Searching augment.enabled as well makes it meaningful.
    both = text + "  augment.enabled: {type: categorical, choices: [true, false]}\n"
    check_space(load_space(space_file(tmp_path, both)), smoke, "space")


def test_a_trial_samples_within_the_space_and_maps_onto_the_config_paths() -> None:
    space = load_space(None)
    study = optuna.create_study(
        direction="maximize", sampler=make_sampler(space, 0), pruner=make_pruner(space)
    )
    seen_sgd = seen_adam = False
    for _ in range(12):
        trial = study.ask()
        values = space.suggest(trial)
        cfg = trial_config(FULL, values, threads=3)
        assert values == trial.params
        assert cfg.optim.lr == values["optim.lr"] and 3e-4 <= cfg.optim.lr <= 3e-2
        assert cfg.train.batch_size == values["train.batch_size"]
        assert cfg.model.arch == values["model.arch"]
        assert cfg.model.dropout == values["model.dropout"]
        assert cfg.augment.probability == values["augment.probability"]
        assert cfg.train.epochs == values["train.epochs"]
        assert cfg.optim.weight_decay == values["optim.weight_decay"]
        # Momentum is sampled for SGD only; with Adam the base config's value holds.
        if values["optim.name"] == "sgd":
            seen_sgd = True
            assert cfg.optim.momentum == values["optim.momentum"]
        else:
            seen_adam = True
            assert "optim.momentum" not in values and cfg.optim.momentum == FULL.optim.momentum
        # A trial runs with its worker's threads and no gate; the rest is the base config.
        assert (cfg.train.threads, cfg.gate.min_accuracy) == (3, 0.0)
        assert cfg.data == FULL.data and cfg.serving == FULL.serving
        study.tell(trial, 0.5)
    assert seen_sgd and seen_adam


def test_workers_sample_with_different_seeds() -> None:
    space = load_space(None)
    draws = []
    for worker in (0, 1):
        study = optuna.create_study(direction="maximize", sampler=make_sampler(space, worker))
        draws.append(space.suggest(study.ask())["optim.lr"])
    assert draws[0] != draws[1]


def test_the_best_config_is_a_training_yaml_atelier_train_reads(tmp_path: Path) -> None:
    study = optuna.create_study(direction="maximize", study_name="s")
    params = {"optim.lr": 0.0042, "model.arch": "compact", "train.epochs": 3}
    dists = {
        "optim.lr": optuna.distributions.FloatDistribution(3e-4, 3e-2, log=True),
        "model.arch": optuna.distributions.CategoricalDistribution(["compact", "standard"]),
        "train.epochs": optuna.distributions.IntDistribution(2, 12),
    }
    study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=0.9))
    path = write_best_config(tmp_path, study, FULL)
    cfg = load_config(path)  # what `atelier train --config` does first
    assert cfg == apply_params(FULL, params)
    assert (cfg.optim.lr, cfg.model.arch, cfg.train.epochs) == (0.0042, "compact", 3)
    # The trial's threads and gate are not carried over.
    assert cfg.train.threads == FULL.train.threads and cfg.gate == FULL.gate
    assert path.read_text().startswith("# Written by `atelier tune`: study s, trial 0")
