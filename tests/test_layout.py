"""The architecture as the package layout shows it: data flows one way, files -> data ->
models -> training -> runs -> commands, and no lower layer imports a higher one."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "seqmnist"
# Lower number = lower layer. Shared leaves (errors, checks, machine, lightning_internals)
# may be imported by anyone; the commands at the top by no one.
LAYERS = {"data": 1, "models": 1, "training": 2, "runs": 3}
COMMANDS = {
    "train",
    "evaluate",
    "predict",
    "export",
    "demo",
    "report",
    "results",
    "bench",
    "gpu_check",
}
LEAVES = {"errors", "checks", "machine", "lightning_internals"}


def layer_of(module: str) -> int:
    """``seqmnist.data.idx`` -> 1; a command -> 9; a leaf -> 0."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else ""
    if top in LAYERS:
        return LAYERS[top]
    if top in COMMANDS:
        return 9
    assert top in LEAVES or top == "", f"{module}: not in a known layer; add it to LAYERS"
    return 0


def imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("seqmnist"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if (SRC.parent / f"{node.module}.{a.name}".replace(".", "/")).exists()
                         or (SRC.parent / (f"{node.module}.{a.name}".replace(".", "/") + ".py"))
                         .exists())  # fmt: skip
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("seqmnist"))
    return found


MODULES = sorted(p for p in SRC.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SRC)))
def test_no_module_imports_a_higher_layer(path: Path) -> None:
    rel = path.relative_to(SRC.parent).with_suffix("")
    module = ".".join(p for p in rel.parts if p != "__init__")
    own = layer_of(module)
    for target in imports(path):
        if target.split(".")[1:2] == module.split(".")[1:2]:
            continue  # within its own package
        assert layer_of(target) <= own, f"{module} (layer {own}) imports {target}"
        # data and models are side by side: neither reads the other.
        if own == 1:
            assert layer_of(target) == 0, f"{module} imports {target}"


def test_commands_stay_thin() -> None:
    """The commands compose the parts; the parts live in the packages."""
    for name in COMMANDS:
        lines = len((SRC / f"{name}.py").read_text().splitlines())
        assert lines < 330, f"seqmnist/{name}.py has {lines} lines"


def test_the_layout_is_what_the_readme_says() -> None:
    readme = (SRC.parents[1] / "README.md").read_text()
    for package in LAYERS:
        assert (SRC / package / "__init__.py").is_file()
        assert f"{package}/" in readme, package
