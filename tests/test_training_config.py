"""vit_training.config: YAML values onto dataclass schemas, overrides, one-line errors, mixed precision."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import MISSING

import vit_training.config as config_module
from vit_training import (
    ConfigError,
    OptimizerConfig,
    ScheduleConfig,
    TrainConfig,
    config_to_dict,
    load_config,
    resolve_mixed_precision,
    save_config,
)


@dataclass
class DataSection:
    root: str = MISSING
    class_weights: dict[str, float] = field(default_factory=dict)
    sizes: list[int] = field(default_factory=lambda: [224, 224])


@dataclass
class Experiment:
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataSection = field(default_factory=DataSection)


def write(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_error(tmp_path: Path, text: str, overrides: tuple[str, ...] = ()) -> str:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_config(Experiment, path, overrides)
    message = str(caught.value)
    assert "\n" not in message, "errors are one line"
    return message


FULL = """\
optim:
  lr: 5.0e-4
  weight_decay: 0.05
  betas: [0.9, 0.95]
  layer_decay: 0.75
  eps: 1e-6
schedule:
  name: step
  warmup_epochs: 1.5
  milestone_epochs: [30, 60]
  gamma: 0.2
train:
  epochs: 90
  mixed_precision: no
  clip_grad_norm: 1.0
  ema_decay: 0.9998
  output_dir: runs/fmnist
data:
  root: /data/fmnist
  class_weights: {shirt: 2.0}
