"""Typed configs: dataclass schemas, YAML files of values, `key.sub=value` overrides.

A task declares one dataclass schema that nests the generic sections below::

    @dataclass
    class ClassificationConfig:
        optim: OptimizerConfig = field(default_factory=OptimizerConfig)
        schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
        train: TrainConfig = field(default_factory=TrainConfig)
        ...

    config = load_config(ClassificationConfig, "configs/classification/fmnist.yaml", ["train.epochs=3"])
    config.train.epochs  # 3, an int

The YAML file holds values only (no `type:`, `_target_` or `_base_`); OmegaConf checks them
against the schema, and every mistake is one `ConfigError` line that names the file, the
full dotted key and what would have been valid. Fields typed `Literal[...]` are validated by
OmegaConf (>= 2.4) at load time and again by `check_choices` in `__post_init__`, so a config
built directly in Python is checked the same way. Range checks live in `__post_init__`; their
messages start with the field name so the loader can prefix the dotted path.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import tempfile
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import omegaconf
import torch
import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
)

from vit_backbone.attention import cpu_has_native_bf16

T = TypeVar("T")

MixedPrecision = Literal["auto", "no", "bf16", "fp16"]
ScheduleName = Literal["cosine", "step", "poly", "constant"]
OptimizerName = Literal["adamw", "sgd"]
NonFiniteLoss = Literal["stop", "skip"]


# OmegaConf 2.3 rejects Literal annotations outright; fail at import with the fix, not deep in a merge.
if tuple(int(part) for part in re.findall(r"\d+", omegaconf.__version__)[:2]) < (2, 4):
    raise ImportError(f"vit_training needs omegaconf>=2.4 (Literal config fields); found {omegaconf.__version__}")


class ConfigError(ValueError):
    """A config that cannot be loaded: one line naming the file, the dotted key and what is valid."""

    def __init__(self, message: str) -> None:
        # One line, always: these messages end up in logs and CLI output next to other lines.
        super().__init__(" ".join(message.split()))


# --------------------------------------------------------------------------- validation helpers
def check_choices(config: Any) -> None:
    """Raise ValueError if a `Literal[...]` field of dataclass `config` holds a value outside its choices.

    Call it from `__post_init__` so configs built in Python are checked like loaded ones.
    """
    hints = typing.get_type_hints(type(config))
    for item in dataclasses.fields(config):
        choices = _literal_choices(hints[item.name])
        value = getattr(config, item.name)
        if choices is not None and value not in choices and value is not None:
            raise ValueError(f"{item.name}={value!r} is not one of {', '.join(map(str, choices))}")


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


# --------------------------------------------------------------------------- generic sections
@dataclass
class OptimizerConfig:
    """The optimizer (AdamW or SGD) and how its learning rate is spread over the model.

    Args:
        name: ``"adamw"`` (ViT/DETR recipes) or ``"sgd"`` with momentum (TransUNet's recipe).
        lr: peak learning rate (before per-group scales and the schedule).
        weight_decay: decoupled weight decay; never applied to biases, norms, LayerScale gains,
            position embeddings or tokens (see `optim.param_groups`).
        betas: AdamW's (beta1, beta2).
        eps: AdamW's epsilon.
        momentum: SGD's momentum (ignored by AdamW).
        nesterov: SGD with Nesterov momentum (ignored by AdamW).
        layer_decay: layer-wise lr decay for fine-tuning a ViT (BEiT/MAE recipe, e.g. 0.65-0.75):
            block i gets lr * layer_decay ** (depth - i); None turns it off.
        backbone_lr_scale: multiplies the lr of every backbone parameter except its classifier
            `head` (DETR trains its backbone at 0.1x).
    """

    name: OptimizerName = "adamw"
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    momentum: float = 0.9
    nesterov: bool = False
    layer_decay: float | None = None
    backbone_lr_scale: float = 1.0

    def __post_init__(self) -> None:
        check_choices(self)
        _check(self.lr > 0, f"lr={self.lr} must be > 0")
        _check(0 <= self.momentum < 1, f"momentum={self.momentum} must lie in [0, 1)")
        _check(not self.nesterov or self.momentum > 0, "nesterov=true needs momentum > 0")
        _check(self.weight_decay >= 0, f"weight_decay={self.weight_decay} must be >= 0")
        _check(all(0 <= beta < 1 for beta in self.betas), f"betas={list(self.betas)} must lie in [0, 1)")
        _check(self.eps > 0, f"eps={self.eps} must be > 0")
        _check(
            self.layer_decay is None or 0 < self.layer_decay <= 1,
            f"layer_decay={self.layer_decay} must lie in (0, 1] (or be null to turn it off)",
        )
        _check(self.backbone_lr_scale >= 0, f"backbone_lr_scale={self.backbone_lr_scale} must be >= 0")


@dataclass
class ScheduleConfig:
    """Learning-rate schedule, counted in optimizer steps (one per `grad_accum_steps` batches).

    Args:
        name: ``"cosine"`` (to `min_lr_ratio` at the last step), ``"step"`` (times `gamma` at each
            milestone), ``"poly"`` (``(1 - progress) ** power``, TransUNet's) or ``"constant"``; each
            after the linear warmup.
        warmup_steps: linear warmup length in optimizer steps.
        warmup_epochs: the same in epochs (converted with the optimizer steps per epoch); set one
            of the two, not both.
        min_lr_ratio: final lr of the cosine as a fraction of the peak.
        milestone_epochs: epochs at which the "step" schedule multiplies the lr by `gamma`.
        milestone_steps: the same in optimizer steps; set one of the two.
        gamma: the "step" schedule's factor.
        power: the "poly" schedule's exponent (0.9 in TransUNet and DeepLab).
    """

    name: ScheduleName = "cosine"
    warmup_steps: int = 0
    warmup_epochs: float = 0.0
    min_lr_ratio: float = 0.0
    milestone_epochs: list[float] = field(default_factory=list)
    milestone_steps: list[int] = field(default_factory=list)
    gamma: float = 0.1
    power: float = 0.9

    def __post_init__(self) -> None:
        check_choices(self)
        _check(self.warmup_steps >= 0, f"warmup_steps={self.warmup_steps} must be >= 0")
        _check(self.warmup_epochs >= 0, f"warmup_epochs={self.warmup_epochs} must be >= 0")
        _check(
            not (self.warmup_steps and self.warmup_epochs),
            f"warmup_steps={self.warmup_steps} and warmup_epochs={self.warmup_epochs}: set one, not both",
        )
        _check(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio={self.min_lr_ratio} must lie in [0, 1]")
        _check(
            not (self.milestone_epochs and self.milestone_steps),
            "milestone_epochs and milestone_steps are both set: set one, not both",
        )
        _check(
            self.name != "step" or bool(self.milestone_epochs or self.milestone_steps),
            "name='step' needs milestone_epochs or milestone_steps",
        )
        _check(self.gamma > 0, f"gamma={self.gamma} must be > 0")
        _check(self.power > 0, f"power={self.power} must be > 0")


@dataclass
class TrainConfig:
    """The loop's settings, the same for every task.

    Args:
        epochs: passes over the training set.
        batch_size: images per process per forward pass (the global batch is
            batch_size * processes * grad_accum_steps).
        grad_accum_steps: batches accumulated per optimizer step.
        mixed_precision: ``"auto"`` (bf16 where the hardware computes it natively, else fp32;
            see `resolve_mixed_precision`), ``"no"``, ``"bf16"`` or ``"fp16"``.
        clip_grad_norm: max global gradient norm; None turns clipping off.
        ema_decay: decay of an exponential moving average of the weights; None turns it off.
        ema_warmup: grow the EMA decay from 0.18 towards `ema_decay` as (1 + t) / (10 + t) at
            update t (`vit_training.ema.ModelEma`), so early averages do not remember the random
            initial weights and late ones average over more steps. On by default: without it a
            run of fewer than about 1 / (1 - ema_decay) steps exports mostly its random initial
            weights (`fit` warns when the initial weights keep more than 1% of the average); a
            long run whose recipe was measured better with the fixed decay turns it off.
        seed: seed for every process (offset per rank by the loop where it must differ).
        num_workers: DataLoader worker processes per training process.
        save_every_steps: save a resumable checkpoint every N optimizer steps; 0 saves only
            at the end of each epoch and of the run.
        eval_every_epochs: evaluate every N epochs; 0 only at the end.
        keep_last_checkpoints: resumable checkpoints kept on disk (older ones are deleted).
        output_dir: folder for checkpoints, logs, plots and the resolved config.
        resume: a checkpoint folder to continue from, ``"latest"`` for the newest one in
            `output_dir`, or None to start fresh. A fresh start refuses a `output_dir` that
            already holds a run (`vit_training.loop.check_run_folder`).
        overwrite: start fresh in a `output_dir` that holds a run: its checkpoints, logs, curves,
            exported weights and evaluation files are removed first (files the project does not
            write are left alone). Cannot be combined with `resume`.
        nonfinite_loss: ``"stop"`` the run with a message naming the step, or ``"skip"`` the step.
        compile: wrap the model in `torch.compile`.
        log_every_steps: log training metrics every N optimizer steps.
        max_steps: stop after this many optimizer steps, mid-epoch if need be (`epochs` is then
            not used); the schedule's warm-up, milestones and horizon are planned for them.
            None: `epochs` decide the length.
        time_budget_min: wall minutes the run may take, counted from the start of `fit`
            (resumed runs count the time of the runs before them). The loop times its own
            first optimizer steps and an evaluation of a few batches, plans the optimizer steps
            and evaluations that fill `budget_safety` of the budget (`vit_training.budget`), sets
            the schedule's horizon to the plan, and stops hard when the budget runs out (then
            evaluates, saves and exports). `epochs` is not used; `max_steps` caps the plan.
        budget_safety: share of `time_budget_min` the plan fills with optimizer steps and
            evaluations; the rest is left for what the probe does not see: checkpoints, the
            final export, plots, and steps slower than the probe's.
        budget_probe_steps: timed optimizer steps of the budget probe (after
            `vit_training.budget.PROBE_WARMUP_STEPS` untimed ones).
        eval_every_steps: evaluate every N optimizer steps (0: off). Step-based evaluation
            (this or `num_evals`) replaces the evaluations at epoch ends.
        num_evals: evaluations spread evenly over the run's optimizer steps (the last one at
            its end), for runs whose length is in steps (`max_steps`, `time_budget_min`) or in
            epochs alike. None: `eval_every_steps` / `eval_every_epochs` decide.
        log_with: trackers Accelerate writes the metrics to besides metrics.jsonl and
            metrics.csv, e.g. ``[tensorboard]``, ``[wandb]``, ``[mlflow]`` (their files go
            into `output_dir`); each must be installed.
    """

    epochs: int = 1
    batch_size: int = 32
    grad_accum_steps: int = 1
    mixed_precision: MixedPrecision = "auto"
    clip_grad_norm: float | None = None
    ema_decay: float | None = None
    ema_warmup: bool = True
    seed: int = 0
    num_workers: int = 0
    save_every_steps: int = 0
    eval_every_epochs: int = 1
    keep_last_checkpoints: int = 2
    output_dir: str = "runs/default"
    resume: str | None = None
    overwrite: bool = False
    nonfinite_loss: NonFiniteLoss = "stop"
    compile: bool = False
    log_every_steps: int = 50
    max_steps: int | None = None
    time_budget_min: float | None = None
    budget_safety: float = 0.9
    budget_probe_steps: int = 20
    eval_every_steps: int = 0
    num_evals: int | None = None
    log_with: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        check_choices(self)
        for name in ("epochs", "batch_size", "grad_accum_steps", "keep_last_checkpoints", "log_every_steps",
                     "budget_probe_steps"):
            _check(getattr(self, name) >= 1, f"{name}={getattr(self, name)} must be >= 1")
        for name in ("num_workers", "save_every_steps", "eval_every_epochs", "eval_every_steps"):
            _check(getattr(self, name) >= 0, f"{name}={getattr(self, name)} must be >= 0")
        for name in ("max_steps", "num_evals"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"{name}={value} must be >= 1 (or null)")
        _check(self.time_budget_min is None or self.time_budget_min > 0,
               f"time_budget_min={self.time_budget_min} must be > 0 (or null for no budget)")
        _check(0 < self.budget_safety <= 1, f"budget_safety={self.budget_safety} must lie in (0, 1]")
        _check(
            self.clip_grad_norm is None or self.clip_grad_norm > 0,
            f"clip_grad_norm={self.clip_grad_norm} must be > 0 (or null to turn clipping off)",
        )
        _check(
            self.ema_decay is None or 0 < self.ema_decay < 1,
            f"ema_decay={self.ema_decay} must lie in (0, 1) (or be null to turn EMA off)",
        )
        _check(not (self.overwrite and self.resume is not None),
               f"overwrite=true and resume={self.resume!r}: continue the run (resume) or start it over "
               "(overwrite), not both")


# --------------------------------------------------------------------------- mixed precision
LAUNCHER_PRECISION_ENV = "ACCELERATE_MIXED_PRECISION"


def launcher_mixed_precision() -> str | None:
    """The precision `accelerate launch --mixed_precision X` (or `accelerate config`) asked for, or None.

    The launcher exports it as ``ACCELERATE_MIXED_PRECISION`` to every process it starts.
    ``"no"`` counts as not asked: the launcher exports it also when neither its flag nor its
    config file names a precision, so it cannot tell fp32 on purpose from no choice at all.
    """
    value = os.environ.get(LAUNCHER_PRECISION_ENV, "").strip().lower()
    return value if value and value != "no" else None


def resolve_mixed_precision(value: str, device_type: str | torch.device) -> str:
    """Turn a `TrainConfig.mixed_precision` value into what Accelerate takes.

    An explicit ``"no"``, ``"bf16"`` or ``"fp16"`` is kept (the config wins over the launcher).
    ``"auto"`` takes the launcher's choice when there is one (`launcher_mixed_precision`:
    ``accelerate launch --mixed_precision bf16 ...``), and otherwise gives bf16 on CUDA devices
    that support it and on CPUs that compute bf16 in hardware (AVX-512 BF16 / AMX), and fp32
    (``"no"``) everywhere else: on a CPU without native bf16 the autocast is emulated and runs
    many times slower than fp32. fp16 is never chosen by the rule, since it needs loss scaling and
    can overflow; ask for it explicitly (in the config or from the launcher).

    Args:
        value: ``"auto" | "no" | "bf16" | "fp16"``.
        device_type: ``"cpu"``, ``"cuda"``, ... or a `torch.device`.
    """
    if value in ("no", "bf16", "fp16"):
        return value
    if value != "auto":
        raise ValueError(f"mixed_precision={value!r} is not one of auto, no, bf16, fp16")
    launcher = launcher_mixed_precision()
    if launcher is not None:
        return launcher
    device_type = torch.device(device_type).type if isinstance(device_type, torch.device) else device_type
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "no"
    if device_type == "cpu":
        return "bf16" if cpu_has_native_bf16() else "no"
    return "no"


# --------------------------------------------------------------------------- YAML
_BOOL_TAG = "tag:yaml.org,2002:bool"
_FLOAT_TAG = "tag:yaml.org,2002:float"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"


class _ValuesLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` (no Python tags, no code) with YAML 1.2 scalars.

    PyYAML follows YAML 1.1, which reads ``mixed_precision: no`` as False, ``lr: 1e-3`` as a
    string and an ISO date as a date; here they are "no", 0.001 and a string, as in YAML 1.2.
    """


_ValuesLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in (_BOOL_TAG, _FLOAT_TAG, _TIMESTAMP_TAG)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_ValuesLoader.add_implicit_resolver(_BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_ValuesLoader.add_implicit_resolver(
    _FLOAT_TAG,
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.VERBOSE,
    ),
    list("-+0123456789."),
)


def _read_yaml(path: Path) -> dict[str, Any]:
    """The file's top-level mapping; an empty file is an empty mapping (all defaults)."""
    try:
        text = path.read_text()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the config file ({error.strerror or error})") from error
    try:
        values = yaml.load(text, Loader=_ValuesLoader)  # a SafeLoader: no Python tags
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"{path}: not a values-only YAML file{where}: {problem}") from error
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(
            f"{path}: the top level must be a mapping of keys to values, not a {type(values).__name__}"
        )
    return values


# --------------------------------------------------------------------------- schema lookups
def _unwrap_optional(tp: Any) -> Any:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [arg for arg in typing.get_args(tp) if arg is not type(None)]
        if len(args) == 1:
            return args[0]
    return tp


def _literal_choices(tp: Any) -> tuple[Any, ...] | None:
    tp = _unwrap_optional(tp)
    return typing.get_args(tp) if typing.get_origin(tp) is Literal else None


def _split_key(full_key: str) -> list[str | int]:
    """"optim.betas[1]" -> ["optim", "betas", 1]."""
    parts: list[str | int] = []
    for name, index in re.findall(r"([^.\[\]]+)|\[(\d+)\]", full_key):
        parts.append(int(index) if index else name)
    return parts


