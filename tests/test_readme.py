"""The README's Python examples run as written.

Blocks that load a checkpoint file the reader would bring (they name a `.pth`) are left out;
loading such files is covered in test_weights.py.
"""

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
RUNNABLE = [block for block in BLOCKS if ".pth" not in block]


def test_readme_has_examples() -> None:
    assert len(RUNNABLE) >= 2


@pytest.mark.parametrize("index", range(len(RUNNABLE)))
def test_readme_example_runs(index: int) -> None:
    exec(compile(RUNNABLE[index], f"README.md python block {index}", "exec"), {})
