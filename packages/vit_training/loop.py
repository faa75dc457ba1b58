"""The one training loop every task runs, on Hugging Face Accelerate.

    fit(task, config)
      Accelerator (device, mixed precision, processes, trackers) -> model, data, optimizer
      -> prepare -> schedule (counted in optimizer steps) -> resume?
      -> for each epoch, until the last epoch, `train.max_steps` or the planned budget:
           for each batch:   accumulate -> loss -> finite? -> backward
                             on a sync step: clip, optimizer, schedule, EMA, log,
                             budget probe -> plan?, evaluate?, save?, stop?
           evaluate at the epoch end? (gather_for_metrics), visualise, save
      -> final checkpoint, export weights (safetensors), curves (PNG), then the last evaluation
         (a failing or killed last evaluation loses no trained weights)

A fresh run refuses a folder that already holds a run (`check_run_folder`): continue it with
`train.resume`, or start over with `train.overwrite`, which removes the old run's files first.

A run lasts `train.epochs` epochs, or `train.max_steps` optimizer steps (mid-epoch if need be),
or as many steps as fit `train.time_budget_min` (`vit_training.budget` plans them from the run's
own first steps); the schedule is laid over the steps the run will really take.

The same script runs as one process (`python tasks/classify.py train ...`) and as many
(`accelerate launch tasks/classify.py train ...`). Nothing calls `.cuda()`: devices come from
Accelerate.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import send_to_device, set_seed
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset
from tqdm.auto import tqdm

from .budget import (
    PLAN_FILE,
    PROBE_EVAL_BATCHES,
    PROBE_WARMUP_STEPS,
    BudgetPlan,
    evaluation_steps,
    plan_budget,
    run_steps,
    step_based_evaluation,
)
from .checkpoint import (
    TrainerState,
    checkpoints_dir,
    find_resume_checkpoint,
    load_trainer_state,
    save_checkpoint,
)
from .config import (
    LAUNCHER_PRECISION_ENV,
    TrainConfig,
    config_to_dict,
    resolve_mixed_precision,
    save_config,
)
from .data import SKIPPED_SAMPLES_FILE
from .ema import ModelEma, ema_warning
from .metrics_log import MetricsLogger, check_trackers
from .optim import build_optimizer
from .plots import plot_curves
from .schedule import build_scheduler, fit_warmup, set_horizon
from .task import Task

logger = logging.getLogger("vit_training")

WEIGHTS_FILE = "model.safetensors"
# The schedule horizon of a budgeted run until its plan is made: far enough that the decay barely starts.
PROVISIONAL_HORIZON = 10**9


# What a run folder holds when a run was started in it (any one of them counts).
RUN_MARKERS = ("config.yaml", "checkpoints", "metrics.jsonl", WEIGHTS_FILE)
# What `train.overwrite` removes besides the markers: the files and folders the engine writes
# (logs, curves, the budget plan and probe, the `evaluate` command's default folder, half-written
# exports). A task's own files come from `fit(run_files=...)`.
ENGINE_RUN_FILES = (*RUN_MARKERS, "metrics.csv", "curves.png", PLAN_FILE, "budget_probe", "eval",
                    SKIPPED_SAMPLES_FILE, WEIGHTS_FILE + ".tmp", "config.yaml.tmp")


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; raised before any weights are written."""


class RunFolderError(FileExistsError):
    """A fresh run was asked for in a folder that already holds a run; nothing was written."""


class FinalEvaluationError(RuntimeError):
    """The last evaluation failed after the final checkpoint and the weights were written.

    Attributes:
        output_dir: the run folder (loadable: model.safetensors, checkpoints/latest).
        cause: the evaluation's exception (also `__cause__`).
    """

    def __init__(self, output_dir: Path, cause: BaseException) -> None:
        self.output_dir = output_dir
        self.cause = cause
        first = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
        super().__init__(
            f"the final evaluation failed ({type(cause).__name__}: {first}); the trained weights are saved in "
            f"{output_dir} ({WEIGHTS_FILE}, checkpoints/latest): evaluate them again with "
            f"`vitasks <task> evaluate --weights {output_dir}` or vit_training.loop.evaluate_weights"
        )