def _schema_type(schema: Any, full_key: str) -> Any | None:
    """The annotated type at a dotted key of a dataclass schema, or None if it cannot be told."""
    tp: Any = schema
    for part in _split_key(full_key):
        tp = _unwrap_optional(tp)
        if isinstance(part, int):
            args = typing.get_args(tp)
            if typing.get_origin(tp) is tuple and args and args[-1] is not Ellipsis:
                tp = args[part] if part < len(args) else None
            elif args:
                tp = args[0]
            else:
                return None
        elif dataclasses.is_dataclass(tp):
            tp = typing.get_type_hints(tp).get(part)
        elif typing.get_origin(tp) is dict and typing.get_args(tp):
            tp = typing.get_args(tp)[1]
        else:
            return None
        if tp is None:
            return None
    return tp


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join("null" if arg is type(None) else _type_name(arg) for arg in typing.get_args(tp))
    if isinstance(tp, type) and not typing.get_args(tp):
        return tp.__name__
    return str(tp).replace("typing.", "")


# --------------------------------------------------------------------------- error translation
def _one_line(error: BaseException) -> str:
    # OmegaConf appends "full_key: ... / object_type=..." lines; the first line is the message.
    message = getattr(error, "msg", None) or str(error)
    return str(message).splitlines()[0] if str(message) else type(error).__name__


