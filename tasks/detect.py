"""DETR-style object detection on the shared ViT: prepare, train, evaluate, predict (``vitasks detect``).

Runs the same with ``python tasks/detect.py ...`` (one process) and under
``accelerate launch tasks/detect.py ...`` (many). Everything is in `vit_detection.cli`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

# isort: off
# vit_training.commandline first: it sets the command's environment (offline Hub) before timm loads.
from vit_training.commandline import run_task
from vit_detection.cli import COMMANDS
# isort: on


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit status (see ``--help``)."""
    return run_task(COMMANDS, argv, prog="detect.py")


if __name__ == "__main__":
    sys.exit(main())
