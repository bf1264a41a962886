"""What a report is made of: runs as their metrics.json holds them, the columns of a protocol's table, tables and
plots; and the views through which what a method measures of its own joins the report.

A method that measures something beyond the protocol's numbers (`Capabilities.diagnoses`: its `diagnose` hook puts
named results in metrics.json) registers a `DiagnosticView` for each: the columns it adds to protocols' tables,
and the tables and plots it draws from the runs. `report.py` draws every registered view and names none. Imports
nothing that imports the methods, so that a method's file can define its view."""

from __future__ import annotations

import html
import math
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .errors import ClipadaptError
from .paths import safe_name

NUMERIC = re.compile(r"^[-+\d.,± ()]*$")  # cells aligned right; names and words align left


@dataclass
class Run:
    folder: Path
    metrics: dict

    @property
    def method(self) -> str:
        return str(self.metrics.get("method", self.folder.name))

    @property
    def dataset(self) -> str:
        return str(self.metrics.get("dataset", "?"))

    @property
    def seeds(self) -> list[int]:
        seed = self.metrics.get("seed", 1)
        return list(seed) if isinstance(seed, list) else [seed]

    @property
    def weights(self) -> tuple[str, str]:
        """The model and weights the run used, as metrics.json names them."""
        return str(self.metrics.get("model")), str(self.metrics.get("pretrained"))

    def per_seed(self) -> dict[int, dict]:
        """Each seed's own numbers: `per_seed` of a multi-seed run, or the run itself."""
        if isinstance(self.metrics.get("per_seed"), dict):
            return {int(seed): result for seed, result in self.metrics["per_seed"].items()}
        return {self.seeds[0]: self.metrics}


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    note: str = ""

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""] + ([self.note, ""] if self.note else [])
        lines += ["| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns)]
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        return "\n".join(lines)

    def html(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>"
            + "".join(
                f"<td>{html.escape(v)}</td>" if NUMERIC.match(v) else f"<td class='text'>{html.escape(v)}</td>"
                for v in row
            )
            + "</tr>"
            for row in self.rows
        )
        note = f"<p class='note'>{html.escape(self.note)}</p>" if self.note else ""
        table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
        return f"<h3>{html.escape(self.title)}</h3>{note}{table}"


@dataclass
class Plot:
    title: str
    path: Path  # the PNG


@dataclass(frozen=True)
class Column:
    """A column of a protocol's report table. `kind`: `method`, `dataset`, `protocol`, `shots` or `seeds` (the run's
    own), `metric` (metrics.json's `key`, mean ± std over seeds), `pair` ("x (y)": `key` and `reference`, each a
    dotted path into metrics.json, shown where the run has the first part of `key`), `attributes` (one column per
    class attribute of the `key` part of `attribute_accuracy`, headed "HEADER: attribute") or `targets` (one column
    per cross-data-set target)."""

    header: str
    kind: str = "metric"
    key: str = ""
    reference: str = ""


@dataclass(frozen=True)
class ReportTable:
    """A table of the report: the runs of every protocol that names it, in the columns it declares. `position`
    orders the tables of one report."""

    title: str
    columns: tuple[Column, ...]
    position: int
    note: str = ""


@dataclass(frozen=True)
class DiagnosticView:
    """How the report shows the results a method's `diagnose` hook writes under `key` in metrics.json: `columns`
    added to the tables of the named protocols (`(protocol, column)`; shown where one of the table's runs has
    `key`), `tables(runs)` and `plots(runs, folder, taken)` of its own (`save_figure` names their files). `position`
    orders the views' tables and plots in a report."""

    key: str
    position: int
    columns: tuple[tuple[str, Column], ...] = ()
    tables: Callable[[Sequence[Run]], list[Table]] | None = None
    plots: Callable[[Sequence[Run], Path, set[str]], list[Plot]] | None = None


DIAGNOSTIC_VIEWS: dict[str, DiagnosticView] = {}


def register_view(view: DiagnosticView) -> DiagnosticView:
    """Add the view of a diagnostic (a second view of the same key is an error)."""
    if view.key in DIAGNOSTIC_VIEWS:
        raise ClipadaptError(f"a report view of diagnostic '{view.key}' is already registered")
    DIAGNOSTIC_VIEWS[view.key] = view
    return view


def registered_views() -> list[DiagnosticView]:
    return sorted(DIAGNOSTIC_VIEWS.values(), key=lambda view: view.position)


# ---- cells ---------------------------------------------------------------------------------------------------
def number_text(value) -> str:
    """A number with one decimal; `-` for anything else (missing, None, not finite)."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "-"
    return f"{value:.1f}"


def count_text(value) -> str:
    return str(int(value)) if isinstance(value, (int, float)) and float(value).is_integer() else "-"


# ---- plots ---------------------------------------------------------------------------------------------------
def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, folder: Path, name: str, taken: set[str]) -> Path:
    """`fig` as `folder/NAME.png` (a name already `taken` in this report gets `-2`, `-3`, ...), then closed."""
    base = stem = safe_name(name)
    i = 1
    while f"{stem}.png" in taken:  # two runs of the same name
        i += 1
        stem = f"{base}-{i}"
    taken.add(f"{stem}.png")
    path = folder / f"{stem}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return path


def skip_plot(message: str) -> None:
    print(f"clipadapt report: {message}; skipped", file=sys.stderr)