def _sections_with_key(node: DictConfig, prefix: str, key: str) -> list[str]:
    """Dotted paths of `key` in the sections under `node` (any depth), `node` itself excluded."""
    found = []
    for name in node.keys():
        child = node._get_node(name)
        if _is_structured(child) and not child._is_none():
            path = f"{prefix}.{name}" if prefix else str(name)
            if key in child.keys():
                found.append(f"{path}.{key}")
            found += _sections_with_key(child, path, key)
    return found


def _unknown_key_error(source: str, full_key: str, node: DictConfig) -> ConfigError:
    parent, _, key = full_key.rpartition(".")
    valid = [str(name) for name in node.keys()]
    # A key that lives in another section (`model.preset` is now `model.backbone.preset`,
    # `data.num_classes` is `model.num_classes`) was most likely written for an older layout:
    # name the place it moved to, one section down first, else the one other section holding it.
    moved = [path for path in _sections_with_key(node, parent, key) if path.count(".") == full_key.count(".") + 1]
    if not moved:
        elsewhere = [path for path in _sections_with_key(node._get_root(), "", key) if path != full_key]
        moved = elsewhere if len(elsewhere) == 1 else []
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"; did you mean '{moved[0]}'?" if moved else f"; did you mean '{close[0]}'?" if close else ""
    level = f"'{parent}'" if parent else "the top level"
    return ConfigError(f"{source}: unknown key '{full_key}'; valid keys at {level}: {', '.join(valid)}{hint}")


