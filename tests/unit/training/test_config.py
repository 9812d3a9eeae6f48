"""Tests for atelier.training.config: YAML loading, validation and --set overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from atelier.runtime.errors import ConfigError
from atelier.training.config import TrainConfig, dump_config, load_config

pytestmark = pytest.mark.unit

CONFIG_DIR = Path(__file__).resolve().parents[3] / "training-job" / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))


def write(tmp_path: Path, text: str, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_the_shipped_configs_are_there() -> None:
    assert {p.name for p in CONFIGS} >= {"fashion-mnist.yaml", "compact.yaml", "smoke.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_shipped_config_validates(path: Path, tmp_path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, TrainConfig)
    # dump_config writes a file that loads back to the same config.
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg


def test_shipped_configs_carry_their_values() -> None:
    assert load_config(CONFIG_DIR / "compact.yaml").model.arch == "compact"
    smoke = load_config(CONFIG_DIR / "smoke.yaml")
    assert smoke.data.train_limit == 12000
    assert smoke.augment.enabled is False
    assert load_config(CONFIG_DIR / "fashion-mnist.yaml").model.arch == "standard"


def test_defaults_without_a_file() -> None:
    cfg = load_config(None)
    assert cfg == TrainConfig()
    assert cfg.data.source == "fashion-mnist"


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == TrainConfig()


def test_unknown_key_in_file(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  epoch: 3\n")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert "train.epoch" in info.value.message
    assert "unknown key" in info.value.message
    assert str(path) in info.value.message


def test_unknown_key_in_override() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.epoch=3"])
    assert "train.epoch" in info.value.message
    assert "unknown key" in info.value.message


def test_wrong_type_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, "train:\n  epochs: many\n"))
    assert "train.epochs" in info.value.message
    assert "'many'" in info.value.message


def test_out_of_range_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"augment\.probability"):
        load_config(None, ["augment.probability=1.5"])


def test_cross_field_check_names_the_section() -> None:
    with pytest.raises(ConfigError, match="serving") as info:
        load_config(None, ["serving.min_workers=4", "serving.max_workers=2"])
    assert "max_workers must be >= min_workers" in info.value.message


def test_overrides_apply_with_types() -> None:
    cfg = load_config(None, ["train.epochs=3", "optim.name=sgd", "data.train_limit=500"])
    assert cfg.train.epochs == 3
    assert type(cfg.train.epochs) is int
    assert cfg.optim.name == "sgd"
    assert cfg.data.train_limit == 500
    assert type(cfg.data.train_limit) is int


def test_overrides_apply_on_top_of_a_file() -> None:
    cfg = load_config(CONFIG_DIR / "smoke.yaml", ["train.epochs=5", "augment.enabled=true"])
    assert cfg.train.epochs == 5
    assert cfg.augment.enabled is True
    # Untouched keys keep the file's values.
    assert cfg.data.train_limit == 12000
    assert cfg.train.batch_size == 128


def test_override_later_wins() -> None:
    assert load_config(None, ["train.epochs=3", "train.epochs=4"]).train.epochs == 4


def test_empty_override_value_is_none() -> None:
    cfg = load_config(CONFIG_DIR / "smoke.yaml", ["data.train_limit="])
    assert cfg.data.train_limit is None


@pytest.mark.parametrize(
    ("item", "names"),
    [
        ("noequals", "noequals"),
        ("model.arch=resnet", "model.arch"),
        ("train.epochs=[1", "train.epochs"),
        ("=3", "=3"),
    ],
)
def test_bad_override_names_the_key(item: str, names: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, [item])
    assert names in info.value.message


def test_override_below_a_value_from_a_file() -> None:
    # smoke.yaml sets train.epochs, so it is a value, not a section.
    with pytest.raises(ConfigError) as info:
        load_config(CONFIG_DIR / "smoke.yaml", ["train.epochs.x=1"])
    assert "train.epochs" in info.value.message
    assert "not a section" in info.value.message


def test_override_below_a_default_value() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(None, ["train.epochs.x=1"])
    assert "train.epochs" in info.value.message


def test_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match="does not exist") as info:
        load_config(missing)
    assert str(missing) in info.value.message


@pytest.mark.parametrize("text", ["- a\n- b\n", "just a string\n", "42\n"])
def test_top_level_must_be_a_mapping(tmp_path: Path, text: str) -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_config(write(tmp_path, text))


def test_invalid_yaml(tmp_path: Path) -> None:
    path = write(tmp_path, "train: {epochs: 3\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        load_config(path)
    assert str(path) in info.value.message
