"""The one command line of every task: `vitasks <task> train|evaluate|predict|...` and ``tasks/*.py``.

A task registers a `TaskCommands` spec (its config schema, how to build its `Task`, a metrics
headline, its predict handler and extra subcommands); `run_task` and `main` give it the same
`train`, `evaluate`, `predict` and ``--print-config`` as every other task, the same config
lookup (a path, or the name of a shipped config) and the same error policy (`EXIT_CODES`).
`main`, the ``vitasks`` console script, finds the registered tasks through the entry-point group
``vitasks.tasks`` (`ENTRY_POINT_GROUP`), so this package never imports a task package. The
commands run offline: the console script's module `vit_training.commandline` (which ``tasks/*.py``
import first) sets ``HF_HUB_OFFLINE=1`` (unless the user exported a value) before timm is imported;
importing the library sets nothing of the kind, so a Python user's ``from_pretrained`` /
``push_to_hub`` reach the Hub.

Also here: the run folder conventions of `vit_training.loop.fit` (``config.yaml`` and
``model.safetensors`` beside each other), the ``key.sub=value`` overrides argument, ``--resume``
parsing, loading a config from ``--config`` or from beside ``--weights``, and logging on the
first process only.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import re
import sys
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

from .config import ConfigError, config_to_dict, load_config

if TYPE_CHECKING:
    import torch
    from torch import nn

    from .task import Task

CONFIG_FILE = "config.yaml"  # what `fit` saves in every run folder
WEIGHTS_FILE = "model.safetensors"  # what `fit` exports in every run folder

SchemaT = TypeVar("SchemaT")


def paragraph(text: str) -> str:
    """`text` wrapped to 90 columns (RawDescriptionHelpFormatter keeps line breaks but does not wrap)."""
    return textwrap.fill(text, width=90)


def add_overrides(parser: argparse.ArgumentParser) -> None:
    """The positional ``key.sub=value`` config overrides."""
    parser.add_argument(
        "overrides", nargs="*", metavar="key.sub=value",
        help="config values replacing the file's, e.g. train.epochs=3 optim.lr=1e-3",
    )


def split_resume(args: argparse.Namespace) -> None:
    """`--resume train.epochs=3` swallows the override as its value: give it back, resume 'latest'."""
    value = args.resume
    if value is not None and "=" in value and not Path(value).exists():
        args.overrides = [value, *args.overrides]
        args.resume = "latest"


def train_overrides(args: argparse.Namespace) -> list[str]:
    """The overrides of a `train` command, with ``--resume`` / ``--overwrite`` turned into ``train.resume=...`` /
    ``train.overwrite=true``."""
    split_resume(args)
    return (list(args.overrides) + ([f"train.resume={args.resume}"] if args.resume is not None else [])
            + (["train.overwrite=true"] if getattr(args, "overwrite", False) else []))


def task_run_files(spec: TaskCommands) -> list[str]:
    """Glob patterns of the files the task's evaluation writes into a run folder (``<mode>`` becomes ``*``)."""
    return [re.sub(r"<[^>]*>", "*", name) for name in spec.evaluate_files]


def weights_file(weights: Path) -> Path:
    """The weights file: as given, or `model.safetensors` inside a run folder.

    Raises:
        FileNotFoundError: neither exists.
    """
    path = weights / WEIGHTS_FILE if weights.is_dir() else weights
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no weights file (give {WEIGHTS_FILE} or the run folder holding it)")
    return path


def load_run_config(schema: type[SchemaT], config: Path | None, weights: Path | None,
                    overrides: Sequence[str]) -> SchemaT:
    """Load `schema` from `config`, else from the run's config.yaml beside `weights`.

    Raises:
        ConfigError: no config file to load, or the file / overrides do not fit the schema.
    """
    path = config
    if path is None:
        if weights is None:
            raise ConfigError("no --config given")
        folder = weights if weights.is_dir() else weights.parent
        path = folder / CONFIG_FILE
        if not path.is_file():
            raise ConfigError(f"no --config given and no {CONFIG_FILE} beside the weights in {folder}")
    return load_config(schema, path, overrides)