def _value_error(source: str, schema: Any, full_key: str, value: Any, error: BaseException) -> ConfigError:
    expected = _schema_type(schema, full_key)
    if expected is None:
        return ConfigError(f"{source}: {full_key}: {_one_line(error)}")
    choices = _literal_choices(expected)
    if choices is not None:
        optional = " (or null)" if expected is not _unwrap_optional(expected) else ""
        return ConfigError(
            f"{source}: {full_key}: {value!r} is not one of {', '.join(map(str, choices))}{optional}"
        )
    if dataclasses.is_dataclass(_unwrap_optional(expected)):
        return ConfigError(
            f"{source}: {full_key}: {value!r} given where a section belongs (a mapping of "
            f"{_type_name(_unwrap_optional(expected))}'s keys)"
        )
    shown = f"{value!r}" if not isinstance(value, Mapping) else f"a mapping with keys {list(value)}"
    return ConfigError(f"{source}: {full_key}: {shown} is not a valid {_type_name(expected)}")


# --------------------------------------------------------------------------- merging
def _is_structured(node: Any) -> bool:
    return isinstance(node, DictConfig) and dataclasses.is_dataclass(OmegaConf.get_type(node))


def _merge_values(node: DictConfig, values: Mapping[Any, Any], prefix: str, source: str, schema: Any) -> None:
    """Merge a plain mapping into `node` key by key, so every error names its full dotted key.

    One `OmegaConf.merge` of the whole file would do the same work, but some of its errors
    (a scalar where a section belongs, a tuple of the wrong length) carry no key at all.
    """
    for raw_key, value in values.items():
        key = str(raw_key)
        full_key = f"{prefix}.{key}" if prefix else key
        # `key in node` is False for a mandatory value not yet set ("???"): ask keys() instead.
        present = key in node.keys()
        if _is_structured(node) and not present:
            raise _unknown_key_error(source, full_key, node)
        child = node._get_node(key) if present else None
        if isinstance(value, Mapping) and _is_structured(child) and not child._is_none():
            _merge_values(child, value, full_key, source, schema)
            continue
        try:
            node.merge_with({key: value})
        except (ConfigKeyError, ConfigAttributeError) as error:
            inner = error.full_key or full_key
            parent = error.parent_node if isinstance(error.parent_node, DictConfig) else node
            raise _unknown_key_error(source, inner, parent) from None
        except OmegaConfBaseException as error:
            # OmegaConf names a list element ("data.sizes[1]") but sometimes only the parent section.
            inner = getattr(error, "full_key", None) or ""
            if inner.startswith(full_key) and inner != full_key:
                raise _value_error(source, schema, inner, error.value, error) from None
            raise _value_error(source, schema, full_key, value, error) from None


