"""The wheel alone provides the packages, the shipped configs and the ``vitasks`` command.

The wheel is built offline from a copy of the sources (pyproject.toml, README.md, LICENSE,
packages/, configs/) with the build backend already installed, then installed without its
dependencies into a fresh virtual environment that sees the test environment's site-packages
through a plain path entry: the dependencies (torch, ...) come from there, but not the editable
install of this checkout (its import hook is a .pth file that a path entry does not run), and
every command runs from a folder outside the checkout.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 120


def run(command: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"{command} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel built from a copy of the sources (a build in the checkout would write build/ there)."""
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(ROOT / name, source / name)
    for name in ("packages", "configs"):
        shutil.copytree(ROOT / name, source / name, ignore=ignore)
    out = tmp_path_factory.mktemp("wheelhouse")
    run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation", "--no-index",
         "--wheel-dir", str(out), str(source)], cwd=out)
    (built,) = out.glob("vitasks-*.whl")
    return built


@pytest.fixture(scope="module")
def installed(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment holding the wheel; returns its bin/ (Scripts/ on Windows) folder."""
    home = tmp_path_factory.mktemp("env")
    venv.EnvBuilder(with_pip=False).create(home)
    python = home / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    purelib = Path(run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                       cwd=home).stdout.strip())
    # the dependencies, as a path entry (appended after the environment's own site-packages)
    (purelib / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    run([sys.executable, "-m", "pip", "--python", str(python), "install", "--quiet", "--no-deps", "--no-index",
         "--no-compile", str(wheel)], cwd=home)
    return python.parent


def expected_members() -> tuple[set[str], set[str]]:
    """The modules of every package under packages/ and every YAML under configs/, as wheel paths."""
    modules = {path.relative_to(ROOT / "packages").as_posix() for path in (ROOT / "packages").glob("vit_*/**/*.py")}
    # configs/ installs as the package `vitasks_configs`
    configs = {"vitasks_configs/" + path.relative_to(ROOT / "configs").as_posix()
               for path in (ROOT / "configs").rglob("*.yaml")}
    return modules, configs


def test_the_wheel_lists_every_package_config_license_and_entry_point(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules, configs = expected_members()
    assert {"vit_backbone/__init__.py", "vit_training/__init__.py", "vit_classification/__init__.py",
            "vit_detection/__init__.py", "vit_segmentation/__init__.py"} <= modules
    assert len(configs) >= 10 and "vitasks_configs/classification/fashion_mnist_cpu.yaml" in configs
    assert modules - names == set()
    assert configs - names == set()
    assert not any(name.startswith(("tests/", "tasks/", "benchmarks/", "examples/", "configs/")) for name in names)
    # every folder under packages/ holding modules is a package the wheel carries (the list in
    # pyproject.toml is explicit, so a new package must be added there)
    assert {module.split("/")[0] for module in modules} <= {name.split("/")[0] for name in names}
    dist_info = next(name.split("/")[0] for name in names if name.endswith(".dist-info/METADATA"))
    assert f"{dist_info}/licenses/LICENSE" in names
    with zipfile.ZipFile(wheel) as archive:
        entry_points = archive.read(f"{dist_info}/entry_points.txt").decode()
        metadata = archive.read(f"{dist_info}/METADATA").decode()
    assert "vitasks = vit_training.commandline:main" in entry_points
    for line in ("classify = vit_classification.cli:COMMANDS", "detect = vit_detection.cli:COMMANDS",
                 "segment = vit_segmentation.cli:COMMANDS"):
        assert line in entry_points
    assert "License-Expression: Apache-2.0" in metadata
    # ranges, not pins: the wheel installs beside a torch a site built itself
    requirements = [line for line in metadata.splitlines() if line.startswith("Requires-Dist: ")]
    torch_requirement = next(line for line in requirements if re.match(r"Requires-Dist: torch[<>=]", line))
    assert "<3" in torch_requirement and ">=2" in torch_requirement, torch_requirement
    assert not [line for line in requirements if "==" in line and "extra ==" not in line.replace('"', "")
                and "medpy" not in line.lower()]


def test_the_installed_wheel_runs_the_console_script_with_its_own_configs(installed: Path,
                                                                          tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if key not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(NO_ALBUMENTATIONS_UPDATE="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    python = installed / ("python.exe" if os.name == "nt" else "python")
    # everything is imported from the fresh environment, nothing from the checkout
    where = run([str(python), "-c", "import vitasks_configs, vit_training, vit_detection; "
                 "print(vit_training.__file__); print(vit_detection.__file__); "
                 "print(*vitasks_configs.__path__, sep='\\n')"],
                cwd=outside, env=env).stdout.split()
    environment = installed.parent.resolve()
    assert where and all(Path(path).resolve().is_relative_to(environment) for path in where), where

    # no top-level `configs` package that would shadow (or be shadowed by) a user's own
    run([str(python), "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('configs') is not None)"],
        cwd=outside, env=env)

    script = shutil.which("vitasks", path=str(installed))
    assert script is not None, f"no vitasks console script in {installed}"
    helped = run([script, "--help"], cwd=outside, env=env).stdout
    for task in ("classify", "detect", "segment"):
        assert task in helped
    printed = run([script, "classify", "train", "--config", "fashion_mnist_cpu", "--print-config"],
                  cwd=outside, env=env).stdout
    assert "backbone:" in printed and "fashion" in printed.lower(), printed
    # the config it found is the installed package data (the folder `vitasks_configs` resolves to above)
    assert any((Path(path) / "classification" / "fashion_mnist_cpu.yaml").is_file() for path in where[2:])
