"""DESIGN.md's import rules: tasks/ -> task packages -> vit_training, vit_backbone.

vit_backbone imports no project package, vit_training imports no task package, task packages
never import each other, and nothing imports tasks/.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = {"vit_backbone", "vit_training", "vit_classification", "vit_detection", "vit_segmentation"}
TASK_PACKAGES = {"vit_classification", "vit_detection", "vit_segmentation"}
ALLOWED = {
    "vit_backbone": set(),
    "vit_training": {"vit_backbone"},
    **{task: {"vit_backbone", "vit_training"} for task in TASK_PACKAGES},
}


def imported_top_level_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def project_packages_present() -> list[str]:
    return sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "__init__.py").exists())


def test_every_package_is_known() -> None:
    unknown = set(project_packages_present()) - PROJECT_PACKAGES
    assert not unknown, f"packages/ holds packages the layering rule does not know: {unknown}"


@pytest.mark.parametrize("package", project_packages_present())
def test_package_imports_follow_the_layering(package: str) -> None:
    violations = []
    for path in sorted((ROOT / "packages" / package).rglob("*.py")):
        forbidden = (imported_top_level_names(path) & (PROJECT_PACKAGES | {"tasks"})) - ALLOWED[package] - {package}
        if forbidden:
            violations.append(f"{path.relative_to(ROOT)} imports {sorted(forbidden)}")
    assert not violations, "; ".join(violations)


def test_the_rule_catches_a_violation(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import vit_detection.model\nfrom tasks import detect\nfrom . import sibling\n")
    assert imported_top_level_names(bad) == {"vit_detection", "tasks"}
