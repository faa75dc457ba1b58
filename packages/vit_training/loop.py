"""The one training loop every task runs, on Hugging Face Accelerate.

    fit(task, config)
      Accelerator (device, mixed precision, processes) -> model, data, optimizer
      -> prepare -> schedule (counted in optimizer steps) -> resume?
      -> for each epoch:
           for each batch:   accumulate -> loss -> finite? -> backward
                             on a sync step: clip, optimizer, schedule, EMA, log, save?
           evaluate (gather_for_metrics), visualise, save
      -> export weights (safetensors), curves (PNG)

The same script runs as one process (`python tasks/classify.py train ...`) and as many
(`accelerate launch tasks/classify.py train ...`). Nothing calls `.cuda()`: devices come from
Accelerate.
"""

from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.utils import send_to_device, set_seed
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from .checkpoint import (
    TrainerState,
    find_resume_checkpoint,
    load_trainer_state,
    save_checkpoint,
)
from .config import TrainConfig, config_to_dict, resolve_mixed_precision, save_config
from .ema import ModelEma
from .metrics_log import MetricsLogger
from .optim import build_optimizer
from .plots import plot_curves
from .schedule import build_scheduler
from .task import Task

logger = logging.getLogger("vit_training")

WEIGHTS_FILE = "model.safetensors"


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; raised before any weights are written."""


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


def fit(task: Task, config: Any) -> FitResult:
    """Train `task` with `config.train`, `config.optim` and `config.schedule`, then export its weights.

    Args:
        task: a `vit_training.task.Task`.
        config: the task's config dataclass (saved beside every checkpoint and given to the trackers).

    Returns:
        a `FitResult`. Every process returns the same metrics.
    """
    train: TrainConfig = config.train
    accelerator = build_accelerator(train)
    _configure_logging(accelerator)
    set_seed(train.seed)
    output_dir = Path(train.output_dir)
    if accelerator.is_main_process:
        save_config(config, output_dir / "config.yaml")
    logger.info("run folder %s: %d process(es) on %s, mixed precision %s", output_dir,
                accelerator.num_processes, accelerator.device, accelerator.mixed_precision)

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
    optimizer = build_optimizer(model, config.optim)
    if train.compile:
        model = torch.compile(model)
    model, optimizer, train_loader = accelerator.prepare(model, optimizer, train_loader)
    eval_loader = None
    if eval_set is not None:
        eval_loader = accelerator.prepare(DataLoader(eval_set, batch_size=_eval_batch_size(task, train), shuffle=False,
                                                     num_workers=train.num_workers, collate_fn=task.collate_fn(False),
                                                     generator=torch.Generator().manual_seed(train.seed)))

    # len(train_loader) now counts this process's batches. The scheduler is NOT prepared: a
    # prepared scheduler steps once per process per call; this loop steps it once per optimizer step.
    steps_per_epoch = math.ceil(len(train_loader) / train.grad_accum_steps)
    scheduler = build_scheduler(optimizer.optimizer, config.schedule, steps_per_epoch * train.epochs, steps_per_epoch)
    accelerator.register_for_checkpointing(scheduler)
    ema = ModelEma(accelerator.unwrap_model(model), train.ema_decay, train.ema_warmup) if train.ema_decay else None
    if ema is not None:
        accelerator.register_for_checkpointing(ema)

    state = TrainerState()
    resume_from = find_resume_checkpoint(output_dir, train.resume)
    if resume_from is not None:
        accelerator.load_state(str(resume_from))
        state = load_trainer_state(resume_from)
        logger.info("resumed from %s: epoch %d, batch %d, step %d", resume_from, state.epoch, state.batches_done,
                    state.global_step)
    last_saved_step = state.global_step if resume_from is not None else -1

    metrics_log = MetricsLogger(output_dir, accelerator.is_main_process, config_to_dict(config, flat=True))
    eval_metrics: dict[str, float] = {}
    skipped_steps = 0

    def save() -> None:
        nonlocal last_saved_step
        save_checkpoint(accelerator, output_dir, state, config, train.keep_last_checkpoints)
        last_saved_step = state.global_step

    while state.epoch < train.epochs:
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
        progress = tqdm(total=len(train_loader), initial=state.batches_done, desc=f"epoch {state.epoch}",
                        disable=not accelerator.is_local_main_process, leave=False)
        for batch in batches:
            with accelerator.accumulate(model):
                loss, extras = task.loss(model, batch)
                loss_value = loss.item()
                if _all_finite(accelerator, loss, loss_value):
                    accelerator.backward(loss)
                    window_losses.append(loss_value)
                elif train.nonfinite_loss == "stop":
                    raise NonFiniteLossError(
                        f"loss is {loss_value} at epoch {state.epoch}, batch {state.batches_done}, optimizer step "
                        f"{state.global_step + 1}; stopped without saving (checkpoints in {output_dir / 'checkpoints'} "
                        "are intact; lower optim.lr, set train.clip_grad_norm, or train.nonfinite_loss=skip)"
                    )
                else:
                    window_ok = False
                if accelerator.sync_gradients:
                    stepped = window_ok
                    if window_ok:
                        grad_norm = None
                        if train.clip_grad_norm:
                            grad_norm = accelerator.clip_grad_norm_(model.parameters(), train.clip_grad_norm)
                        optimizer.step()
                        scheduler.step()
                        if ema is not None:
                            ema.update(accelerator.unwrap_model(model))
                        state.global_step += 1
                    else:
                        skipped_steps += 1
                        logger.warning("non-finite loss: skipped optimizer step %d (%d skipped so far)",
                                       state.global_step + 1, skipped_steps)
                    optimizer.zero_grad(set_to_none=True)
                    window_ok = True
            state.batches_done += 1
            progress.update()
            if accelerator.sync_gradients and stepped:
                if state.global_step % train.log_every_steps == 0:
                    logged = {"loss": sum(window_losses) / max(len(window_losses), 1),
                              "lr": scheduler.get_last_lr()[0], **{k: float(v) for k, v in extras.items()}}
                    if grad_norm is not None:
                        logged["grad_norm"] = float(grad_norm)
                    progress.set_postfix(loss=f"{logged['loss']:.4f}")
                    metrics_log.log("train", state.global_step, state.epoch, logged, echo=progress.disable)
                window_losses = []
                if train.save_every_steps and state.global_step % train.save_every_steps == 0:
                    save()
        progress.close()
        state.epoch += 1
        state.batches_done = 0
        last_epoch = state.epoch == train.epochs
        if eval_loader is not None and (last_epoch or (train.eval_every_epochs and
                                                       state.epoch % train.eval_every_epochs == 0)):
            eval_model = ema.module if ema is not None else model
            eval_metrics = _evaluate(task, eval_model, eval_loader, accelerator, output_dir)
            metrics_log.log("eval", state.global_step, state.epoch - 1, eval_metrics)
            _visualize(task, accelerator.unwrap_model(eval_model), eval_set, accelerator, output_dir)
        if last_saved_step != state.global_step:
            save()

    accelerator.wait_for_everyone()
    weights_path = output_dir / WEIGHTS_FILE
    final_model = ema.module if ema is not None else accelerator.unwrap_model(model)
    if accelerator.is_main_process:
        _save_weights(final_model, weights_path)
        plot_curves(metrics_log.records(), output_dir / "curves.png")
        logger.info("weights: %s%s", weights_path, " (EMA)" if ema is not None else "")
    metrics_log.close()
    accelerator.wait_for_everyone()
    return FitResult(metrics=eval_metrics, output_dir=output_dir, weights_path=weights_path, model=final_model)


def evaluate_weights(task: Task, config: Any, weights: str | Path) -> dict[str, float]:
    """Evaluate exported weights on the task's evaluation set, in one or many processes alike."""
    accelerator = build_accelerator(config.train)
    _configure_logging(accelerator)
    model = load_weights_for_inference(task.build_model(), weights)
    _, eval_set = task.build_datasets()
    if eval_set is None:
        raise ValueError("the config names no evaluation set")
    loader = DataLoader(eval_set, batch_size=_eval_batch_size(task, config.train), shuffle=False,
                        num_workers=config.train.num_workers, collate_fn=task.collate_fn(False))
    model, loader = accelerator.prepare(model, loader)
    metrics = _evaluate(task, model, loader, accelerator, Path(config.train.output_dir))
    accelerator.wait_for_everyone()  # the ranks leave together, as `fit`'s do
    return metrics