def configure_logging(package: str) -> None:
    """Show `package`'s INFO lines (weights loaded, evaluation tables) on the first process only.

    The rank comes from the launcher's environment: creating Accelerate's state here, before
    `build_accelerator` chooses CPU or GPU, would fix the device setup too early.
    """
    logging.basicConfig(format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    main_process = int(os.environ.get("RANK", "0")) == 0
    logging.getLogger(package).setLevel(logging.INFO if main_process else logging.WARNING)


def cpu_launch_command(num_processes: int) -> list[str]:
    """The `accelerate launch` command line (without the script) for `num_processes` CPU processes.

    Run it with ``ACCELERATE_USE_CPU=1`` in the environment: with it, ``--multi_gpu`` starts
    processes that join one gloo group and really synchronise, where the plain ``--cpu
    --num_processes N`` starts one. One torch thread per process (``OMP_NUM_THREADS=1``) suits a
    machine with as many cores as processes.
    """
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", str(num_processes),
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]


def exit_status(status: int) -> int:
    """`status`, after releasing the process group when the command succeeded: ``sys.exit(exit_status(main()))``.

    A failed rank must not wait at `release_processes`'s barrier for a peer that may never come.
    """
    if status == 0:
        release_processes()
    return status


def release_processes() -> None:
    """Tear down the torch.distributed process group, where this process joined one.

    Called when a command has finished normally. A rank that exits with its gloo group still
    alive while its peer is shutting down can abort in the library's destructors ("terminate
    called without an active exception", exit -6), failing a run whose work was done; a
    single-process run has no group and this does nothing.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ------------------------------------------------------------------------------------------ the runner
ENTRY_POINT_GROUP = "vitasks.tasks"  # where installed task packages register their `TaskCommands`
SHIPPED_CONFIGS_PACKAGE = "vitasks_configs"  # the repository's configs/ folder, installed as package data

EXIT_CODES = """\
exit status:
  0  done
  1  a missing or unreadable file (data, weights, images) or invalid data: one line on stderr
  2  a config error (unknown key, wrong type or value, no such config) or a bad command line
  --debug shows the full traceback instead of the one line
"""

# A predict handler: (parsed arguments, the loaded config, the weights file, the device) -> exit status.
PredictHandler = Callable[[argparse.Namespace, Any, Path, "torch.device"], int]


@dataclass(frozen=True)
class SubCommand:
    """A task's own subcommand besides train / evaluate / predict (e.g. ``prepare`` demo data).

    Attributes:
        name: the subcommand.
        help: one line for the command list.
        add_arguments: adds the subcommand's arguments to its parser.
        run: runs it with the parsed arguments; returns the exit status.
        description: the subcommand's ``--help`` text (wrapped).
    """

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""


@dataclass(frozen=True)
class TaskCommands:
    """What a task gives the runner to get ``train``, ``evaluate``, ``predict`` and its own subcommands.

    Attributes:
        name: the command (``vitasks <name> ...``), e.g. "classify".
        description: one line for ``vitasks --help`` and the task's ``--help``.
        config_schema: the task's config dataclass (a `vit_training.task.TrainableConfig`).
        config_folder: the folder of shipped configs under configs/, e.g. "classification".
        build_task: builds the `Task` from a loaded config.
        headline: one line of the most telling metrics, e.g. "top1 0.9123  loss 0.2500".
        predict: runs ``predict`` (see `PredictHandler`); the runner loads the config, finds the
            weights and device first and calls it under the evaluation's autocast
            (`predict_precision`). It predicts every readable input, reports each bad one with
            `report_failures` and returns that status.
        add_predict_arguments: adds the task's own ``predict`` arguments (inputs, ``--output``, ...).
        predict_help: one line for the command list.
        predict_description: ``predict --help`` text.
        inference_model: builds the network that exported weights are loaded into (without
            fetching pretrained weights the export replaces); default ``task.build_model()``.
        evaluate_files: the files the task's `Task.evaluate` writes, named in messages and help.
        evaluate_options: extra keyword arguments of the task's `Task.evaluate` for ``evaluate``,
            given its output folder (e.g. a predictions file).
        evaluate_record: extra fields of ``evaluate``'s metrics.json, given the task (e.g. the
            metric convention its config chose).
        unit: what the evaluation set counts ("images", "cases"), in messages and metrics.json.
        extra_commands: the task's own subcommands.
        examples: the task's ``--help`` epilog.
        config_dirs: further folders searched for configs named without a path (an example task
            keeps its configs beside its code).
    """

    name: str
    description: str
    config_schema: type
    config_folder: str
    build_task: Callable[[Any], Task]
    headline: Callable[[Mapping[str, float]], str]
    predict: PredictHandler
    add_predict_arguments: Callable[[argparse.ArgumentParser], None]
    predict_help: str = "predict with trained weights"
    predict_description: str = ""
    inference_model: Callable[[Task], nn.Module] | None = None
    evaluate_files: Sequence[str] = ()
    evaluate_options: Callable[[Path], dict[str, Any]] | None = None
    evaluate_record: Callable[[Task], dict[str, Any]] | None = None
    unit: str = "samples"
    extra_commands: Sequence[SubCommand] = ()
    examples: str = ""
    config_dirs: Sequence[Path] = field(default_factory=tuple)

    @property
    def package(self) -> str:
        """The task's top-level package (whose INFO log lines the commands show)."""
        return self.config_schema.__module__.split(".")[0]


