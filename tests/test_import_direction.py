"""Dependencies point one way: no two modules of pipelines/ import each other (at the top or inside a
function), so each can be read, tested and changed from its own dependencies down."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO


def _imports(root: Path) -> dict[str, set[str]]:
    out = {}
    for path in (root / "pipelines").rglob("*.py"):
        parts = path.relative_to(root).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        deps = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = ".".join(package[: len(package) - node.level + 1])
                    module = f"{base}.{node.module}" if node.module else base
                elif (node.module or "").startswith("pipelines"):
                    module = node.module
                else:
                    continue
                deps |= {module, *(f"{module}.{a.name}" for a in node.names)}
            elif isinstance(node, ast.Import):
                deps |= {a.name for a in node.names if a.name.startswith("pipelines")}
        out[name] = deps
    return out


def _circles(root: Path) -> list[tuple[str, str]]:
    mods = _imports(root)
    return [
        (a, b)
        for a in sorted(mods)
        for b in sorted(mods)
        if a < b
        and b in mods[a]
        and a in mods[b]
        # a package naming its own submodules (re-exports, `from . import x`) is not a circle
        and not (b.startswith(a + ".") or a.startswith(b + "."))
    ]


def test_no_two_modules_import_each_other():
    assert _circles(REPO) == []


def test_a_circle_hidden_in_a_function_is_found(tmp_path):
    pkg = tmp_path / "pipelines"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "run.py").write_text("from pipelines.validate import check\n")
    (pkg / "validate.py").write_text("def check():\n    from .run import finish\n")
    assert _circles(tmp_path) == [("pipelines.run", "pipelines.validate")]
