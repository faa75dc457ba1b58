"""Resumable checkpoints that a kill can never leave half-written.

Layout under `output_dir/checkpoints/`:

    step_00000040/          Accelerate's `save_state` (model, optimizer, schedule, EMA, RNG
                            states of every process) + trainer_state.json + config.yaml
    step_00000080/
    latest                  a text file naming the newest complete checkpoint folder

A checkpoint is written into `step_N.tmp/` and renamed to `step_N/` only when every process
has finished writing; `latest` is then replaced atomically (`os.replace`), and only then are
old checkpoints rotated out (never the one just written). A kill at any moment leaves `latest`
naming a complete checkpoint; stale `.tmp` folders are removed by the next save.

Rotation keeps this run's newest `keep_last` checkpoints. A run resumed from an earlier
checkpoint than the newest branches off: the checkpoints of higher steps (the abandoned
continuation) are removed at its first save, and one of the same step is replaced.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from accelerate import Accelerator

from .config import save_config

LATEST_POINTER = "latest"
TRAINER_STATE = "trainer_state.json"


@dataclass
class TrainerState:
    """Where the loop stands, saved with every checkpoint.

    Attributes:
        epoch: the epoch in progress (0-based).
        batches_done: batches of `epoch` already consumed by each process (0 at an epoch start).
        global_step: optimizer steps taken so far.
        elapsed_s: seconds the run had trained when the checkpoint was saved (the runs it
            resumed included): a budgeted run resumed from here counts its budget on from them.
        plan: a budgeted run's plan (`vit_training.budget.BudgetPlan.to_dict()`), None before
            it is made or without a budget; a resumed run keeps it instead of planning again.
    """

    epoch: int = 0
    batches_done: int = 0
    global_step: int = 0
    elapsed_s: float = 0.0
    plan: dict[str, Any] | None = None


def checkpoints_dir(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def _write_text_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def save_checkpoint(accelerator: Accelerator, output_dir: str | Path, state: TrainerState, config: Any,
                    keep_last: int) -> Path:
    """Save the full training state; every process must call this. Returns the checkpoint folder."""
    folder = checkpoints_dir(output_dir)
    final = folder / f"step_{state.global_step:08d}"
    temporary = folder / f"{final.name}.tmp"
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        for stale in folder.glob("*.tmp"):  # left by a run killed during a save
            shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    accelerator.wait_for_everyone()
    accelerator.save_state(str(temporary), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (temporary / TRAINER_STATE).write_text(json.dumps(asdict(state), indent=2))
        save_config(config, temporary / "config.yaml")
        if final.exists():
            # Left by the continuation this run branched off (it resumed from an earlier checkpoint).
            # The new one is complete before the old one goes; `latest` names a higher step or, if it
            # named this one, `_latest_complete` falls back to the newest complete folder meanwhile.
            stale = final.with_name(final.name + ".old.tmp")
            os.replace(final, stale)
            os.replace(temporary, final)
            shutil.rmtree(stale)
        else:
            os.replace(temporary, final)
        _write_text_atomically(folder / LATEST_POINTER, final.name)
        _remove_old(folder, keep_last, final)
    accelerator.wait_for_everyone()
    return final


def checkpoint_step(path: Path) -> int | None:
    """The optimizer step of a `step_N` checkpoint folder's name, or None for any other name."""
    prefix, _, number = path.name.partition("_")
    return int(number) if prefix == "step" and number.isdigit() else None


def _remove_old(folder: Path, keep_last: int, current: Path) -> None:
    """Keep `current` (just written) and the newest earlier checkpoints, `keep_last` in all.

    Order is this run's: checkpoints of higher steps than `current` were left by a run this one
    branched off (resumed from an earlier checkpoint of it); they are no part of this run and
    would collide with its later saves, so they go first. `current` is never removed, so
    `latest` (which names it) always names a complete checkpoint.
    """
    step = checkpoint_step(current)
    others = [(checkpoint_step(p), p) for p in folder.iterdir()
              if p.is_dir() and p != current and checkpoint_step(p) is not None]
    later = [path for other, path in others if other > step]
    earlier = sorted((other, path) for other, path in others if other < step)
    doomed = later + [path for _, path in earlier[:max(len(earlier) - (keep_last - 1), 0)]]
    for old in doomed:
        shutil.rmtree(old)


def find_resume_checkpoint(output_dir: str | Path, resume: str | None) -> Path | None:
    """The checkpoint folder to resume from, or None to start fresh.

    `resume` is None (fresh start), ``"latest"`` (the newest complete checkpoint of
    `output_dir`, or a fresh start when there is none yet) or a checkpoint folder.
    """
    if resume is None:
        return None
    if resume == "latest":
        folder = _latest_complete(checkpoints_dir(output_dir))
        if folder is None:
            return None
    else:
        folder = Path(resume)
    if not (folder / TRAINER_STATE).is_file():
        raise FileNotFoundError(
            f"train.resume={resume!r}: {folder} is not a complete checkpoint (no {TRAINER_STATE} inside)"
        )
    return folder


def _latest_complete(folder: Path) -> Path | None:
    """The folder `latest` names, else the newest complete `step_*` folder, else None."""
    pointer = folder / LATEST_POINTER
    if pointer.exists():
        named = folder / pointer.read_text().strip()
        if (named / TRAINER_STATE).is_file():
            return named
    complete = sorted(p for p in folder.glob("step_*") if (p / TRAINER_STATE).is_file())
    return complete[-1] if complete else None


def load_trainer_state(folder: Path) -> TrainerState:
    return TrainerState(**json.loads((folder / TRAINER_STATE).read_text()))