def format_metrics(metrics: Mapping[str, float]) -> str:
    """``key value`` pairs of every metric, 4 decimals: a default headline."""
    return "  ".join(f"{key} {value:.4f}" for key, value in metrics.items())


# ------------------------------------------------------------------------------------------ configs
def config_search_dirs(spec: TaskCommands) -> list[Path]:
    """Where configs named without a path are looked up: the spec's own folders, then the shipped ones.

    The shipped configs are the repository's configs/ folder, installed as the package data
    package `SHIPPED_CONFIGS_PACKAGE` (a wheel carries it; an editable install maps it to the
    checkout).
    """
    folders = [Path(folder) for folder in spec.config_dirs]
    try:
        # A namespace package (no __init__.py): its search locations are the installed folders.
        found = importlib.util.find_spec(SHIPPED_CONFIGS_PACKAGE)
    except (ImportError, ValueError):
        found = None
    if found is not None:
        folders.extend(Path(location) / spec.config_folder for location in found.submodule_search_locations or ())
    # A checkout run without installing (python tasks/<task>.py straight from the repository).
    checkout = Path(__file__).resolve().parents[2] / "configs" / spec.config_folder
    folders.append(checkout)
    unique = {folder.resolve(): folder for folder in folders if folder.is_dir()}
    return list(unique.values())


def shipped_config_names(spec: TaskCommands) -> list[str]:
    """The config names (file stems) that `find_config` resolves for this task."""
    return sorted({path.stem for folder in config_search_dirs(spec) for path in folder.glob("*.yaml")})


def find_config(spec: TaskCommands, value: str | Path) -> Path:
    """The config file `value` means: an existing path as given, else a shipped config of that name.

    ``fashion_mnist_cpu`` (or ``fashion_mnist_cpu.yaml``) finds ``configs/classification/fashion_mnist_cpu.yaml``.

    Raises:
        ConfigError: neither a file nor the name of a config (one line listing the names).
    """
    path = Path(value)
    if path.exists():
        return path
    if len(path.parts) == 1:
        name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"
        for folder in config_search_dirs(spec):
            if (folder / name).is_file():
                return folder / name
        names = ", ".join(shipped_config_names(spec)) or "none"
        raise ConfigError(f"--config {value}: no such file and no {spec.name} config of that name "
                          f"(shipped: {names})")
    raise ConfigError(f"--config {value}: no such config file")


def _load(spec: TaskCommands, args: argparse.Namespace, overrides: Sequence[str]) -> Any:
    """The config of ``--config`` (a path or a name), else the run's config.yaml beside ``--weights``."""
    config = find_config(spec, args.config) if args.config is not None else None
    return load_run_config(spec.config_schema, config, getattr(args, "weights", None), overrides)