def check_run_folder(output_dir: str | Path, resume: str | None, overwrite: bool) -> list[Path]:
    """Refuse to start a fresh run over an old one; returns the old run's markers found (to remove with overwrite).

    Reads only, so every process can call it before anything is written.

    Raises:
        RunFolderError: `output_dir` holds a run (config.yaml, checkpoints/, metrics.jsonl or
            model.safetensors), `resume` is None and `overwrite` is off. One line naming both ways on.
    """
    folder = Path(output_dir)
    found = [folder / name for name in RUN_MARKERS if (folder / name).exists()]
    if found and resume is None and not overwrite:
        raise RunFolderError(
            f"{folder} already holds a run ({', '.join(path.name for path in found)}); continue it with --resume "
            f"latest (train.resume=latest), start it over with --overwrite (train.overwrite=true: removes its "
            f"checkpoints, logs and weights first), or choose another train.output_dir"
        )
    return found


def clear_run_folder(output_dir: str | Path, run_files: Sequence[str] = ()) -> list[Path]:
    """Remove what a run wrote into `output_dir`: `ENGINE_RUN_FILES` and the glob patterns `run_files`.

    Other files (a user's own) are left alone. Returns the removed paths.
    """
    folder = Path(output_dir)
    doomed: list[Path] = [folder / name for name in ENGINE_RUN_FILES if (folder / name).exists()]
    for pattern in run_files:
        doomed.extend(path for path in folder.glob(pattern) if path not in doomed)
    for path in doomed:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    return doomed


@dataclass
class FitResult:
    """What `fit` leaves behind.

    Attributes:
        metrics: the last evaluation's metrics (empty without an evaluation set).
        output_dir: the run folder (config.yaml, checkpoints/, metrics.*, curves.png, ...).
        weights_path: the exported inference weights (EMA weights when EMA is on).
        model: the trained model of this process, unwrapped (the EMA copy when EMA is on).
    """

    metrics: dict[str, float]
    output_dir: Path
    weights_path: Path
    model: nn.Module


def build_accelerator(train: TrainConfig) -> Accelerator:
    """An Accelerator for `train`: CPU when no GPU is visible, mixed precision resolved for the device.

    Raises:
        RuntimeError: the launcher started several processes but they do not form one group
            (on CPUs, `accelerate launch --multi_gpu` without ACCELERATE_USE_CPU=1 silently starts
            independent single-process runs).
    """
    use_cpu = not torch.cuda.is_available()
    precision = resolve_mixed_precision(train.mixed_precision, "cpu" if use_cpu else "cuda")
    accelerator = Accelerator(
        cpu=use_cpu,
        mixed_precision=precision,
        gradient_accumulation_steps=train.grad_accum_steps,
        # A seeded sampler with set_epoch(): the same order per epoch in every run, so a resumed
        # run sees exactly the batches an uninterrupted one would.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=train.seed),
        step_scheduler_with_optimizer=False,
        # Trackers write under the run folder; `fit` starts them (`init_trackers`) and feeds them.
        log_with=list(train.log_with) or None,
        project_dir=str(train.output_dir),
    )
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    if accelerator.num_processes != launched:
        raise RuntimeError(
            f"{launched} processes were launched but Accelerate sees {accelerator.num_processes}; on a CPU machine "
            "launch with: ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes N ..."
        )
    return accelerator


def _configure_logging(accelerator: Accelerator) -> None:
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logger.setLevel(logging.INFO if accelerator.is_main_process else logging.WARNING)


def _all_finite(accelerator: Accelerator, loss: torch.Tensor, loss_value: float) -> bool:
    """True when the loss is finite on every process (all processes must agree to skip or stop together).

    `loss_value` is `loss.item()`, read once per batch by the caller: one device sync, not two.
    """
    if accelerator.num_processes == 1:
        return math.isfinite(loss_value)
    flag = torch.isfinite(loss.detach()).float().reshape(1)
    return bool(accelerator.gather(flag).min().item())


