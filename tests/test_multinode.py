"""Two "machines" on one host: the README's multi-node launch, for real, with one CPU process each.

`accelerate launch --num_machines 2 --machine_rank {0,1} --num_processes 2 --main_process_ip
127.0.0.1 --main_process_port P --rdzv_backend static` is started twice, as on two machines; the
two ranks must form one gloo group (ACCELERATE_USE_CPU=1 with --multi_gpu, as for one machine),
split the data and finish with identical weights.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "tests" / "toy_task.py"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def machine_command(rank: int, port: int) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "2",
            "--machine_rank", str(rank), "--num_processes", "2", "--main_process_ip", "127.0.0.1",
            "--main_process_port", str(port), "--rdzv_backend", "static", "--same_network",
            "--mixed_precision", "no", "--dynamo_backend", "no"]


def test_two_machines_on_one_host_train_as_one_group(tmp_path: Path) -> None:
    port = free_port()
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "ACCELERATE_USE_CPU": "1"}
    processes = [
        subprocess.Popen(machine_command(rank, port) + [str(TOY), "fit", f"train.output_dir={tmp_path}",
                                                        "train.epochs=1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment, cwd=ROOT)
        for rank in (0, 1)
    ]
    outputs = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=120)
            assert process.returncode == 0, f"exit {process.returncode}\n{err[-3000:]}"
            outputs.append(out)
    finally:
        for process in processes:
            if process.poll() is None:
                process.kill()
    result = json.loads(outputs[0].strip().splitlines()[-1])  # rank 0 ("machine" 0) prints the result
    digests = [p.read_text() for p in sorted(tmp_path.glob("weights_rank*.sha256"))]
    assert len(digests) == 2 and digests[0] == digests[1]  # both ranks took part and agree
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
             if json.loads(line)["split"] == "train"]
    assert max(steps) == 6  # 96 samples / (2 processes x batch 8): the data was split over the machines
    assert result["metrics"]["samples"] == 37  # evaluation counts every sample once
