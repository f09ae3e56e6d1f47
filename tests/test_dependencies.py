"""Every third-party package imported by ``fedeye/`` is declared in pyproject's dependencies."""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ
DISTRIBUTION = {
    "google": "protobuf",
    "PIL": "pillow",
    "skimage": "scikit-image",
    "sklearn": "scikit-learn",
    "tomli_w": "tomli-w",
}


def _imported_packages() -> set[str]:
    found: set[str] = set()
    for path in (ROOT / "fedeye").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                found.add(node.module.split(".")[0])
    return {name for name in found if name not in sys.stdlib_module_names and name != "fedeye"}


def _declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    return {re.split(r"[\[<>=!~; ]", spec, maxsplit=1)[0].lower() for spec in project["dependencies"]}


def test_every_import_is_a_declared_dependency() -> None:
    declared = _declared()
    missing = {name for name in _imported_packages() if DISTRIBUTION.get(name, name).lower() not in declared}
    assert not missing, f"imported by fedeye/ but not in [project] dependencies: {sorted(missing)}"