@dataclass
class StepResult:
    """What one `train_step` did.

    Attributes:
        loss: the batch's loss as a float (read once: the non-finite guard's one host sync).
        finite: the loss was finite on every process (then it was back-propagated).
        extras: the task's scalars to log, tensors still on the device (`read_scalars` reads them).
        synced: the batch ended an accumulation window (gradients were synchronised).
        stepped: ... and the optimizer stepped (every batch of the window was finite).
        grad_norm: the total gradient norm before clipping, a device tensor (None without clipping
            or without a step).
        window_ok: whether the accumulation window is still clean, to pass to the next call.
    """

    loss: float
    finite: bool
    extras: dict[str, Any]
    synced: bool
    stepped: bool
    grad_norm: torch.Tensor | None
    window_ok: bool


def train_step(task: Task, model: nn.Module, batch: Any, accelerator: Accelerator, optimizer: torch.optim.Optimizer,
               scheduler: Any, *, clip_grad_norm: float | None = None, ema: ModelEma | None = None,
               window_ok: bool = True) -> StepResult:
    """One training batch as `fit` runs it: loss, non-finite guard, backward, and on a sync step
    clipping, optimizer, schedule and EMA (benchmarks call it to time exactly this code).

    The only host-device synchronisation is the loss read of the non-finite guard (plus, in
    several processes, the gather that makes them agree); the task's scalars and the gradient norm
    are returned as device tensors.

    Args:
        task: the task (its `loss` runs under the accelerator's autocast and accumulation context).
        model, optimizer: prepared by `accelerator`.
        batch: one batch, on the device.
        scheduler: stepped once per optimizer step (not prepared).
        clip_grad_norm: clip the gradients' total norm to this (None: no clipping).
        ema: an EMA of the weights, updated after every optimizer step.
        window_ok: False once a batch of the current accumulation window had a non-finite loss
            (`StepResult.window_ok` of the previous call); the window's step is then skipped.
    """
    with accelerator.accumulate(model):
        loss, extras = task.loss(model, batch)
        loss_value = loss.item()
        finite = _all_finite(accelerator, loss, loss_value)
        if finite:
            accelerator.backward(loss)
        window_ok = window_ok and finite
        synced = accelerator.sync_gradients
        stepped = False
        grad_norm = None
        if synced:
            if window_ok:
                if clip_grad_norm:
                    grad_norm = accelerator.clip_grad_norm_(model.parameters(), clip_grad_norm)
                optimizer.step()
                scheduler.step()
                if ema is not None:
                    ema.update(accelerator.unwrap_model(model))
                stepped = True
            optimizer.zero_grad(set_to_none=True)
            window_ok = True
    return StepResult(loss=loss_value, finite=finite, extras=extras, synced=synced, stepped=stepped,
                      grad_norm=grad_norm, window_ok=window_ok)


def compile_model(model: nn.Module, train: TrainConfig) -> nn.Module:
    """`model` wrapped in `torch.compile` when `train.compile` is on (else as it is).

    Shapes that change between batches (detection's padded image sizes, the last partial batch)
    are compiled once as dynamic dimensions after the first recompile (torch's automatic dynamic
    shapes), so a run compiles a handful of graphs, not one per shape.
    """
    if not train.compile:
        return model
    return torch.compile(model)


def read_scalars(values: dict[str, Any]) -> dict[str, float]:
    """`values` as floats: Python numbers as they are, one-element tensors read in one host sync together."""
    tensors = {key: value for key, value in values.items() if isinstance(value, torch.Tensor)}
    for key, value in tensors.items():
        if value.numel() != 1:
            raise ValueError(f"logged value {key!r} must be a scalar, got a tensor of shape {tuple(value.shape)}")
    read: dict[str, float] = {}
    if tensors:
        devices = {value.device for value in tensors.values()}
        device = next(iter(devices))
        # Stacked on one device and read once, not one read per scalar.
        stacked = torch.stack([value.detach().reshape(()).to(device, torch.float64) for value in tensors.values()])
        read = dict(zip(tensors, stacked.tolist(), strict=True))
    return {key: read[key] if key in read else float(value) for key, value in values.items()}


