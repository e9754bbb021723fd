"""Data flow one way: no module of flyprep imports one above it in the flow
(docs/architecture.md). Read from the source with ``ast``: imports inside functions count
too (a lazy import is still a dependency)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "flyprep"

#: Layers, bottom first: a module may import its own layer and those below it.
LAYERS: list[tuple[str, set[str]]] = [
    ("base", {"__init__", "errors", "config", "endpoints", "events", "logs", "memory",
              "states", "workers"}),
    ("sources", {"sources"}),
    ("prep", {"prep"}),
    ("ptyd", {"ptyd"}),
    ("pipeline", {"pipeline"}),
    ("apx", {"apx"}),  # a library of its own: the .apx format, decoding, following files
    ("daemon", {"daemon"}),  # daemon.service: the composition root
    ("sim", {"sim"}),
    ("cli", {"cli"}),
    ("client", {"client"}),  # what reconstruction code imports: reads files, speaks zmq
]


def layer_of(module: str) -> int:
    """The layer of ``module`` (dotted, below ``flyprep``)."""
    for rank, (_, names) in reversed(list(enumerate(LAYERS))):
        if module in names or module.split(".")[0] in names:
            return rank
    raise AssertionError(f"flyprep.{module} is in no layer of {__file__}: add it")


def imports_of(path: Path) -> set[str]:
    """flyprep modules ``path`` imports (dotted, below ``flyprep``)."""
    module = path.relative_to(SRC).with_suffix("").as_posix().replace("/", ".")
    package = module.rsplit(".", 1)[0] if "." in module else ""
    if path.name == "__init__.py":
        package = module.removesuffix(".__init__") if module != "__init__" else ""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".") if package else []
                base = base[:len(base) - (node.level - 1)] if node.level > 1 else base
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and node.module.startswith("flyprep"):
                target = node.module.removeprefix("flyprep").lstrip(".")
            else:
                continue
            if node.module:
                found.add(target or "__init__")
            for alias in [] if node.module else node.names:
                name = f"{target}.{alias.name}".lstrip(".")
                is_module = (SRC / Path(*name.split("."))).with_suffix(".py").exists() or \
                    (SRC / Path(*name.split("."))).is_dir()
                found.add(name if is_module else (target or "__init__"))
        elif isinstance(node, ast.Import):
            found.update(a.name.removeprefix("flyprep.") for a in node.names
                         if a.name.startswith("flyprep."))
    return found


def modules() -> list[Path]:
    return sorted(SRC.rglob("*.py"))


@pytest.mark.parametrize("path", modules(), ids=lambda p: p.relative_to(SRC).as_posix())
def test_no_module_imports_one_above_it(path: Path) -> None:
    module = path.relative_to(SRC).with_suffix("").as_posix().replace("/", ".")
    module = module.removesuffix(".__init__")
    mine = layer_of(module)
    above = {m: LAYERS[layer_of(m)][0] for m in imports_of(path) if layer_of(m) > mine}
    assert not above, f"flyprep.{module} ({LAYERS[mine][0]}) imports from above: {above}"


def test_the_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The parser finds relative, absolute and lazy imports (so the test can fail)."""
    sample = SRC / "sources" / "npy.py"
    assert "errors" not in imports_of(sample)
    live = imports_of(SRC / "sources" / "live.py")
    assert "errors" in live and "sources.scan_dir" in live
    assert layer_of("daemon") > layer_of("pipeline") > layer_of("ptyd") > layer_of("sources")
