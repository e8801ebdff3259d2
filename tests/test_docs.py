"""The README and docs/ name only what exists, and speak of the project, not of its making.

Every ``make`` target, ``python -m`` module, dotted ``seqmnist.*`` name, config group option
(``cell=gru``, ``hydra/launcher=joblib``), repository path and relative link (with its
anchor) that a page names is looked up; so are the pages the README's index lists. A page
that speaks of issue numbers, commits or the machines it was written on is refused.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# The subjects a newcomer looks for; each has a page the README links to.
SUBJECTS = [
    "training.md",
    "resuming.md",
    "sweeps-and-search.md",
    "clusters.md",
    "tracking.md",
    "using-a-model.md",
    "answering-early.md",
    "results.md",
    "performance.md",
    "development.md",
]
# Words about how the project was developed rather than about the project.
DEVELOPMENT_TALK = {
    r"\b(issue|ticket|PR) ?#?\d+": "an issue number",
    r"\bcommit [0-9a-f]{7,40}\b|\b[0-9a-f]{7,40}\b \(the code": "a commit",
    r"\bsessions?\b": "a development session",
    r"\.\./shared\b": "the development machines' shared folder",
    r"\bthis README's commit\b|\bbefore this change\b|\bthe previous table\b": "an earlier "
    "version of the docs",
    r"\b(our|the) (development|dev) machines?\b|\bavailable to (us|the developers)\b": "the "
    "development machines",
    r"\bno GPU (yet|so far)\b|\bnot measured yet\b": "what the developers had not done yet",
}
# Paths a page may name that are made by running the project, not kept in the repository.
MADE_BY_RUNS = ("outputs/", "data/", ".venv", "$", "~", "/")
PATH_ROOTS = ("conf/", "src/", "tests/", "scripts/", "docs/", ".ci/", "Makefile", "pyproject.toml")


def code_of(text: str) -> list[str]:
    """The inline code spans and fenced blocks of a Markdown page."""
    blocks = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.S | re.M)
    rest = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.S | re.M)
    return blocks + re.findall(r"`([^`\n]+)`", rest)


def make_targets() -> set[str]:
    makefile = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][\w-]*):", makefile, flags=re.M))


def named_make_targets(code: str) -> set[str]:
    """``make test XDIST= PYTEST_ARGS=...`` -> {"test"}: the first word that is no variable."""
    named = set()
    for words in re.findall(r"(?:^|[\s;(&|])make((?: +[^\s;|&)#]+)+)", code, flags=re.M):
        for word in words.split():
            if "=" not in word and not word.startswith(("-", '"', "'")):
                named.add(word.rstrip(":.,"))
                break
    return named


def python_modules(code: str) -> set[str]:
    return set(re.findall(r"python3? -m ((?:seqmnist|hydra_plugins)[\w.]*)", code))


def dotted_names(code: str) -> set[str]:
    """``seqmnist.models.cpu_gru`` and ``seqmnist.data.datamodule.RULES``, not file names."""
    names = re.findall(r"(?<![\w/.])(seqmnist(?:\.\w+)+)", code)
    return {n for n in names if not n.endswith((".yaml", ".py", ".md", ".json"))}


def resolves(dotted: str) -> bool:
    """Import the longest module prefix, then read the rest as attributes."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ModuleNotFoundError:
            continue
        for attr in parts[cut:]:
            if not hasattr(obj, attr):
                return False
            obj = getattr(obj, attr)
        return True
    return False