"""


def test_yaml_values_become_typed_dataclasses(tmp_path: Path) -> None:
    config = load_config(Experiment, write(tmp_path, FULL))
    assert isinstance(config, Experiment) and isinstance(config.train, TrainConfig)
    assert config.optim.lr == 5e-4 and config.optim.betas == (0.9, 0.95)
    assert config.optim.layer_decay == 0.75 and config.optim.eps == 1e-6
    assert config.schedule.milestone_epochs == [30.0, 60.0]
    # YAML 1.1 would read `no` as False; the loader reads YAML 1.2 scalars.
    assert config.train.mixed_precision == "no"
    assert config.train.epochs == 90 and isinstance(config.train.epochs, int)
    assert config.data.class_weights == {"shirt": 2.0}
    assert config.train.batch_size == TrainConfig().batch_size  # untouched keys keep their defaults


def test_round_trip_load_save_load(tmp_path: Path) -> None:
    first = load_config(Experiment, write(tmp_path, FULL))
    saved = save_config(first, tmp_path / "out" / "config.yaml")
    assert load_config(Experiment, saved) == first
    # The saved file reads the same with plain yaml.safe_load (YAML 1.1): "no" is quoted.
    assert yaml.safe_load(saved.read_text())["train"]["mixed_precision"] == "no"
    assert [p.name for p in saved.parent.iterdir()] == ["config.yaml"], "no temporary file left behind"


def test_save_config_replaces_an_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("old: content\n")
    save_config(Experiment(data=DataSection(root="x")), path)
    assert load_config(Experiment, path).data.root == "x"


def test_overrides_reach_nested_keys_with_types(tmp_path: Path) -> None:
    overrides = [
        "train.epochs=3",
        "optim.betas=[0.9,0.95]",
        "optim.lr=1e-4",
        "train.clip_grad_norm=null",
        "train.mixed_precision=no",
        "data.class_weights.bag=0.5",
        "train.output_dir=runs/a=b",
    ]
    config = load_config(Experiment, write(tmp_path, FULL), overrides)
    assert config.train.epochs == 3 and type(config.train.epochs) is int
    assert config.optim.betas == (0.9, 0.95)
    assert config.optim.lr == 1e-4
    assert config.train.clip_grad_norm is None
    assert config.train.mixed_precision == "no"
    assert config.data.class_weights == {"shirt": 2.0, "bag": 0.5}
    assert config.train.output_dir == "runs/a=b"  # only the first "=" splits


def test_defaults_only_and_overrides_without_a_file() -> None:
    config = load_config(Experiment, None, ["data.root=/x"])
    assert config == Experiment(data=DataSection(root="/x"))


def test_empty_file_means_defaults(tmp_path: Path) -> None:
    config = load_config(Experiment, write(tmp_path, "# nothing set\n"), ["data.root=/x"])
    assert config.train == TrainConfig()


def test_unknown_key_lists_valid_names_and_suggests_the_close_one(tmp_path: Path) -> None:
    message = load_error(tmp_path, "optim:\n  lrr: 0.1\n")
    assert "run.yaml" in message and "'optim.lrr'" in message
    for name in ("lr", "weight_decay", "betas", "eps", "layer_decay"):
        assert name in message
    assert "did you mean 'lr'" in message


def test_unknown_top_level_key_and_unknown_override(tmp_path: Path) -> None:
    message = load_error(tmp_path, "trian:\n  epochs: 3\n")
    assert "'trian'" in message and "did you mean 'train'" in message and "optim, schedule" in message
    message = load_error(tmp_path, "data: {root: x}\n", ("train.epoch=3",))
    assert "override 'train.epoch=3'" in message and "'train.epoch'" in message
    assert "did you mean 'epochs'" in message


def test_wrong_type_names_key_value_and_type(tmp_path: Path) -> None:
    message = load_error(tmp_path, "optim:\n  lr: fast\n")
    assert "run.yaml" in message and "optim.lr" in message and "'fast'" in message and "float" in message
    message = load_error(tmp_path, "data: {root: x}\n", ("train.epochs=2.5",))
    assert "train.epochs" in message and "2.5" in message and "int" in message
    message = load_error(tmp_path, "optim:\n  betas: [0.9]\n")
    assert "optim.betas" in message and "tuple[float, float]" in message
    message = load_error(tmp_path, "data:\n  root: x\n  sizes: [32, big]\n")
    assert "data.sizes[1]" in message and "'big'" in message and "int" in message
    message = load_error(tmp_path, "train: 3\n")
    assert "train" in message and "TrainConfig" in message


def test_bad_choice_lists_the_choices(tmp_path: Path) -> None:
    message = load_error(tmp_path, "train:\n  mixed_precision: bf17\n")
    assert "train.mixed_precision" in message and "'bf17'" in message
    assert "auto, no, bf16, fp16" in message
    message = load_error(tmp_path, "data: {root: x}\n", ("schedule.name=linear",))
    assert "schedule.name" in message and "cosine, step, poly, constant" in message


def test_range_checks_name_the_full_key(tmp_path: Path) -> None:
    message = load_error(tmp_path, "data: {root: x}\ntrain:\n  epochs: 0\n")
    assert "run.yaml" in message and "train.epochs=0 must be >= 1" in message
    message = load_error(tmp_path, "data: {root: x}\nschedule:\n  warmup_steps: 10\n  warmup_epochs: 1\n")
    assert "schedule.warmup_steps=10" in message and "not both" in message


def test_missing_mandatory_value(tmp_path: Path) -> None:
    message = load_error(tmp_path, "train:\n  epochs: 2\n")
    assert "data.root" in message and "required" in message


@pytest.mark.parametrize("text, kind", [("- a\n- b\n", "list"), ("just a string\n", "str")])
def test_file_that_is_not_a_mapping(tmp_path: Path, text: str, kind: str) -> None:
    message = load_error(tmp_path, text)
    assert "run.yaml" in message and "mapping" in message and kind in message


def test_python_tags_are_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    text = f"train: !!python/object/apply:os.system ['touch {marker}']\n"
    message = load_error(tmp_path, text)
    assert "run.yaml" in message and "python/object" in message
    assert not marker.exists()


def test_broken_yaml_and_missing_file(tmp_path: Path) -> None:
    message = load_error(tmp_path, "train:\n  epochs: [1, 2\n")
    assert "run.yaml" in message and "line" in message
    with pytest.raises(ConfigError, match="nope.yaml"):
        load_config(Experiment, tmp_path / "nope.yaml")


def test_malformed_override() -> None:
    with pytest.raises(ConfigError, match="not key.sub=value"):
        load_config(Experiment, None, ["train.epochs"])


def test_choices_are_checked_for_configs_built_in_python() -> None:
    with pytest.raises(ValueError, match="mixed_precision='bf17' is not one of auto, no, bf16, fp16"):
        TrainConfig(mixed_precision="bf17")


def test_config_to_dict_nested_and_flat() -> None:
    config = Experiment(data=DataSection(root="/d"))
    nested = config_to_dict(config)
    assert nested["optim"]["betas"] == [0.9, 0.999] and nested["train"]["clip_grad_norm"] is None
    flat = config_to_dict(config, flat=True)
    assert flat["train.epochs"] == 1 and flat["data.root"] == "/d"
    assert all(isinstance(value, (bool, int, float, str)) for value in flat.values())


@pytest.mark.parametrize("native, expected", [(True, "bf16"), (False, "no")])
def test_auto_mixed_precision_on_cpu(monkeypatch: pytest.MonkeyPatch, native: bool, expected: str) -> None:
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(config_module, "cpu_has_native_bf16", lambda: native)
    assert resolve_mixed_precision("auto", "cpu") == expected
    assert resolve_mixed_precision("auto", torch.device("cpu")) == expected


@pytest.mark.parametrize("supported, expected", [(True, "bf16"), (False, "no")])
def test_auto_mixed_precision_on_cuda(monkeypatch: pytest.MonkeyPatch, supported: bool, expected: str) -> None:
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: supported)
    assert resolve_mixed_precision("auto", "cuda") == expected


def test_explicit_mixed_precision_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ACCELERATE_MIXED_PRECISION", raising=False)
    monkeypatch.setattr(config_module, "cpu_has_native_bf16", lambda: False)
    for value in ("no", "bf16", "fp16"):
        assert resolve_mixed_precision(value, "cpu") == value
    assert resolve_mixed_precision("auto", "mps") == "no"
    with pytest.raises(ValueError, match="auto, no, bf16, fp16"):
        resolve_mixed_precision("half", "cpu")


@pytest.mark.parametrize("launcher, native, expected", [("bf16", False, "bf16"), ("fp16", True, "fp16"),
                                                        ("no", True, "bf16"), ("no", False, "no")])
def test_auto_mixed_precision_follows_the_launcher(monkeypatch: pytest.MonkeyPatch, launcher: str, native: bool,
                                                   expected: str) -> None:
    # `accelerate launch --mixed_precision X` exports ACCELERATE_MIXED_PRECISION=X to every process; it exports
    # "no" also when nothing was asked, so "no" leaves the choice to the native-bf16 rule.
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", launcher)
    monkeypatch.setattr(config_module, "cpu_has_native_bf16", lambda: native)
    assert resolve_mixed_precision("auto", "cpu") == expected
    for explicit in ("no", "bf16", "fp16"):  # the config wins
        assert resolve_mixed_precision(explicit, "cpu") == explicit


def test_budget_fields_are_range_checked() -> None:
    for key, value in [("max_steps", 0), ("num_evals", 0), ("time_budget_min", 0), ("budget_safety", 1.5),
                       ("eval_every_steps", -1), ("budget_probe_steps", 0)]:
        with pytest.raises(ConfigError, match=f"train.{key}"):
            load_config(Experiment, None, ["data.root=/d", f"train.{key}={value}"])
    train = load_config(Experiment, None, ["data.root=/d", "train.time_budget_min=15", "train.num_evals=8",
                                           "train.log_with=[tensorboard]"]).train
    assert (train.time_budget_min, train.num_evals, train.log_with, train.max_steps) == (15.0, 8, ["tensorboard"], None)
