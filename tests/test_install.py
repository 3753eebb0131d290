"""The light install: every package the code imports is declared, the train extra's only where a feature needs
it, and the built wheel runs push, pull, convert, card, ls, prune, watch and localhub without torch, transformers,
peft or accelerate (an import blocker hides them), with its templates inside."""

from __future__ import annotations

import ast
import functools
import importlib.metadata
import json
import os
import re
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import Parser
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import HfApi

from hubsync.cli.errors import message_for
from hubsync.core.errors import MissingExtraError
from hubsync.extras import EXTRAS, needs_extra
from hubsync.localhub import RunningHub

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "hubsync"
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
# Modules of a light package that import an extra's package themselves.
NEEDS_EXTRA = {"safetensors.torch": "train"}
# What the light commands run: every import they make, at module level or in a function, is followed from these.
LIGHT_ENTRIES = ("hubsync.cli", "hubsync.action", "hubsync.localhub", "hubsync.__main__")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(requirement: str) -> str:
    found = re.match(r"[A-Za-z0-9._-]+", requirement)
    assert found, requirement
    return canonical(found.group())


def declared(project: dict[str, Any]) -> tuple[set[str], dict[str, set[str]]]:
    """The light set's distribution names, and each extra's (hubsync[train] in another extra expanded)."""
    optional: dict[str, list[str]] = project.get("optional-dependencies", {})

    def expand(extra: str) -> set[str]:
        names = set()
        for requirement in optional[extra]:
            own = re.fullmatch(r"hubsync\[([a-z0-9,-]+)\]", requirement.replace(" ", ""))
            names |= set().union(*map(expand, own.group(1).split(","))) if own else {requirement_name(requirement)}
        return names

    return {requirement_name(r) for r in project["dependencies"]}, {extra: expand(extra) for extra in optional}


@dataclass(frozen=True)
class Import:
    where: str  # hubsync/convert/state.py:190
    module: str  # as imported: safetensors.torch, or hubsync.core.errors for a relative import
    top_level: bool  # runs when the module is imported, not inside a function
    extra: str | None  # the extra of the `with needs_extra(...)` around it
    type_checking: bool