def _save_weights(module: nn.Module, path: Path) -> Path:
    """Write a state dict as safetensors through a temporary file, so a kill never leaves half a file."""
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in module.state_dict().items()}
    temporary = path.with_name(path.name + ".tmp")
    save_file(state, str(temporary))
    os.replace(temporary, path)
    return path


def load_weights_for_inference(model: nn.Module, weights: str | Path) -> nn.Module:
    """Load weights exported by `fit` (a `model.safetensors` file or the run folder holding it), strictly."""
    path = Path(weights)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no weights at {path}: expected {WEIGHTS_FILE} written by a training run")
    result = model.load_state_dict(load_file(str(path)), strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{path}: weights do not fit the model built from the config: {len(result.missing_keys)} missing "
            f"(e.g. {result.missing_keys[:3]}), {len(result.unexpected_keys)} unexpected (e.g. {result.unexpected_keys[:3]})"
        )
    return model


def _visualize(task: Task, model: nn.Module, dataset: Dataset, accelerator: Accelerator, output_dir: Path) -> None:
    """A few predictions from the first evaluation images, drawn by the task (main process only)."""
    if not accelerator.is_main_process or len(dataset) == 0:
        return
    # A few items only: one batch of the task's evaluation size (e.g. one volume), at most 16 images.
    batch_size = min(getattr(task, "eval_batch_size", None) or 16, 16, len(dataset))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=task.collate_fn(False),
                        generator=torch.Generator())
    batch = send_to_device(next(iter(loader)), accelerator.device)
    model.eval()
    with torch.no_grad(), accelerator.autocast():
        task.visualize(model, batch, output_dir)


def _eval_batch_size(task: Task, train: TrainConfig) -> int:
    """The evaluation loader's batch size: the task's `eval_batch_size` where it has one.

    A task may evaluate in other units than it trains on (the segmentation task trains on 2D
    slices but evaluates whole volumes, one per batch, so cases spread over processes).
    """
    return getattr(task, "eval_batch_size", None) or train.batch_size


def _evaluate(task: Task, model: nn.Module, loader: DataLoader, accelerator: Accelerator, output_dir: Path
              ) -> dict[str, float]:
    model.eval()
    with torch.no_grad(), accelerator.autocast():
        return task.evaluate(model, loader, accelerator, output_dir)


def _slowest(accelerator: Accelerator, seconds: float) -> float:
    """The largest of every process's `seconds`, so all processes plan alike."""
    if accelerator.num_processes == 1:
        return seconds
    value = torch.tensor([seconds], dtype=torch.float64, device=accelerator.device)
    return float(accelerator.gather(value).max().item())


def _time_evaluation(task: Task, model: nn.Module, eval_set: Dataset, train: TrainConfig, accelerator: Accelerator,
                     output_dir: Path, clock: Callable[[], float]) -> float:
    """Seconds one evaluation of the whole `eval_set` should take: `PROBE_EVAL_BATCHES` batches timed, scaled.

    The task evaluates the first items of the set as it evaluates them all (its own `evaluate`,
    post-processing and metric included) into a scratch folder that is removed afterwards. Fixed
    costs of an evaluation are scaled with the rest, which errs on the safe side.
    """
    batch_size = _eval_batch_size(task, train)
    items = min(len(eval_set), PROBE_EVAL_BATCHES * batch_size * accelerator.num_processes)
    loader = accelerator.prepare(DataLoader(Subset(eval_set, range(items)), batch_size=batch_size, shuffle=False,
                                            num_workers=train.num_workers, collate_fn=task.collate_fn(False)))
    scratch = output_dir / "budget_probe"
    start = clock()
    _evaluate(task, model, loader, accelerator, scratch)
    seconds = _slowest(accelerator, clock() - start) * len(eval_set) / max(items, 1)
    if accelerator.is_main_process:
        shutil.rmtree(scratch, ignore_errors=True)
    return seconds


