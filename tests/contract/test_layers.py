"""The architecture as a contract: every import points down the layers
``observability`` <- ``features_online`` <- ``serving`` <- ``batch`` <- ``loadtests``, and the
product packages never import the examples. Read from the source, so nothing is imported."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LAYERS = ["observability", "features_online", "serving", "batch", "loadtests"]
PRODUCT = LAYERS[:4]


def imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("package", LAYERS)
def test_every_import_points_down(package):
    rank = LAYERS.index(package)
    upward = [f"{path.relative_to(ROOT)}:{line} imports {module}"
              for path in sorted((ROOT / package).rglob("*.py"))
              for line, module in imports(path)
              if module.split(".")[0] in LAYERS[rank + 1:]
              or (package in PRODUCT and module.split(".")[0] == "examples")]
    assert upward == []


def test_the_check_sees_an_upward_import(tmp_path):
    bad = tmp_path / "reader.py"
    bad.write_text("from serving.settings import Settings\nimport batch.score\nfrom . import layout\n")
    assert [m for _, m in imports(bad)] == ["serving.settings", "batch.score"]