def module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, name: str, shown: str) -> list[Import]:
    """Every import in a module's source, with where it runs: at module level or in a function, inside a
    `with needs_extra(feature, extra)` (its extra), under `if TYPE_CHECKING:`."""
    package = name if shown.endswith("__init__.py") else name.rpartition(".")[0]
    found: list[Import] = []

    def needs_extra_of(node: ast.With) -> str | None:
        for item in node.items:
            call = item.context_expr
            if isinstance(call, ast.Call) and ast.unparse(call.func).rpartition(".")[2] == "needs_extra":
                given = call.args[1] if len(call.args) > 1 else next((k.value for k in call.keywords), None)
                return given.value if isinstance(given, ast.Constant) else "train"
        return None

    def visit(node: ast.AST, top: bool, extra: str | None, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            at_top, inner_extra, inner_typing = top, extra, typing_only
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
                at_top = False
            elif isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test):
                inner_typing = True
            elif isinstance(child, ast.With):
                inner_extra = needs_extra_of(child) or extra
            modules: list[str] = []
            if isinstance(child, ast.Import):
                modules = [alias.name for alias in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    anchor = package.split(".")[: len(package.split(".")) - (child.level - 1)]
                    base = ".".join([*anchor, *([child.module] if child.module else [])])
                modules = [base, *(f"{base}.{alias.name}" for alias in child.names if base.startswith("hubsync"))]
            line = f"{shown}:{getattr(child, 'lineno', '?')}"
            found.extend(Import(line, m, at_top, inner_extra, inner_typing) for m in modules)
            visit(child, at_top, inner_extra, inner_typing)

    visit(ast.parse(source), True, None, False)
    return found


def package_imports(package: Path = PACKAGE) -> dict[str, list[Import]]:
    return {
        module_name(p, package): imports_of(
            p.read_text(), module_name(p, package), p.relative_to(package.parent).as_posix()
        )
        for p in sorted(package.rglob("*.py"))
    }


def third_party(module: str) -> bool:
    root = module.partition(".")[0]
    return root not in sys.stdlib_module_names and root != "hubsync"


@functools.cache
def installed() -> dict[str, list[str]]:
    return dict(importlib.metadata.packages_distributions())


def distributions(module: str) -> set[str]:
    return {canonical(d) for d in installed().get(module.partition(".")[0], [])}


def extra_needed(module: str, light: set[str], extras: dict[str, set[str]]) -> str | None:
    """The extra an import needs (None: the light set has it)."""
    if module in NEEDS_EXTRA:
        return NEEDS_EXTRA[module]
    names = distributions(module)
    if names & light:
        return None
    return next((extra for extra, members in extras.items() if names & members), None)


def undeclared(found: dict[str, list[Import]], project: dict[str, Any]) -> list[str]:
    """Imports of a package that is not declared where it runs: the light set, or the extra of its needs_extra
    (under TYPE_CHECKING, any extra)."""
    light, extras = declared(project)
    problems = []
    for imp in (i for imports in found.values() for i in imports if third_party(i.module)):
        names = distributions(imp.module)
        if not names:
            problems.append(f"{imp.where}: {imp.module} is imported, and no installed distribution provides it")
            continue
        allowed = light | (set().union(*extras.values()) if imp.type_checking else extras.get(imp.extra or "", set()))
        if not names & allowed:
            where = f"hubsync[{imp.extra}]" if imp.extra else "[project.dependencies]"
            problems.append(f"{imp.where}: {imp.module} ({', '.join(sorted(names))}) is not declared in {where}")
    return problems


def extras_outside_needs_extra(found: dict[str, list[Import]], project: dict[str, Any]) -> list[str]:
    """Imports of an extra's package that run outside `with needs_extra(feature, that extra)`: a missing package
    would be an ImportError traceback instead of one line naming the extra to install."""
    light, extras = declared(project)
    problems = []
    for imp in (i for imports in found.values() for i in imports if third_party(i.module) and not i.type_checking):
        extra = extra_needed(imp.module, light, extras)
        if extra is not None and imp.extra != extra:
            problems.append(f"{imp.where}: {imp.module} is the {extra} extra's, imported outside needs_extra")
    return problems


def light_modules_importing_extras(
    found: dict[str, list[Import]], project: dict[str, Any], entries: tuple[str, ...] = LIGHT_ENTRIES
) -> list[str]:
    """Modules that the light commands import (every import, followed from `entries`; and the package itself at
    module level) that import an extra's package at module level: importing them would fail without it."""
    light, extras = declared(project)

    def reach(starts: list[str], follow_functions: bool) -> set[str]:
        seen: set[str] = set()
        todo = [m for m in starts if m in found]
        while todo:
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
            # An import under `if TYPE_CHECKING:` never runs (hubsync's own of hubsync.callback, say).
            targets = [i.module for i in found[module] if (follow_functions or i.top_level) and not i.type_checking]
            todo += [m for m in parents + targets if m in found]
        return seen

    starts = [m for m in found if m.startswith(tuple(f"{e}." for e in entries)) or m in entries]
    light_modules = reach(starts, True) | reach(["hubsync"], False)
    return [
        f"{imp.where}: {imp.module} is imported at module level by {module}, which the light commands import"
        for module in sorted(light_modules)
        for imp in found[module]
        if imp.top_level and third_party(imp.module) and extra_needed(imp.module, light, extras)
    ]


def test_every_package_the_code_imports_is_declared() -> None:
    found = package_imports()
    assert len(found) > 30 and any(
        i.module == "httpx2" for i in found["hubsync.hub.client"]
    )  # the walk sees what is there
    assert undeclared(found, PROJECT) == []


def test_the_train_extra_is_imported_only_inside_needs_extra() -> None:
    found = package_imports()
    guarded = [i for imports in found.values() for i in imports if i.extra == "train" and third_party(i.module)]
    assert {i.module.partition(".")[0] for i in guarded} >= {"torch", "transformers", "peft"}
    assert extras_outside_needs_extra(found, PROJECT) == []


def test_the_light_commands_import_no_extra_at_module_level() -> None:
    found = package_imports()
    assert light_modules_importing_extras(found, PROJECT) == []


def test_hubsync_extras_names_the_modules_of_each_extra_in_pyproject() -> None:
    _, extras = declared(PROJECT)
    for extra, modules in EXTRAS.items():
        assert {d for m in modules for d in distributions(m)} == extras[extra]


def test_the_checks_find_what_they_look_for(tmp_path: Path) -> None:
    """Each check fails on a module that breaks its rule, and passes the same code written as the rules say."""
    package = tmp_path / "hubsync"
    (package / "cli").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "cli" / "__init__.py").write_text("def push():\n    from hubsync import train\n")
    (package / "train.py").write_text("import torch\nimport httpx2\nimport markdown_it\n")
    found = package_imports(package)
    project = {"dependencies": ["httpx2"], "optional-dependencies": {"train": ["torch==2.13.0"]}}
    assert [p.split(": ", 1)[1] for p in undeclared(found, project)] == [
        "torch (torch) is not declared in [project.dependencies]",
        "markdown_it (markdown-it-py) is not declared in [project.dependencies]",
    ]
    assert [p.split(": ", 1)[1] for p in extras_outside_needs_extra(found, project)] == [
        "torch is the train extra's, imported outside needs_extra"
    ]
    assert len(light_modules_importing_extras(found, project, ("hubsync.cli",))) == 1

    guarded = "def run():\n    with needs_extra('training'):\n        import torch\n"
    (package / "train.py").write_text("from hubsync.extras import needs_extra\n\n" + guarded)
    found = package_imports(package)
    assert undeclared(found, project) == []
    assert extras_outside_needs_extra(found, project) == []
    assert light_modules_importing_extras(found, project, ("hubsync.cli",)) == []