def _precision_note(train: TrainConfig, chosen: str) -> str | None:
    """One line when the config's explicit precision overrides a different one asked by the launcher."""
    launcher = os.environ.get(LAUNCHER_PRECISION_ENV, "").strip().lower()
    if train.mixed_precision == "auto" or not launcher or launcher == chosen:
        return None
    return (f"mixed precision {chosen}: train.mixed_precision={train.mixed_precision} in the config wins over the "
            f"launcher's {LAUNCHER_PRECISION_ENV}={launcher}")


def fit(task: Task, config: Any, *, clock: Callable[[], float] = time.perf_counter,
        run_files: Sequence[str] = ()) -> FitResult:
    """Train `task` with `config.train`, `config.optim` and `config.schedule`, then export its weights.

    The run's length is `train.epochs` epochs, or `train.max_steps` optimizer steps, or what
    fits `train.time_budget_min` (planned by `vit_training.budget` after the first steps).

    Args:
        task: a `vit_training.task.Task`.
        config: the task's config dataclass (saved beside every checkpoint and given to the trackers).
        clock: seconds of a monotonic clock, for the time budget and the records' `time_s`
            (tests pass a fake one).
        run_files: glob patterns (relative to the run folder) of the files the task writes there
            (evaluation files, pictures), removed with the engine's own by `train.overwrite`.

    Returns:
        a `FitResult`. Every process returns the same metrics.

    Raises:
        RunFolderError: `train.output_dir` holds a run and neither `train.resume` nor
            `train.overwrite` is set (raised before anything is written).
        FinalEvaluationError: the last evaluation failed; the final checkpoint and the weights
            were written before it.
    """
    train: TrainConfig = config.train
    fit_start = clock()
    output_dir = Path(train.output_dir)
    old_run = check_run_folder(output_dir, train.resume, train.overwrite)
    log_with = check_trackers(train.log_with)
    accelerator = build_accelerator(train)
    _configure_logging(accelerator)
    set_seed(train.seed)
    if old_run and train.overwrite:
        # Every process has checked the folder (above) before the main one empties it.
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            removed = clear_run_folder(output_dir, run_files)
            logger.warning("train.overwrite: removed the old run's %s from %s",
                           ", ".join(sorted(path.name for path in removed)), output_dir)
        accelerator.wait_for_everyone()
    logger.info("run folder %s: %d process(es) on %s, mixed precision %s", output_dir,
                accelerator.num_processes, accelerator.device, accelerator.mixed_precision)
    note = _precision_note(train, accelerator.mixed_precision)
    if note:
        logger.info(note)

    model = task.build_model()
    train_set, eval_set = task.build_datasets()
    # drop_last: every optimizer step sees full batches (mixup needs even batch sizes) and all
    # processes take the same number of steps.
    # The loaders draw their seeds from private generators, never from the global RNG: creating an
    # iterator (also when skipping batches on resume) must not shift dropout / drop-path noise.
    data_generator = torch.Generator()
    train_loader = DataLoader(train_set, batch_size=train.batch_size, shuffle=True, drop_last=True,
                              num_workers=train.num_workers, collate_fn=task.collate_fn(True),
                              generator=data_generator)
    if len(train_loader) == 0:
        raise ValueError(f"train.batch_size={train.batch_size} is larger than the training set ({len(train_set)} samples)")
    optimizer = build_optimizer(model, config.optim, device_type=accelerator.device.type)
    model = compile_model(model, train)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    eval_loader = None
    if eval_set is not None:
        eval_loader = accelerator.prepare(DataLoader(eval_set, batch_size=_eval_batch_size(task, train), shuffle=False,
                                                     num_workers=train.num_workers, collate_fn=task.collate_fn(False),
                                                     generator=torch.Generator().manual_seed(train.seed)))

    # len(train_loader) now counts this process's batches. The scheduler is NOT prepared: a
    # prepared scheduler steps once per process per call; this loop steps it once per optimizer step.
    steps_per_epoch = math.ceil(len(train_loader) / train.grad_accum_steps)
    budgeted = train.time_budget_min is not None
    # A run measured in steps (max_steps, budget) stops at `stop_at`; one measured in epochs at its last epoch end.
    in_steps = budgeted or train.max_steps is not None
    schedule_cfg = config.schedule

    def plan_length(total: int) -> int:
        """Fit the warm-up and check the EMA for a run of `total` optimizer steps (warning once each)."""
        nonlocal schedule_cfg
        schedule_cfg, note = fit_warmup(config.schedule, total, steps_per_epoch)
        if note:
            logger.warning(note)
        if train.ema_decay:
            note = ema_warning(train.ema_decay, train.ema_warmup, total)
            if note:
                logger.warning(note)
        return total

    # A budgeted run learns its length after the probe; until then its schedule runs on a far horizon
    # (the warm-up does not depend on it, and the decay barely starts).
    provisional = train.max_steps or PROVISIONAL_HORIZON
    if budgeted:
        schedule_cfg, _ = fit_warmup(config.schedule, provisional, steps_per_epoch)  # warned once the plan is made
        horizon = provisional
    else:
        horizon = plan_length(run_steps(train, steps_per_epoch))
    scheduler = build_scheduler(optimizer.optimizer, schedule_cfg, horizon, steps_per_epoch)
    accelerator.register_for_checkpointing(scheduler)
    ema = ModelEma(accelerator.unwrap_model(model), train.ema_decay, train.ema_warmup) if train.ema_decay else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    state = TrainerState()
    resume_from = find_resume_checkpoint(output_dir, train.resume)
    if resume_from is None and train.resume == "latest":
        logger.warning("train.resume=latest: %s holds no checkpoint yet; starting a fresh run",
                       checkpoints_dir(output_dir))
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = load_trainer_state(resume_from)
        logger.info("resumed from %s: epoch %d, batch %d, step %d", resume_from, state.epoch, state.batches_done,
                    state.global_step)
    last_saved_step = state.global_step if resume_from is not None else -1
    elapsed_before = state.elapsed_s
    # Written once the model, data and checkpoint have loaded: a run that fails while setting up
    # (a bad file in the data) leaves no config.yaml that would mark its folder as holding a run.
    if accelerator.is_main_process:
        save_config(config, output_dir / "config.yaml")

    def run_clock() -> float:
        """Seconds of this run so far: this fit's, plus those of the runs it resumed."""
        return elapsed_before + clock() - fit_start

    plan = BudgetPlan.from_dict(state.plan) if budgeted and state.plan else None
    stop_at: int | None = None if budgeted else train.max_steps
    if budgeted and train.max_steps is not None:
        stop_at = train.max_steps
    step_evals: set[int] = set()
    if plan is not None:
        stop_at = plan.total_steps
        total = plan_length(plan.total_steps)
        set_horizon(scheduler, schedule_cfg, total, steps_per_epoch)
        step_evals = set(plan.eval_steps)
        logger.info("resumed %s", plan.describe())
    elif not budgeted:
        step_evals = set(evaluation_steps(train, run_steps(train, steps_per_epoch)))
    budget_s = train.time_budget_min * 60 if budgeted else math.inf

    if log_with and accelerator.is_main_process:
        accelerator.init_trackers(output_dir.name, config=config_to_dict(config, flat=True))
    metrics_log = MetricsLogger(output_dir, accelerator.is_main_process,
                                tracker=accelerator.log if log_with else None, clock=run_clock)
    eval_metrics: dict[str, float] = {}
    skipped_steps = 0
    last_eval_step = -1
    probe_times: list[float] = []
    show_bar = accelerator.is_local_main_process and sys.stderr.isatty()

    def save() -> None:
        nonlocal last_saved_step
        state.elapsed_s = run_clock()
        save_checkpoint(accelerator, output_dir, state, config, train.keep_last_checkpoints)
        last_saved_step = state.global_step

    def evaluate(epoch: int) -> None:
        nonlocal eval_metrics, last_eval_step
        eval_model = ema.module if ema is not None else model
        eval_metrics = _evaluate(task, eval_model, eval_loader, accelerator, output_dir)
        metrics_log.log("eval", state.global_step, epoch, eval_metrics)
        _visualize(task, accelerator.unwrap_model(eval_model), eval_set, accelerator, output_dir)
        last_eval_step = state.global_step

    def finished() -> bool:
        if in_steps:
            return stop_at is not None and state.global_step >= stop_at
        return state.epoch >= train.epochs

    def make_plan() -> None:
        """The budget plan, from the probe's timed steps (every process plans the same)."""
        nonlocal plan, stop_at, step_evals
        timed = probe_times[PROBE_WARMUP_STEPS - 1:]
        step_s = _slowest(accelerator, (timed[-1] - timed[0]) / (len(timed) - 1))
        eval_s = 0.0
        if eval_set is not None and len(eval_set) > 0:
            eval_s = _time_evaluation(task, ema.module if ema is not None else model, eval_set, train, accelerator,
                                      output_dir, clock)
            model.train()
        plan = plan_budget(train, step_s=step_s, eval_s=eval_s, done_steps=state.global_step,
                           elapsed_s=run_clock(), steps_per_epoch=steps_per_epoch)
        stop_at = plan.total_steps
        step_evals = set(plan.eval_steps)
        total = plan_length(plan.total_steps)
        set_horizon(scheduler, schedule_cfg, total, steps_per_epoch)
        state.plan = plan.to_dict()
        if accelerator.is_main_process:
            plan.save(output_dir / PLAN_FILE)
        logger.info(plan.describe())

    stopped_by_clock = False
    while not finished() and not stopped_by_clock:
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(state.epoch)
        data_generator.manual_seed(train.seed + state.epoch)  # worker seeds: a function of the epoch only
        train_loader.set_epoch(state.epoch)
        batches = train_loader
        if state.batches_done:
            batches = accelerator.skip_first_batches(train_loader, state.batches_done)
        model.train()
        window_ok = True
        window_losses: list[float] = []
        # A redrawn bar only where a person watches a terminal; log files get one plain line per log interval.
        progress = tqdm(total=len(train_loader), initial=state.batches_done, desc=f"epoch {state.epoch}",
                        disable=not show_bar, leave=False)
        for batch in batches:
            result = train_step(task, model, batch, accelerator, optimizer, scheduler,
                                clip_grad_norm=train.clip_grad_norm, ema=ema, window_ok=window_ok)
            window_ok = result.window_ok
            if result.finite:
                window_losses.append(result.loss)
            elif train.nonfinite_loss == "stop":
                raise NonFiniteLossError(
                    f"loss is {result.loss} at epoch {state.epoch}, batch {state.batches_done}, optimizer step "
                    f"{state.global_step + 1}; stopped without saving (checkpoints in {output_dir / 'checkpoints'} "
                    "are intact; lower optim.lr, set train.clip_grad_norm, or train.nonfinite_loss=skip)"
                )
            if result.stepped:
                state.global_step += 1
            elif result.synced:
                skipped_steps += 1
                logger.warning("non-finite loss: skipped optimizer step %d (%d skipped so far)",
                               state.global_step + 1, skipped_steps)
            state.batches_done += 1
            progress.update()
            if not result.stepped:
                continue
            if state.global_step % train.log_every_steps == 0:
                # The task's scalars and the gradient norm stay on the device until here: one read at a
                # log step instead of one per scalar and batch.
                scalars = dict(result.extras)
                if result.grad_norm is not None:
                    scalars["grad_norm"] = result.grad_norm
                logged = {"loss": sum(window_losses) / max(len(window_losses), 1),
                          "lr": scheduler.get_last_lr()[0], **read_scalars(scalars)}
                progress.set_postfix(loss=f"{logged['loss']:.4f}")
                metrics_log.log("train", state.global_step, state.epoch, logged, echo=not show_bar,
                                note=f"/{stop_at}" if stop_at is not None else "")
            window_losses = []
            if budgeted and plan is None:
                probe_times.append(clock())
                if len(probe_times) == PROBE_WARMUP_STEPS + train.budget_probe_steps:
                    make_plan()
            if eval_loader is not None and state.global_step in step_evals and not finished():
                evaluate(state.epoch)
                model.train()
            if train.save_every_steps and state.global_step % train.save_every_steps == 0:
                save()
            if finished():
                break
            if run_clock() >= budget_s:
                stopped_by_clock = True
                logger.info("time budget of %g min reached at optimizer step %d%s", train.time_budget_min,
                            state.global_step, f" (planned {stop_at})" if stop_at is not None else "")
                break
        progress.close()
        if state.batches_done < len(train_loader):
            break  # stopped mid-epoch: the run is over
        state.epoch += 1
        state.batches_done = 0
        if (eval_loader is not None and not step_based_evaluation(train) and train.eval_every_epochs
                and state.epoch % train.eval_every_epochs == 0 and not finished()):
            evaluate(state.epoch - 1)
        if last_saved_step != state.global_step:
            save()

    # The trained weights go to disk before the last evaluation: an evaluation that fails (a bad
    # label read only now) or is killed must not take the run with it.
    if last_saved_step != state.global_step:
        save()
    accelerator.wait_for_everyone()
    weights_path = output_dir / WEIGHTS_FILE
    final_model = ema.module if ema is not None else accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        _save_weights(final_model, weights_path)
        plot_curves(metrics_log.records(), output_dir / "curves.png")
        logger.info("weights: %s%s", weights_path, " (EMA)" if ema is not None else "")
    if eval_loader is not None and last_eval_step != state.global_step:
        try:
            evaluate(state.epoch - 1 if state.batches_done == 0 and state.epoch > 0 else state.epoch)
        except Exception as error:
            metrics_log.close()
            raise FinalEvaluationError(output_dir, error) from error
        if accelerator.is_main_process:
            plot_curves(metrics_log.records(), output_dir / "curves.png")  # with the last evaluation
    metrics_log.close()
    if log_with:
        accelerator.end_training()
    accelerator.wait_for_everyone()
    return FitResult(metrics=eval_metrics, output_dir=output_dir, weights_path=weights_path, model=final_model)