def _parse_override(item: str) -> dict[str, Any]:
    """"optim.betas=[0.9,0.95]" -> {"optim": {"betas": [0.9, 0.95]}}.

    The value is read as YAML with the same loader as files (not `OmegaConf.from_dotlist`,
    whose YAML 1.1 reading turns ``train.mixed_precision=no`` into False).
    """
    key, sep, text = item.partition("=")
    parts = key.strip().split(".")
    if not sep or not all(parts):
        raise ConfigError(f"override {item!r} is not key.sub=value (e.g. train.epochs=3)")
    try:
        value = yaml.load(text, Loader=_ValuesLoader) if text.strip() else None
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error)
        raise ConfigError(f"override {item!r}: cannot read the value as YAML ({problem})") from None
    for part in reversed(parts):
        value = {part: value}
    return value


def _failing_section(node: DictConfig, prefix: str) -> str:
    """The dotted path of the deepest section whose dataclass refuses its values ('' for the root)."""
    for key in node.keys():
        child = node._get_node(key)
        if _is_structured(child) and not child._is_none():
            path = f"{prefix}.{key}" if prefix else str(key)
            try:
                OmegaConf.to_object(child)
            except OmegaConfBaseException:
                continue  # a missing or mistyped value, not the check we are looking for
            except (ValueError, TypeError):
                return _failing_section(child, path)
    return prefix