@pytest.mark.parametrize("module", sorted(EXTRAS["train"]))
def test_a_missing_package_of_the_extra_is_one_error_naming_the_extra(
    module: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import <module>` now fails as if it were not installed
    with pytest.raises(MissingExtraError) as raised, needs_extra("pulling me/m @ checkpoint-3"):
        __import__(module)
    assert (raised.value.feature, raised.value.extra, raised.value.module) == (
        "pulling me/m @ checkpoint-3",
        "train",
        module,
    )
    assert message_for(raised.value) == (
        f"Error: pulling me/m @ checkpoint-3 needs {module}, which is not installed here. "
        "Install hubsync's train extra: pip install 'hubsync[train]'."
    )


def test_a_missing_package_that_is_not_the_extras_is_raised_as_it_is(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sympy", None)  # torch's own dependency: a broken install, not a light one
    with pytest.raises(ModuleNotFoundError), needs_extra("training"):
        import sympy  # noqa: F401


# The light install, as a sitecustomize on PYTHONPATH: the extra's packages cannot be imported (as if they were not
# installed), in the CLI and in every Python process it starts; each attempt is written to $BLOCKED_LOG.
BLOCKER = """
import os, sys

BLOCKED = {blocked!r}


class NotInstalled:
    @staticmethod
    def find_spec(name, path=None, target=None):
        if name.partition(".")[0] in BLOCKED:
            with open(os.environ["BLOCKED_LOG"], "a") as log:
                log.write(name + "\\n")
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None


sys.meta_path.insert(0, NotInstalled())
"""


def without_extras(site: Path, tmp_path: Path) -> dict[str, str]:
    """The environment of a light install of the wheel's files in `site`: the extras' packages blocked."""
    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER.format(blocked=sorted(EXTRAS["train"])))
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(blocker), str(site)]),
        "BLOCKED_LOG": str(tmp_path / "blocked.log"),
    }


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(ROOT)],
        check=True,
        capture_output=True,
    )
    (built,) = out.glob("hubsync-*.whl")
    return built


@pytest.fixture(scope="module")
def site(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel's files, as pip installs them into site-packages."""
    where = tmp_path_factory.mktemp("site")
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(where)
    return where


def test_the_wheel_requires_only_the_light_set_and_the_rest_as_extras(wheel: Path) -> None:
    with zipfile.ZipFile(wheel) as zf:
        (name,) = [n for n in zf.namelist() if n.endswith(".dist-info/METADATA")]
        metadata = Parser().parsestr(zf.read(name).decode())
    requires = metadata.get_all("Requires-Dist") or []
    always = {requirement_name(r) for r in requires if "extra ==" not in r}
    light, extras = declared(PROJECT)
    assert always == light
    assert always.isdisjoint({"torch", "transformers", "peft", "accelerate"})
    assert {"httpx2", "numpy", "pyyaml", "huggingface-hub", "safetensors", "jinja2", "click"} <= always
    train = {requirement_name(r) for r in requires if re.search(r"""extra\s*==\s*["']train["']""", r)}
    assert train == extras["train"] == {"torch", "transformers", "peft", "accelerate"}
    assert "torch==2.13.0" in {r.split(";")[0].strip().replace(" ", "") for r in requires}
    assert set(metadata.get_all("Provides-Extra") or []) >= {"train", "test"}


def test_templates_ship_inside_the_wheel_and_load_from_it_or_from_a_checkout(
    wheel: Path, site: Path, tmp_path: Path
) -> None:
    with zipfile.ZipFile(wheel) as zf:
        shipped = {n.removeprefix("hubsync/templates/") for n in zf.namelist() if n.startswith("hubsync/templates/")}
    assert shipped == {p.name for p in (ROOT / "templates").glob("*.j2")}
    assert all(name.endswith(".j2") for name in shipped) and shipped
    code = (
        "import hubsync.core.render as r\n"
        "print(r.templates_dir())\n"
        "print(r.render('commit_description.md.j2', version='v', checkpoint='c', step=1, epoch=None,"
        " eval_metrics={}, git_commit=None, files=1, bytes=2).splitlines()[0])\n"
    )
    for path, expected in ((site, site / "hubsync" / "templates"), (ROOT, ROOT / "templates")):
        env = {**os.environ, "PYTHONPATH": str(path)}
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env, cwd=tmp_path
        )
        where, first_line = done.stdout.splitlines()
        assert Path(where) == expected
        assert first_line == "Pushed by hubsync v from `c`."


@dataclass
class Light:
    """The wheel's hubsync run as a command with the train extra's packages hidden."""

    env: dict[str, str]
    cwd: Path
    log: Path

    def __call__(self, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
        done = subprocess.run(
            [sys.executable, "-m", "hubsync", *args], cwd=self.cwd, env=self.env, capture_output=True, text=True
        )
        assert "Traceback" not in done.stderr, done.stderr
        if ok:
            assert done.returncode == 0, (args, done.stdout, done.stderr)
        return done

    def blocked(self) -> list[str]:
        """The extra's modules that something tried to import since the last call; then forgets them."""
        tried = self.log.read_text().split() if self.log.exists() else []
        self.log.unlink(missing_ok=True)
        return tried


@pytest.fixture
def light(site: Path, hub: RunningHub, tmp_path: Path) -> Iterator[Light]:
    work = tmp_path / "work"
    work.mkdir()
    env = {**without_extras(site, tmp_path), "HF_ENDPOINT": hub.endpoint, "HF_TOKEN": hub.token}
    run = Light(env, work, tmp_path / "blocked.log")
    where = subprocess.run(
        [sys.executable, "-c", "import hubsync, sys; print(hubsync.__file__); import torch"],
        env=env,
        cwd=work,
        capture_output=True,
        text=True,
        check=False,
    )
    assert where.stdout.strip() == str(site / "hubsync" / "__init__.py")  # the wheel's code, not the checkout's
    assert where.returncode == 1 and "ModuleNotFoundError: No module named 'torch'" in where.stderr
    assert run.blocked() == ["torch"]
    yield run


@pytest.mark.slow
def test_the_light_install_pushes_converts_cards_lists_pulls_watches_and_prunes(
    light: Light, checkpoint: Path, bin_run: Path, run: Path, api: HfApi, tmp_path: Path
) -> None:
    light("push", str(checkpoint), "--repo", "me/light")
    assert light.blocked() == []

    state = bin_run / "checkpoint-10"
    assert (state / "adapter_model.bin").exists() and (state / "optimizer.pt").exists()
    light("push", str(state), "--repo", "me/light-state", "--training-state", "keep")
    on_hub = {f for f in api.list_repo_files("me/light-state", revision="checkpoint-10")}
    assert {"adapter_model.safetensors", "optimizer.json", "optimizer.safetensors"} <= on_hub
    assert not {f for f in on_hub if f.endswith((".bin", ".pt", ".pth"))}

    light("convert", str(state), "-o", str(tmp_path / "converted"))
    assert (tmp_path / "converted" / "adapter_model.safetensors").stat().st_size > 0
    light("card", str(checkpoint), "-o", str(tmp_path / "card" / "README.md"))
    assert "checkpoint-30" in (tmp_path / "card" / "README.md").read_text()
    assert light.blocked() == []

    listed = json.loads(light("ls", "me/light", "--json").stdout)
    assert [r["revision"] for r in listed] == ["checkpoint-30"]
    pulled = json.loads(light("pull", "me/light", "--to", str(tmp_path / "pulled"), "--json").stdout)
    assert (tmp_path / "pulled" / "checkpoint-30" / "adapter_model.safetensors").read_bytes() == (
        checkpoint / "adapter_model.safetensors"
    ).read_bytes()
    assert pulled["resumable"] is False
    assert light.blocked() == []

    refused = light("pull", "me/light-state", "--to", str(tmp_path / "state"), ok=False)
    assert refused.returncode == 1
    assert refused.stderr.strip() == (
        "Error: pulling me/light-state @ checkpoint-10 (it writes optimizer.pt, rng_state.pth and scheduler.pt back "
        "from their pickle-free form) needs torch, which is not installed here. Install hubsync's train "
        "extra: pip install 'hubsync[train]'."
    )
    assert light.blocked() == ["torch"]
    assert not (tmp_path / "state").exists() or not any((tmp_path / "state").iterdir())  # nothing fetched

    watch = ["watch", str(run), "--repo", "me/light-run", "--interval", "0.05", "--idle-timeout", "5", "--nice", "0"]
    light(*watch)
    assert [r["revision"] for r in json.loads(light("ls", "me/light-run", "--json").stdout)] == [
        "checkpoint-10",
        "checkpoint-20",
        "checkpoint-30",
    ]
    light("prune", "me/light-run", "--keep", "1")
    branches = {b.name for b in api.list_repo_refs("me/light-run").branches}
    assert branches == {"main", "checkpoint-30"}
    assert light.blocked() == []


def test_the_light_install_serves_a_local_hub(site: Path, tmp_path: Path) -> None:
    env = without_extras(site, tmp_path)
    proc = subprocess.Popen(
        [sys.executable, "-m", "hubsync", "localhub", "--root", str(tmp_path / "hub")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        settings = dict(proc.stdout.readline().strip().split("=", 1) for _ in range(2))
        api = HfApi(endpoint=settings["HF_ENDPOINT"], token=settings["HF_TOKEN"])
        api.create_repo("me/served", private=True)
        assert api.model_info("me/served").private
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0
    assert not (tmp_path / "blocked.log").exists()


@pytest.mark.parametrize(
    ("args", "feature"),
    [
        (["hubsync.tinyrun", "out/run"], "the tiny training run (hubsync.tinyrun)"),
        (["hubsync.demo"], "the tiny training run (hubsync.tinyrun)"),  # the demo's first step
    ],
)
def test_the_training_tools_say_which_extra_they_need(
    args: list[str], feature: str, site: Path, tmp_path: Path
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", *args],
        env=without_extras(site, tmp_path),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines()[-1].startswith(f"Error: {feature} needs ")
    assert done.stderr.splitlines()[-1].endswith(" Install hubsync's train extra: pip install 'hubsync[train]'.")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "out").exists()