def config_yaml(config: Any) -> str:
    """`config` as the YAML `fit` saves (loads back with `load_config` to an equal config)."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=None)


# ------------------------------------------------------------------------------------------ commands
def _is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _train(spec: TaskCommands, args: argparse.Namespace, prog: str | None = None) -> int:
    from .loop import FinalEvaluationError, fit

    config = _load(spec, args, train_overrides(args))
    if args.print_config:
        print(config_yaml(config), end="")
        return 0
    task = spec.build_task(config)
    try:
        result = fit(task, task.config, run_files=task_run_files(spec))
    except FinalEvaluationError as error:
        # Training is done and saved; one line says what failed and how to evaluate the saved weights.
        print(f"{prog or 'vitasks ' + spec.name} train: the final evaluation failed ({type(error.cause).__name__}: "
              f"{error_line(error.cause)}); the trained weights are saved in {error.output_dir} "
              f"(model.safetensors, checkpoints/latest): evaluate them with: vitasks {spec.name} evaluate "
              f"--weights {error.output_dir}", file=sys.stderr)
        return 1
    if _is_main_process():
        print(f"run folder: {result.output_dir}")
        print(f"weights:    {result.weights_path}")
        if result.metrics:
            print(f"evaluation: {spec.headline(result.metrics)}")
    return 0


def _evaluate(spec: TaskCommands, args: argparse.Namespace) -> int:
    import json

    from .loop import evaluate_weights

    config = _load(spec, args, args.overrides)
    if args.print_config:
        print(config_yaml(config), end="")
        return 0
    weights = weights_file(args.weights)
    output_dir = args.output if args.output is not None else weights.parent / "eval"
    task = spec.build_task(config)
    eval_set = task.build_eval_dataset()
    if eval_set is None:
        raise FileNotFoundError(f"the config names no evaluation set for {spec.name} evaluate")
    model = spec.inference_model(task) if spec.inference_model is not None else task.build_model()
    options = spec.evaluate_options(output_dir) if spec.evaluate_options is not None else {}
    metrics = evaluate_weights(task, task.config, weights, output_dir, model=model, eval_set=eval_set, **options)
    if _is_main_process():
        extra = spec.evaluate_record(task) if spec.evaluate_record is not None else {}
        record = {"weights": str(weights), spec.unit: len(eval_set), **extra, **metrics}
        (output_dir / "metrics.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"{len(eval_set)} {spec.unit}: {spec.headline(metrics)}")
        print(f"wrote {', '.join(['metrics.json', *spec.evaluate_files])} to {output_dir}")
    return 0


def inference_device(cpu: bool) -> torch.device:
    """The device `predict` runs on: the CPU when asked, else Accelerate's choice (a GPU when visible)."""
    import torch
    from accelerate import PartialState

    return torch.device("cpu") if cpu else PartialState().device


def predict_precision(config: Any, device: torch.device, requested: str | None = None) -> str:
    """The precision ``predict`` runs at: ``requested``, else what ``evaluate`` uses on `device`.

    ``evaluate`` and `fit`'s evaluations run under the autocast of `vit_training.loop.build_accelerator`,
    i.e. ``train.mixed_precision`` resolved for the device (`resolve_mixed_precision`); predicting at
    the same precision gives exactly the outputs those metrics were computed from.

    Returns:
        ``"no"``, ``"bf16"`` or ``"fp16"``.
    """
    from .config import resolve_mixed_precision

    return resolve_mixed_precision(requested or config.train.mixed_precision, device)


def inference_autocast(precision: str, device: torch.device) -> Any:
    """The autocast context Accelerate's ``accelerator.autocast()`` opens for `precision` on `device`."""
    import contextlib

    import torch

    if precision == "no":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def report_failures(failures: Sequence[tuple[str | os.PathLike, str]], total: int) -> int:
    """Print each failed input of ``predict`` as ``<path>: <what is wrong>`` and a summary on stderr.

    Returns:
        the exit status: 1 when any input failed, else 0.
    """
    for path, message in failures:
        text = message if message.startswith(str(path)) else f"{path}: {message}"
        print(" ".join(text.split()), file=sys.stderr)
    if failures:
        print(f"{len(failures)} of {total} inputs failed", file=sys.stderr)
        return 1
    return 0


def _predict(spec: TaskCommands, args: argparse.Namespace) -> int:
    config = _load(spec, args, args.overrides)
    if args.print_config:
        print(config_yaml(config), end="")
        return 0
    device = inference_device(args.cpu)
    precision = predict_precision(config, device, args.precision)
    with inference_autocast(precision, device):
        return spec.predict(args, config, weights_file(args.weights), device)


# ------------------------------------------------------------------------------------------ parsers
def _weights_and_config(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights", required=True, type=Path,
                        help="model.safetensors written by train, or the run folder holding it")
    parser.add_argument("--config", default=None, metavar="PATH|NAME",
                        help=f"YAML config, a path or the name of a shipped config; default: the {CONFIG_FILE} "
                             "saved beside the weights")


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config (file + overrides) as YAML and exit")
    # Also accepted after the subcommand; SUPPRESS keeps a --debug given before it.
    parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)


