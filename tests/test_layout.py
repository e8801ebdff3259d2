"""The architecture as the package layout shows it: data flows one way (files -> data ->
models -> training -> run dir -> reports), no lower layer imports a higher one, each path and
each library internal has one home, and the Layout of docs/development.md names every module."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "seqmnist"
PLUGINS = ROOT / "src" / "hydra_plugins"
# Lower number = lower layer; packages of one layer sit side by side and read neither other.
LAYERS = {
    "core": 0,
    "data": 1,
    "models": 1,
    "training": 2,
    "jobs": 3,
    "inference": 3,
    "reports": 4,
    "bench": 5,
}
COMMAND = 9  # the modules at the top of the package: what users type, and their one shell
COMMANDS = {"train", "evaluate", "predict", "export", "demo", "report", "results"}
# The sweeper's implementation launches jobs: it may use the layers up to jobs/.
PLUGIN_IMPL = 3


def layer_of(module: str) -> int:
    """``seqmnist.data.idx`` -> 1; a command or the shell -> 9."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    if top in LAYERS:
        return LAYERS[top]
    assert top in COMMANDS | {"shell", ""}, f"{module}: not in a known layer; add it to LAYERS"
    return COMMAND


def imported(path: Path) -> list[tuple[str, bool]]:
    """``(module, at module level)`` for each import in ``path`` (with ``from x import y``
    also giving ``x.y``, in case y is a module)."""
    tree = ast.parse(path.read_text())
    top_level = {id(n) for n in tree.body}
    found = []
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        found += [(n, id(node) in top_level) for n in names]
    return found


def ours(path: Path) -> set[str]:
    return {m for m, _ in imported(path) if m.split(".")[0] == "seqmnist" and m != "seqmnist"}


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    return ".".join(p for p in rel.parts if p != "__init__")


MODULES = sorted(SRC.rglob("*.py"))
PLUGIN_MODULES = sorted(PLUGINS.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    module = module_name(path)
    own = layer_of(module)
    package = module.split(".")[1:2]
    for target in ours(path):
        if target.split(".")[1:2] == package:
            continue  # within its own package
        if own < COMMAND and target.split(".")[1] not in LAYERS:
            # a command's name (seqmnist.train) or a name imported from a package's __init__
            assert not (SRC / f"{target.split('.')[1]}.py").exists(), f"{module} imports {target}"
            continue
        assert layer_of(target) <= own, f"{module} (layer {own}) imports {target}"
        if layer_of(target) == own and own < COMMAND:
            raise AssertionError(f"{module} imports its side-by-side neighbour {target}")
    for target, _ in imported(path):
        assert not target.startswith("hydra_plugins"), f"{module} imports the plugin {target}"


@pytest.mark.parametrize("path", PLUGIN_MODULES, ids=lambda p: str(p.relative_to(PLUGINS)))
def test_the_sweeper_plugin_is_thin_and_its_implementation_lazy(path: Path) -> None:
    """Hydra imports every plugin module not named ``_*`` on every start of every command."""
    if path.name.startswith("_") and path.name != "__init__.py":
        for target in ours(path):
            assert layer_of(target) <= PLUGIN_IMPL, f"{path.name} imports {target}"
        return
    for target, top in imported(path):
        root = target.split(".")[0]
        heavy = root in ("seqmnist", "optuna", "torch", "lightning") or target.endswith("_impl")
        assert not (heavy and top), f"{path.name} imports {target} when Hydra scans plugins"


def test_commands_stay_thin() -> None:
    """The commands compose the parts; the parts live in the packages."""
    for name in [*COMMANDS, "shell"]:
        lines = len((SRC / f"{name}.py").read_text().splitlines())
        assert lines < 330, f"seqmnist/{name}.py has {lines} lines"
    tops = {p.stem for p in SRC.glob("*.py")} - {"__init__", "__main__"}
    assert tops == COMMANDS | {"shell"}, f"top level holds more than the commands: {tops}"


# Private names of libraries (and of other modules of ours) are read in one module, each in
# one tested function; a Hydra node's ``_target_`` is config, not a private attribute.
INTERNALS = SRC / "core" / "internals.py"


def private_reads(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            name = node.attr
            owner = node.value.id if isinstance(node.value, ast.Name) else None
            private = name.startswith("_") and not name.startswith("__")
            if private and name not in ("_target_", "_partial_") and owner not in ("self", "cls"):
                found.append(f"line {node.lineno}: .{name}")
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for a in node.names:
                if a.name.startswith("_") and not a.name.startswith("__"):
                    found.append(f"line {node.lineno}: from {node.module} import {a.name}")
    return found


@pytest.mark.parametrize(
    "path", [*MODULES, *PLUGIN_MODULES], ids=lambda p: str(p.relative_to(SRC.parent))
)
def test_private_names_are_read_only_in_internals(path: Path) -> None:
    if path == INTERNALS:
        assert private_reads(path), "internals.py reads no private name: the test lost its target"
        return
    own = [r for r in private_reads(path) if not _own_module_private(path, r)]
    assert not own, f"{path.name}: {own}; move each into {INTERNALS.name} with a test"


def _own_module_private(path: Path, read: str) -> bool:
    """``module._name`` of a module-level name defined in ``path`` itself (ast sees
    ``SomeClass._private`` on a class of the same file as an attribute read)."""
    name = read.split(".")[-1]
    return (
        re.search(rf"^(def|class) {re.escape(name)}\b|^{re.escape(name)} =", path.read_text(), re.M)
        is not None
    )


# What a run dir holds is named in core/rundir.py alone (the configs: paths.checkpoint_dir).
RUN_DIR_NAMES = {"last.ckpt", "checkpoints", "metrics.json", "resolved_config.yaml"}


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_run_dir_paths_have_one_home(path: Path) -> None:
    if path == SRC / "core" / "rundir.py":
        return
    tree = ast.parse(path.read_text())
    docstrings = {
        id(n.body[0].value)
        for n in ast.walk(tree)
        if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef))
        and n.body
        and isinstance(n.body[0], ast.Expr)
        and isinstance(n.body[0].value, ast.Constant)
    }
    spelled = [
        f"line {n.lineno}: {n.value!r}"
        for n in ast.walk(tree)
        if isinstance(n, ast.Constant) and n.value in RUN_DIR_NAMES and id(n) not in docstrings
    ]
    assert not spelled, f"{path.name} spells a run-dir path: {spelled}; use core.rundir.RunDir"


def layout_block() -> str:
    page = (ROOT / "docs" / "development.md").read_text()
    section = page.split("\n## Layout\n", 1)[1].split("\n## ", 1)[0]
    return section.split("```", 2)[1]


def test_the_layout_page_names_every_module_and_only_those() -> None:
    block = layout_block()
    named = set(re.findall(r"\b([a-z_]+)\.py\b", block))
    files = {p.stem for p in [*MODULES, *PLUGIN_MODULES] if p.stem not in ("__init__", "__main__")}
    assert files - named == set(), f"modules the Layout does not name: {files - named}"
    assert named - files == set(), f"the Layout names missing modules: {named - files}"
    for package in LAYERS:
        assert (SRC / package / "__init__.py").is_file()
        assert re.search(rf"^\s+{package}/", block, re.M), f"{package}/ is not in the Layout"
