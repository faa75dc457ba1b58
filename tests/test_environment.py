"""The command line runs offline; importing the library leaves the user's Hub settings alone.

Each check runs in a fresh interpreter without HF_HUB_OFFLINE in its environment (huggingface_hub
reads it once, at import).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str) -> str:
    env = {key: value for key, value in os.environ.items() if key != "HF_HUB_OFFLINE"}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def test_importing_the_library_leaves_the_hub_online() -> None:
    out = run_python(
        "import os, vit_training, vit_classification, vit_detection, vit_segmentation\n"
        "from vit_training import Predictor, fit\n"
        "import huggingface_hub.constants as c\n"
        "print(os.environ.get('HF_HUB_OFFLINE'), c.HF_HUB_OFFLINE)"
    )
    assert out == "None False"


def test_the_command_line_runs_offline() -> None:
    # The vitasks console script (vit_training.commandline:main), then tasks/classify.py as `python tasks/classify.py` runs it.
    probe = "import os, huggingface_hub.constants as c; print(os.environ.get('HF_HUB_OFFLINE'), c.HF_HUB_OFFLINE)"
    out = run_python(
        "import contextlib, io\n"
        "from vit_training.commandline import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    assert main(['classify', 'train', '--config', 'fashion_mnist_cpu', '--print-config']) == 0\n" + probe
    )
    assert out == "1 True"
    out = run_python(
        "import contextlib, io, runpy, sys\n"
        "sys.argv = ['classify.py', 'train', '--config', 'fashion_mnist_cpu', '--print-config']\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
        "    runpy.run_path('tasks/classify.py', run_name='__main__')\n" + probe
    )
    assert out == "1 True"
