"""TransUNet-style segmentation on the shared ViT: prepare, train, evaluate, predict (``vitasks segment``).

Runs the same with ``python tasks/segment.py ...`` (one process) and under
``accelerate launch tasks/segment.py ...`` (many). Everything is in `vit_segmentation.cli`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

# isort: off
# vit_training.commandline first: it sets the command's environment (offline Hub) before timm loads.
from vit_training.commandline import run_task
from vit_segmentation.cli import COMMANDS
# isort: on


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; returns the exit status (see ``--help``)."""
    return run_task(COMMANDS, argv, prog="segment.py")


if __name__ == "__main__":
    sys.exit(main())
