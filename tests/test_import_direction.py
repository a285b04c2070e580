"""The packages depend one way: apps → cldm → ldm, apps → annotator, and both cldm and annotator → weights.
The SD blocks, the diffusion engine and the detectors never import each other or the UI."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FORBIDDEN = {
    "ldm": {"cldm", "annotator", "apps", "weights", "gradio"},
    "cldm": {"annotator", "apps", "gradio"},
    "annotator": {"cldm", "apps", "ldm", "gradio"},
    "weights": {"cldm", "annotator", "apps", "ldm", "gradio"},
}


def imported_packages(path: Path) -> set[str]:
    """Top-level names of every module `path` imports, at module level or inside functions."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


@pytest.mark.parametrize("package", FORBIDDEN)
def test_package_imports_point_one_way(package):
    files = sorted((ROOT / package).rglob("*.py"))
    assert files, f"no Python files under {package}/"
    wrong = {str(f.relative_to(ROOT)): sorted(imported_packages(f) & FORBIDDEN[package]) for f in files}
    assert not {f: names for f, names in wrong.items() if names}


def test_the_check_sees_imports_inside_functions(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("def f():\n    from cldm.model import create_model\n    import gradio as gr\n")
    assert imported_packages(sample) == {"cldm", "gradio"}