def add_task_commands(parser: argparse.ArgumentParser, spec: TaskCommands, prog: str) -> None:
    """Give `parser` the task's subcommands: its own, then train, evaluate and predict."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser.set_defaults(spec=spec)
    names = [command.name for command in spec.extra_commands] + ["train", "evaluate", "predict"]
    commands = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(names) + "}")

    for extra in spec.extra_commands:
        sub = commands.add_parser(extra.name, help=extra.help, description=paragraph(extra.description or extra.help),
                                  epilog=EXIT_CODES, formatter_class=formatter)
        extra.add_arguments(sub)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        sub.set_defaults(run=lambda args, extra=extra: extra.run(args))

    train = commands.add_parser(
        "train", help=f"train from a config ({spec.name})", formatter_class=formatter, epilog=EXIT_CODES,
        description=paragraph(
            "Train with the config's data, model and recipe. The run folder (train.output_dir) gets config.yaml "
            "(the resolved config), checkpoints/, the metric logs and curves, the task's evaluation files and "
            "model.safetensors."
        ) + f"\n\nexample:\n  {prog} train --config NAME train.epochs=1 train.output_dir=runs/try",
    )
    train.add_argument("--config", required=True, metavar="PATH|NAME",
                       help="YAML config: a path, or the name of a shipped config (" +
                            (", ".join(shipped_config_names(spec)) or "none") + ")")
    train.add_argument(
        "--resume", nargs="?", const="latest", default=None, metavar="PATH|latest",
        help="continue a run exactly (sets train.resume): a checkpoint folder, or 'latest' (also what "
             "--resume alone means) for the newest checkpoint in train.output_dir",
    )
    train.add_argument(
        "--overwrite", action="store_true",
        help="start over in a train.output_dir that holds a run (sets train.overwrite): its checkpoints, logs, "
             "curves, weights and evaluation files are removed first; without it (or --resume) train refuses",
    )
    _common(train)
    add_overrides(train)
    train.set_defaults(run=lambda args: _train(spec, args, prog))

    files = ", ".join(["metrics.json", *spec.evaluate_files])
    evaluate = commands.add_parser(
        "evaluate", help="evaluate trained weights on the config's evaluation set", formatter_class=formatter,
        epilog=EXIT_CODES,
        description=paragraph(
            f"Evaluate exported weights on the config's evaluation set and write {files} to --output. "
            "Works the same under accelerate launch (every sample counted once)."
        ) + f"\n\nexample:\n  {prog} evaluate --weights runs/RUN --output runs/RUN/eval",
    )
    _weights_and_config(evaluate)
    evaluate.add_argument("--output", type=Path, default=None,
                          help="folder for the result files; default: 'eval' beside the weights")
    _common(evaluate)
    add_overrides(evaluate)
    evaluate.set_defaults(run=lambda args: _evaluate(spec, args))

    predict = commands.add_parser("predict", help=spec.predict_help, formatter_class=formatter, epilog=EXIT_CODES,
                                  description=paragraph(spec.predict_description or spec.predict_help))
    _weights_and_config(predict)
    spec.add_predict_arguments(predict)
    predict.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is visible")
    predict.add_argument("--precision", choices=("auto", "no", "bf16", "fp16"), default=None,
                         help="autocast precision (default: train.mixed_precision of the config, resolved for "
                              "the device as evaluate does, so predictions reproduce the evaluated metrics)")
    predict.add_argument("--set", dest="overrides", action="append", default=[], metavar="key.sub=value",
                         help="a config override (repeatable), e.g. --set train.seed=1")
    _common(predict)
    predict.set_defaults(run=lambda args: _predict(spec, args))


def build_task_parser(spec: TaskCommands, prog: str | None = None) -> argparse.ArgumentParser:
    """The command line of one task (what ``tasks/<task>.py`` and ``vitasks <task>`` accept)."""
    prog = prog or f"vitasks {spec.name}"
    parser = argparse.ArgumentParser(prog=prog, description=spec.description,
                                     epilog=(spec.examples + "\n" if spec.examples else "") + EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    add_task_commands(parser, spec, prog)
    return parser


# ------------------------------------------------------------------------------------------ errors
_WORKER_WRAPPER = re.compile(r"^Caught \w+ in DataLoader worker process \d+\.")
_EXCEPTION_LINE = re.compile(r"^[\w.]+(Error|Exception|Warning)\w*: ")


def error_line(error: BaseException) -> str:
    """One line for the user: the error's message; a DataLoader worker's error is unwrapped first.

    torch re-raises an exception of a worker process as the same type with the worker's whole
    traceback as its message; the last line of that traceback is the underlying message.
    """
    text = str(error)
    if _WORKER_WRAPPER.match(text):
        lines = [line for line in text.splitlines() if line.strip()]
        text = _EXCEPTION_LINE.sub("", lines[-1].strip()) if lines else text
    if isinstance(error, KeyError) and len(error.args) == 1:
        text = str(error.args[0])
    return " ".join(line.strip() for line in text.splitlines() if line.strip()) or type(error).__name__


def _run_guarded(spec: TaskCommands, args: argparse.Namespace, prog: str) -> int:
    """Run the parsed command under the one error policy (`EXIT_CODES`)."""
    configure_logging(spec.package)
    if getattr(args, "debug", False):
        return args.run(args)
    try:
        return args.run(args)
    except ConfigError as error:
        print(f"{prog} {args.command}: config error: {error_line(error)}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, OSError) as error:
        # Missing or unreadable files and invalid data: the message names the file and what was
        # expected; a traceback would add nothing (--debug shows it).
        print(f"{prog} {args.command}: {error_line(error)}", file=sys.stderr)
        return 1


def run_task(spec: TaskCommands, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Parse `argv` for one task and run it; returns the exit status (`EXIT_CODES`).

    ``tasks/<task>.py`` is ``sys.exit(run_task(COMMANDS, prog="<task>.py"))``; an example task can
    pass its spec here directly, without registering it.
    """
    prog = prog or f"vitasks {spec.name}"
    args = build_task_parser(spec, prog).parse_args(argv)
    return exit_status(_run_guarded(spec, args, prog))


