"""DESIGN.md's floors: a module imports only from its own floor or the floors below it."""

from __future__ import annotations

import ast
from pathlib import Path

FLOORS = {"diffusion": 1, "nn": 2, "encoders": 3, "systems": 4, "data": 5, "eval": 5, "train": 5, "io": 5,
          "cli": 6, "serve": 6, "api": 6}
PACKAGE = Path(__file__).resolve().parents[1] / "t2i"
# Known breaks, each a lazy import of a file reader that lives in t2i/io: (importing file, imported module).
ALLOWED = {
    ("encoders/minilm.py", "t2i.io.bert"),
    ("encoders/t5.py", "t2i.io.t5"),
    ("systems/base.py", "t2i.io.weights"),
}
# Leaves: modules that import nothing from t2i, so any floor may import them (images in and out, once).
LEAVES = {"t2i.io.images", "t2i.config"}


def _floor(module: str) -> int | None:
    parts = module.split(".")
    return FLOORS.get(parts[1]) if parts[0] == "t2i" and len(parts) > 1 else None


def test_no_module_imports_from_a_higher_floor():
    breaks = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        own = FLOORS.get(rel.split("/")[0].removesuffix(".py"))
        if own is None:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level else [])
            for name in names:
                floor = _floor(name)
                if floor is not None and floor > own and (rel, name) not in ALLOWED and name not in LEAVES:
                    breaks.append(f"{rel} (floor {own}) imports {name} (floor {floor})")
    assert not breaks, "\n".join(breaks)
    assert len(list(PACKAGE.rglob("*.py"))) > 50  # the scan saw the package


def test_leaves_import_nothing_from_t2i():
    for leaf in LEAVES:
        path = PACKAGE / (leaf.removeprefix("t2i.").replace(".", "/") + ".py")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                assert not node.module.startswith("t2i"), f"{leaf} imports {node.module}"


MAX_PARAMETERS = 8  # DESIGN.md: no 40-argument constructors; group related values into a frozen dataclass


def test_no_function_takes_more_than_eight_parameters():
    """Positional + keyword-only parameters, self / cls aside (*args / **kwargs are not counted: a catch-all
    must end in a dataclass constructor, as save_checkpoint's does)."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
                names = names[1:] if names[:1] in (["self"], ["cls"]) else names
                if len(names) > MAX_PARAMETERS:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} takes {len(names)}")
    assert not long, "\n".join(long)
