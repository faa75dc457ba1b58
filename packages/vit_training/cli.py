"""What every task's command line (`tasks/classify.py`, `detect.py`, `segment.py`) does alike.

The run folder conventions of `vit_training.loop.fit` (``config.yaml`` and ``model.safetensors``
beside each other), the ``key.sub=value`` overrides argument, ``--resume`` parsing, loading a
config from ``--config`` or from beside ``--weights``, and logging on the first process only.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TypeVar

from .config import ConfigError, load_config

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
    """The overrides of a `train` command, with ``--resume`` turned into ``train.resume=...``."""
    split_resume(args)
    return list(args.overrides) + ([f"train.resume={args.resume}"] if args.resume is not None else [])


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
