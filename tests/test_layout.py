"""Dependencies point inward, checked for every module of hubsync by parsing its imports (those inside functions
too): planning code (core) imports none of the rooms around it, conversion does not reach the Hub, the local Hub
shares no code with hubsync's Hub client, and only the programs that print (the CLI, and the front ends that
reuse its messages) import the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hubsync"
MODULES = sorted(PACKAGE.rglob("*.py"))
# Programs of their own that print as the CLI does: `python -m hubsync`, the GitHub Action, the demo, tinyrun.
FRONT_ENDS = {"hubsync.__main__", "hubsync.action", "hubsync.demo", "hubsync.tinyrun"}
# Each room, and what no module in it may import (a name and everything under it).
FORBIDDEN = {
    "hubsync.core": ("hubsync.convert", "hubsync.localhub", "hubsync.hub", "hubsync.cli", "huggingface_hub", "torch"),
    "hubsync.convert": ("hubsync.hub", "hubsync.localhub", "hubsync.cli", "huggingface_hub"),
    "hubsync.localhub": ("hubsync.hub", "hubsync.cli", "hubsync.convert", "huggingface_hub"),
    "hubsync.hub": ("hubsync.cli", "hubsync.localhub"),
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module `path` imports, relative imports resolved; for `from X import y`, both X and X.y (y may be a
    module)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return found


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_import_parser_resolves_relative_imports() -> None:
    found = imported_modules(PACKAGE / "hub" / "push.py")
    assert "hubsync.hub.client" in found and "hubsync.core.plan" in found
    assert "hubsync.core.checkpoint" in imported_modules(PACKAGE / "core" / "conversion.py")
    assert {module_name(p) for p in MODULES} >= {"hubsync", "hubsync.core", "hubsync.hub.push", "hubsync.cli.app"}


@pytest.mark.parametrize("path", MODULES, ids=module_name)
def test_every_module_imports_only_inward(path: Path) -> None:
    name = module_name(path)
    imports = imported_modules(path)
    for room, forbidden in FORBIDDEN.items():
        if within(name, room):
            bad = sorted(m for m in imports if any(within(m, f) for f in forbidden))
            assert not bad, f"{name} imports {bad}"
    if not within(name, "hubsync.cli") and name not in FRONT_ENDS:
        assert not any(within(m, "hubsync.cli") for m in imports), f"{name} imports the CLI"


def test_only_the_client_module_builds_huggingface_hub_operations() -> None:
    users = {path.relative_to(PACKAGE).as_posix() for path in MODULES if "CommitOperation" in path.read_text()}
    assert users == {"hub/client.py"}