def evaluate_weights(task: Task, config: Any, weights: str | Path, output_dir: str | Path | None = None, *,
                     model: nn.Module | None = None, eval_set: Dataset | None = None,
                     **evaluate_options: Any) -> dict[str, float]:
    """Evaluate exported weights on the task's evaluation set, in one or many processes alike.

    The model is evaluated as `fit` evaluates it: in eval mode, without gradients, under the
    accelerator's autocast (the precision `config.train.mixed_precision` resolves to), with the
    evaluation loader sharded over the processes (every sample counted once).

    Args:
        task: the task (its `evaluate` computes the metrics and writes its files).
        config: the task's config (`config.train` chooses device, precision, batch size, workers).
        weights: a `model.safetensors` written by `fit`, or the run folder holding it; loaded strictly.
        output_dir: where the task's evaluation files go; default `config.train.output_dir`.
        model: the network to load the weights into; default `task.build_model()`.
        eval_set: the evaluation set; default `task.build_eval_dataset()`.
        **evaluate_options: extra keyword arguments of `task.evaluate` (e.g. a predictions file).

    Raises:
        FileNotFoundError: no weights file, or the config names no evaluation set.
        ValueError: the weights do not fit the model.
    """
    accelerator = build_accelerator(config.train)
    _configure_logging(accelerator)
    model = load_weights_for_inference(model if model is not None else task.build_model(), weights)
    if eval_set is None:
        # A duck-typed task (not a `Task` subclass) may only have build_datasets.
        build_eval = getattr(task, "build_eval_dataset", None)
        eval_set = build_eval() if build_eval is not None else task.build_datasets()[1]
    if eval_set is None:
        raise FileNotFoundError("the config names no evaluation set")
    loader = DataLoader(eval_set, batch_size=_eval_batch_size(task, config.train), shuffle=False,
                        num_workers=config.train.num_workers, collate_fn=task.collate_fn(False))
    model, loader = accelerator.prepare(model, loader)
    output_dir = Path(output_dir if output_dir is not None else config.train.output_dir)
    if accelerator.is_main_process:
        output_dir.mkdir(parents=True, exist_ok=True)
    model.eval()
    with torch.no_grad(), accelerator.autocast():
        metrics = task.evaluate(model, loader, accelerator, output_dir, **evaluate_options)
    accelerator.wait_for_everyone()  # the ranks leave together, as `fit`'s do
    return metrics
