"""FSDP through `accelerate launch --use_fsdp` with the ViT's `Block` as the wrapping unit.

Accelerate's `FullyShardedDataParallelPlugin` refuses to start without an accelerator ("There are
currently no available devices found, must be one of 'XPU', 'CUDA', ..."), so on a CPU machine the
test is skipped with that reason; on a machine with 2 GPUs it trains the Fashion-MNIST recipe for
two steps, sharded, and checks the saved weights are the full state dict.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason=(
    "Accelerate's FullyShardedDataParallelPlugin needs a CUDA/XPU/NPU/HPU device: FSDP does not run on a CPU"))
def test_fsdp_trains_two_steps_and_saves_a_full_state_dict(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
               "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0", "--use_fsdp",
               "--fsdp_auto_wrap_policy", "TRANSFORMER_BASED_WRAP", "--fsdp_transformer_layer_cls_to_wrap", "Block",
               "--fsdp_state_dict_type", "FULL_STATE_DICT",
               str(ROOT / "tasks" / "classify.py"), "train", "--config", "fashion_mnist_cpu", "train.max_steps=2",
               "data.num_train_samples=64", "data.num_eval_samples=32", "train.batch_size=8",
               f"train.output_dir={tmp_path}"]
    process = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=300,
                             env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert process.returncode == 0, process.stderr[-3000:]
    weights = load_file(tmp_path / "model.safetensors")
    assert any("blocks.0." in name for name in weights) and any("blocks.1." in name for name in weights)
    # A full state dict: every tensor whole, not a flat shard (FSDP's sharded saves are 1-D slices).
    assert all(tensor.numel() > 0 for tensor in weights.values())
    assert any(tensor.ndim == 2 for name, tensor in weights.items() if "blocks.0." in name)