def discover_tasks() -> dict[str, TaskCommands]:
    """The registered tasks: every `TaskCommands` of the entry-point group `ENTRY_POINT_GROUP`, by name.

    A package registers in its pyproject.toml, e.g.
    ``[project.entry-points."vitasks.tasks"] classify = "vit_classification.cli:COMMANDS"``.
    """
    from importlib.metadata import entry_points

    tasks: dict[str, TaskCommands] = {}
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda entry: entry.name):
        spec = entry.load()
        if not isinstance(spec, TaskCommands):
            raise TypeError(f"entry point {entry.name} = {entry.value} is not a vit_training.cli.TaskCommands")
        tasks[spec.name] = spec
    return tasks


def build_parser(tasks: Mapping[str, TaskCommands]) -> argparse.ArgumentParser:
    """The ``vitasks`` command line: one subcommand per registered task."""
    parser = argparse.ArgumentParser(
        prog="vitasks", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Train, evaluate and use the vitasks models (one ViT backbone, several tasks).",
        epilog="examples:\n  vitasks classify train --config fashion_mnist_cpu train.epochs=1\n"
               "  vitasks classify --help\n\n" + EXIT_CODES,
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="task", required=True, metavar="{" + ",".join(tasks) + "}")
    for name, spec in tasks.items():
        sub = commands.add_parser(name, help=spec.description, description=spec.description,
                                  epilog=(spec.examples + "\n" if spec.examples else "") + EXIT_CODES,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        sub.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        add_task_commands(sub, spec, f"vitasks {name}")
    return parser


def set_command_environment() -> None:
    """The command line's environment, set before the task packages (timm, huggingface_hub) load.

    huggingface_hub reads ``HF_HUB_OFFLINE`` once, when imported: a command must never reach a hub
    (timm's model factory would ask it). A value the user exported wins.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")


def main(argv: Sequence[str] | None = None) -> int:
    """The ``vitasks`` console script: ``vitasks <task> <command> ...``; returns the exit status."""
    set_command_environment()
    tasks = discover_tasks()
    args = build_parser(tasks).parse_args(argv)
    return exit_status(_run_guarded(args.spec, args, f"vitasks {args.task}"))