@cache
def group_options() -> dict[str, set[str]]:
    """Every config group of conf/train.yaml's search path (plugins' groups included)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    groups: dict[str, set[str]] = {}
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        loader = GlobalHydra.instance().config_loader()

        def walk(parent: str) -> None:
            for name in loader.list_groups(parent):
                group = f"{parent}/{name}" if parent else name
                groups[group] = set(loader.get_group_options(group))
                walk(group)

        walk("")
    return groups


def named_group_options(code: str) -> set[tuple[str, str]]:
    """``cell=gru``, ``-m cell=rnn,lstm``, ``hydra/launcher=joblib``; not ``cell.x=`` keys."""
    named = set()
    groups = group_options()
    for group, values in re.findall(r"(?<![\w./+-])([a-z_]+(?:/[a-z_]+)*)=([\w,]+)", code):
        if group not in groups:
            continue
        # NAME, X: placeholders
        named |= {(group, v) for v in values.split(",") if v and v != "null" and not v.isupper()}
    return named


def repository_paths(code: str) -> set[str]:
    """Paths in the repository a page names: ``conf/cell/lstm.yaml``, ``tests/test_x.py``."""
    found = set()
    for token in re.findall(r"[\w./-]+", code):
        token = token.rstrip(".,:")
        if token.startswith(PATH_ROOTS) and not any(c in token for c in "<*{"):
            found.add(token.split("::")[0])
    return found


def github_anchor(heading: str) -> str:
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors_of(page: Path) -> set[str]:
    text = re.sub(r"^```[^\n]*\n.*?^```", "", page.read_text(), flags=re.S | re.M)
    return {github_anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}


def problems_of(page: Path) -> list[str]:
    """Everything a page names that does not exist, and every word about its making."""
    text = page.read_text()
    code = "\n".join(code_of(text))
    problems = []
    for target in sorted(named_make_targets(code) - make_targets()):
        problems.append(f"make target `{target}` is not in the Makefile")
    for module in sorted(python_modules(code)):
        if importlib.util.find_spec(module) is None:
            problems.append(f"`python -m {module}`: no such module")
    for name in sorted(dotted_names(code) - python_modules(code)):  # each named once
        if not resolves(name):
            problems.append(f"`{name}`: no such module or attribute")
    groups = group_options()
    for group, option in sorted(named_group_options(code)):
        if option not in groups[group]:
            problems.append(f"`{group}={option}`: no such option of config group {group}/")
    for path in sorted(repository_paths(code)):
        if not (ROOT / path).exists():
            problems.append(f"`{path}`: no such file or folder in the repository")
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        linked = (page.parent / file).resolve() if file else page
        if not linked.exists():
            problems.append(f"link ({target}): no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors_of(linked):
            problems.append(f"link ({target}): no heading of that anchor")
    for placeholder in re.findall(r"\{\{\w*\}\}|\bTODO\b|\bTBD\b", text):
        problems.append(f"an unfilled placeholder: {placeholder}")
    prose = text
    for pattern, what in DEVELOPMENT_TALK.items():
        for match in re.finditer(pattern, prose, flags=re.I):
            problems.append(f"speaks of {what}: {match.group(0)!r}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_a_page_names_only_what_exists_and_speaks_of_the_project(page: Path) -> None:
    assert problems_of(page) == []


def test_the_readme_indexes_every_docs_page_and_stays_short() -> None:
    readme = (ROOT / "README.md").read_text()
    pages = {p.name for p in (ROOT / "docs").glob("*.md")}
    assert pages == set(SUBJECTS), "docs/ pages and the subjects a newcomer looks for differ"
    linked = set(re.findall(r"\]\(docs/([\w-]+\.md)\)", readme))
    assert linked == pages, f"pages the README does not link: {pages - linked}"
    assert len(readme.splitlines()) <= 160


def test_the_check_finds_what_does_not_exist(tmp_path: Path) -> None:
    """Planted faults of every kind are each found; their good twins are not."""
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## A heading\n\n"
        "```bash\nmake trian\nmake test XDIST= PYTEST_ARGS=-x\n"
        "python -m seqmnist.trian cell=transformer hydra/launcher=joblib\n"
        "python -m seqmnist.train -m cell=rnn,gruu optimizer=adam\n```\n\n"
        "`seqmnist.models.nets.NO_SUCH` `seqmnist.models.cpu_gru` `conf/cell/lsmt.yaml` "
        "`conf/cell/lstm.yaml` `outputs/train/runs/<time>`\n\n"
        "[ok](#a-heading) [bad anchor](#no-heading) [bad file](nowhere.md)\n\n"
        "As issue 12 said, in commit 95834dd, in this session, with ../shared/data.\n"
        "The time is {{TIME}}.\n"
    )
    found = "\n".join(problems_of(page))
    for fault in [
        "`trian` is not in the Makefile",
        "python -m seqmnist.trian",
        "`cell=transformer`",
        "`cell=gruu`",
        "seqmnist.models.nets.NO_SUCH",
        "conf/cell/lsmt.yaml",
        "(#no-heading)",
        "(nowhere.md)",
        "an issue number",
        "a commit",
        "a development session",
        "shared folder",
        "placeholder: {{TIME}}",
    ]:
        assert fault in found
    for good in ["`test`", "joblib", "`cell=rnn`", "adam", "cpu_gru", "lstm.yaml", "outputs/"]:
        assert good not in found, good
    assert len(problems_of(page)) == 13


def table_rows(text: str) -> dict[str, list[str]]:
    """``| `name` | a | b |`` rows of a Markdown text: name -> cells."""
    rows = {}
    for line in text.splitlines():
        match = re.match(r"\| `(\w+)` \|(.*)\|$", line)
        if match:
            rows[match.group(1)] = [c.strip() for c in match.group(2).split("|")]
    return rows


def test_the_readme_results_are_the_generated_ones() -> None:
    """The README's headline table quotes docs/results.md's generated table, cell for cell."""
    from seqmnist.reports.experiments import RESULTS_MARKERS

    page = (ROOT / "docs" / "results.md").read_text()
    start, end = (f"\n{marker}\n" for marker in RESULTS_MARKERS)  # the lines, not the prose
    generated = table_rows(page.split(start)[1].split(end)[0])
    readme = table_rows((ROOT / "README.md").read_text().split("## Results")[1].split("\n## ")[0])
    assert readme, "the README has no results table"
    for name, cells in readme.items():
        assert name in generated, f"{name}: not in the generated table"
        accuracy, seconds = generated[name][2], generated[name][5]  # test acc %, train time
        assert cells[-2:] == [accuracy, seconds], f"{name}: {cells[-2:]} != {[accuracy, seconds]}"
