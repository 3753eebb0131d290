"""Dependencies point inward: planning code imports neither the Hub module nor the CLI."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "hubsync"


def imported_modules(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            prefix = "hubsync." + path.parent.relative_to(PACKAGE).as_posix().replace("/", ".") if node.level else ""
            found.add(f"{prefix}.{node.module}" if node.level else node.module)
    return found


def test_core_imports_no_hub_cli_or_huggingface_hub() -> None:
    files = sorted((PACKAGE / "core").rglob("*.py"))
    assert files
    for path in files:
        for module in imported_modules(path):
            assert not module.startswith(("hubsync.hub", "hubsync.cli", "huggingface_hub", "torch")), (path, module)


def test_only_the_client_module_builds_huggingface_hub_operations() -> None:
    users = {
        path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py") if "CommitOperation" in path.read_text()
    }
    assert users == {"hub/client.py"}


def test_the_hub_package_does_not_import_the_cli() -> None:
    for path in sorted((PACKAGE / "hub").rglob("*.py")):
        assert not any(m.startswith("hubsync.cli") for m in imported_modules(path)), path
