"""Tables out: Markdown and CSV, one writer each for every report of the project."""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any


def cell_text(value: Any, limit: int = 200) -> str:
    """A value as one Markdown table cell: no pipes, no line breaks."""
    return str(value).replace("|", "/").replace("\n", " ")[:limit]


def markdown_table(
    rows: Sequence[Mapping[str, Any]],
    columns: Sequence[str],
    header: Sequence[str] | None = None,
    fmt: Callable[[str, Any], str] | None = None,
    right: Sequence[str] = (),
) -> str:
    """A Markdown table of ``rows`` (dicts) over ``columns``.

    ``header`` names the columns (default: the keys), ``fmt(key, value)`` formats a value
    (default: the value as text, empty for None), ``right`` lists right-aligned columns.
    """
    show = fmt or (lambda _k, v: "" if v is None else cell_text(v))
    names = list(header) if header is not None else list(columns)
    lines = [
        "| " + " | ".join(names) + " |",
        "| " + " | ".join("---:" if c in right else "---" for c in columns) + " |",
    ]
    lines += ["| " + " | ".join(show(c, r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


def write_csv(
    path: Path, rows: Sequence[Mapping[str, Any] | Sequence[Any]], columns: Sequence[str]
) -> None:
    """``rows`` under the header ``columns``: dict rows by key (extra keys ignored), list
    rows as they are."""
    with Path(path).open("w", newline="") as f:
        if rows and not isinstance(rows[0], Mapping):
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(rows)
            return
        dict_writer = csv.DictWriter(f, fieldnames=list(columns), extrasaction="ignore")
        dict_writer.writeheader()
        dict_writer.writerows(rows)