def _instantiate(node: DictConfig, source: str, schema: Any) -> Any:
    try:
        return OmegaConf.to_object(node)
    except MissingMandatoryValue as error:
        key = error.full_key or "?"
        raise ConfigError(f"{source}: {key} is required but not set (give it in the file or as {key}=...)") from None
    except OmegaConfBaseException as error:
        key = getattr(error, "full_key", None)
        if key:
            raise _value_error(source, schema, key, getattr(error, "value", None), error) from None
        raise ConfigError(f"{source}: {_one_line(error)}") from None
    except (ValueError, TypeError) as error:
        # A __post_init__ check: its message starts with the field name, so prefix the section path.
        section = _failing_section(node, "")
        raise ConfigError(f"{source}: {section + '.' if section else ''}{error}") from None


def load_config(schema: type[T], path: str | Path | None = None, overrides: Sequence[str] = ()) -> T:
    """Build a `schema` instance from its defaults, a YAML file of values and command-line overrides.

    Args:
        schema: the task's dataclass.
        path: a YAML file whose top level is a mapping of the schema's keys; None for defaults only.
        overrides: ``"key.sub=value"`` strings applied after the file, in order (values use
            YAML 1.2 as in files: ``3``, ``1e-4``, ``null``, ``[0.9,0.95]``, ``no`` is a string).

    Returns:
        a real `schema` instance (attribute access, declared types, `__post_init__` checks run).

    Raises:
        ConfigError: one line naming the file or override, the dotted key, and the valid keys,
            type or choices.
    """
    if not dataclasses.is_dataclass(schema):
        raise TypeError(f"schema must be a dataclass type, got {schema!r}")
    node = OmegaConf.structured(schema)
    if path is not None:
        path = Path(path)
        _merge_values(node, _read_yaml(path), "", str(path), schema)
    for item in overrides:
        _merge_values(node, _parse_override(item), "", f"override {item!r}", schema)
    source = str(path) if path is not None else "config"
    if overrides:
        source += f" with overrides {' '.join(overrides)}"
    return _instantiate(node, source, schema)


# --------------------------------------------------------------------------- saving
def _lists(value: Any) -> Any:
    """Tuples as lists, recursively: JSON, YAML and trackers all know lists."""
    if isinstance(value, dict):
        return {key: _lists(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_lists(item) for item in value]
    return value


def config_to_dict(config: Any, flat: bool = False) -> dict[str, Any]:
    """A dataclass config as plain data (dicts, lists, scalars).

    Args:
        config: a config dataclass instance (or a DictConfig).
        flat: one level of dotted keys with the scalar values TensorBoard's hparams accept
            (int, float, str, bool; None and lists written as text) instead of nested dicts.
    """
    node = config if isinstance(config, DictConfig) else OmegaConf.structured(config)
    nested = _lists(OmegaConf.to_container(node, resolve=True, enum_to_str=True))
    if not flat:
        return nested
    flat_values: dict[str, Any] = {}

    def visit(value: Any, prefix: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                visit(item, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(value, (bool, int, float, str)):
            flat_values[prefix] = value
        else:
            flat_values[prefix] = str(value)

    visit(nested, "")
    return flat_values


def save_config(config: Any, path: str | Path) -> Path:
    """Write the resolved config as YAML, atomically (a reader never sees half a file).

    The file loads back with `load_config(type(config), path)` to an equal config.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # safe_dump quotes strings that YAML 1.1 readers would misread ('no', 'on'), so plain
    # yaml.safe_load users read the file the same way `load_config` does.
    text = yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return path
