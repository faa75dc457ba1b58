"""The import rules of docs/architecture.md: tasks/ -> task packages -> vit_training, vit_backbone.

vit_backbone imports no project package, vit_training imports no task package, task packages
never import each other, and nothing imports tasks/. The packages are read from packages/: every
package there other than the two shared ones is a task package, so a new task needs no edit here.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = {"vit_backbone": set(), "vit_training": {"vit_backbone"}}


def project_packages_present() -> list[str]:
    return sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "__init__.py").exists())


PROJECT_PACKAGES = set(project_packages_present())
TASK_PACKAGES = PROJECT_PACKAGES - set(SHARED)
ALLOWED = {**SHARED, **{task: {"vit_backbone", "vit_training"} for task in TASK_PACKAGES}}


def imported_top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_the_shared_packages_and_some_tasks_are_found() -> None:
    assert set(SHARED) <= PROJECT_PACKAGES
    assert TASK_PACKAGES, "packages/ holds no task package"


@pytest.mark.parametrize("package", project_packages_present())
def test_package_imports_follow_the_layering(package: str) -> None:
    violations = []
    for path in sorted((ROOT / "packages" / package).rglob("*.py")):
        forbidden = (imported_top_level_names(path) & (PROJECT_PACKAGES | {"tasks"})) - ALLOWED[package] - {package}
        if forbidden:
            violations.append(f"{path.relative_to(ROOT)} imports {sorted(forbidden)}")
    assert not violations, "; ".join(violations)


@pytest.mark.parametrize("folder", ["tasks", "examples"])
def test_entry_scripts_import_no_other_script(folder: str) -> None:
    """tasks/ and examples/ are leaves: their files import packages, never each other's folders."""
    for path in sorted((ROOT / folder).rglob("*.py")):
        assert not imported_top_level_names(path) & {"tasks", "examples"}, path


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import vit_detection.model\nfrom tasks import detect\nfrom . import sibling\n")
    assert imported_top_level_names(bad) == {"vit_detection", "tasks"}
