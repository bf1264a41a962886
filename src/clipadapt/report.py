"""`clipadapt report RUN_DIR... --out FILE.html`: every run's `metrics.json` under the given folders as tables
(HTML, and markdown beside it) and PNG plots: base / new / HM bars per method, few-shot accuracy against shots
with the seeds' spread, and what the methods' diagnostic views draw (`views.DiagnosticView`). A plot is drawn only
where the runs hold its data: a folder of base2new runs gives bars, fewshot runs at several `--shots` give curves."""

from __future__ import annotations

import html
import json
import math
import os
import re
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

from .errors import ClipadaptError
from .paths import write_text_atomic
from .protocols import PROTOCOL_SPECS, mean_std, trained
from .summary import summarize
from .views import Column, Plot, ReportTable, Run, Table, number_text, pyplot, registered_views, save_figure

COMPARISON_FILE = "comparison.json"  # a table of numbers recorded elsewhere (the demo's pretraining comparison)


def find_runs(paths: Sequence[str | Path]) -> tuple[list[Run], list[tuple[Path, dict]]]:
    """The runs (`metrics.json` files with a protocol) and recorded comparisons (`comparison.json`) under
    `paths`, folders searched recursively, in path order."""
    runs, comparisons, read = [], [], set()
    for path in map(Path, paths):
        if not path.exists():
            raise ClipadaptError(f"{path}: no such run folder or file")
        files = [path] if path.is_file() else sorted(path.rglob("metrics.json")) + sorted(path.rglob(COMPARISON_FILE))
        for file in files:
            if file.resolve() in read:  # folders given inside one another: each file once
                continue
            read.add(file.resolve())
            try:
                content = json.loads(file.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise ClipadaptError(f"{file}: not valid JSON ({e})") from None
            if not isinstance(content, dict):
                continue
            if file.name == COMPARISON_FILE:
                comparisons.append((file, _checked_comparison(file, content)))
            elif content.get("protocol") in PROTOCOL_SPECS:
                runs.append(Run(file.parent, content))
    if not runs and not comparisons:
        raise ClipadaptError(
            "no metrics.json of a `clipadapt run` (nor a comparison.json) under " + ", ".join(map(str, paths))
        )
    return runs, comparisons


def _checked_comparison(file: Path, content: dict) -> dict:
    rows = content.get("rows")
    if (
        not isinstance(rows, dict)
        or not all(isinstance(v, dict) for v in rows.values())
        or not isinstance(content.get("columns"), list)
    ):
        raise ClipadaptError(f"{file}: a comparison needs 'columns' (a list) and 'rows' (name -> column -> value)")
    return content


# ---- tables --------------------------------------------------------------------------------------------------
def _comparison_cell(value) -> str:
    """A recorded comparison's cell: a number, or [mean, std] over seeds."""
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return f"{value[0]:.1f} ± {value[1]:.1f}"
    return number_text(value)


def _cell(metrics: dict, key: str) -> str:
    """`mean ± std` where the run has several seeds, else the value; `-` where there is none."""
    text = number_text(metrics.get(key))
    std = metrics.get(f"{key}_std")
    return f"{text} ± {std:.1f}" if text != "-" and isinstance(std, (int, float)) else text


def _target_cell(run: Run, target: str) -> str:
    """A cross-data-set target's accuracy, with the spread of the seeds' own values for multi-seed runs."""
    result = (run.metrics.get("targets") or {}).get(target)
    if not isinstance(result, dict):
        return "-"
    values = [
        r["targets"][target].get("accuracy")
        for r in run.per_seed().values()
        if isinstance((r.get("targets") or {}).get(target), dict)
    ]
    values = [v for v in values if isinstance(v, (int, float))]
    if len(values) < 2:
        return number_text(result.get("accuracy"))
    return _cell({"accuracy": result.get("accuracy"), "accuracy_std": mean_std(values)[1]}, "accuracy")


def _seeds_text(run: Run) -> str:
    return ",".join(map(str, run.seeds))


def _shots_text(run: Run) -> str:
    if not trained(run.metrics):
        return "-"  # a method that trains nothing (zero-shot)
    shots = run.metrics.get("shots")
    return "all" if shots is None else str(shots)


def write_comparisons(tables: Sequence[dict], folder: Path, name: str, json_path: Path | None = None) -> str:
    """Comparison tables (in comparison.json's form) as markdown, written to `folder/name` and returned; with
    `json_path`, the tables themselves too (what the demo shows as recorded tables)."""
    text = "\n\n".join(table.markdown() for table in build_tables([], [(folder, t) for t in tables]))
    (folder / name).write_text(text + "\n")
    if json_path is not None:
        json_path.write_text(json.dumps(list(tables), indent=1) + "\n")
    return text


EXPANDING_KINDS = ("attributes", "targets")  # column kinds that give one column per name the runs hold


def _column_names(column: Column, runs: Sequence[Run]) -> list[str]:
    """What a column that grows with the data shows one column each of: the class attributes or the targets the
    runs hold (in order of first appearance); [] for a column of its own."""
    if column.kind == "attributes":
        return list(
            dict.fromkeys(a for run in runs for a in (run.metrics.get("attribute_accuracy") or {}).get(column.key, {}))
        )
    if column.kind == "targets":
        return list(dict.fromkeys(t for run in runs for t in (run.metrics.get("targets") or {})))
    return []


def _lookup(metrics: dict, path: str):
    """The value at a dotted `path` of metrics.json (`part.key`), or None."""
    value = metrics
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _pair_cell(run: Run, column: Column) -> list[str]:
    held = run.metrics.get(column.key.split(".")[0])
    if not held:
        return ["-"]
    return [f"{number_text(_lookup(run.metrics, column.key))} ({number_text(_lookup(run.metrics, column.reference))})"]


# A row's cells, by column kind (`views.Column`): the run, the column and `_column_names` give them.
CELLS = {
    "method": lambda run, column, names: [run.method],
    "dataset": lambda run, column, names: [run.dataset],
    "protocol": lambda run, column, names: [str(run.metrics["protocol"])],
    "shots": lambda run, column, names: [_shots_text(run)],
    "seeds": lambda run, column, names: [_seeds_text(run)],
    "metric": lambda run, column, names: [_cell(run.metrics, column.key)],
    "pair": lambda run, column, names: _pair_cell(run, column),
    "attributes": lambda run, column, names: [
        number_text((run.metrics.get("attribute_accuracy") or {}).get(column.key, {}).get(a)) for a in names
    ],
    "targets": lambda run, column, names: [_target_cell(run, t) for t in names],
}


def _view_columns(spec: ReportTable, runs: Sequence[Run]) -> list[Column]:
    """The columns diagnostic views add to the table of `spec`, where one of its runs holds the diagnostic."""
    protocols = {name for name, protocol in PROTOCOL_SPECS.items() if protocol.table == spec}
    return list(
        dict.fromkeys(
            column
            for view in registered_views()
            if any(run.metrics.get(view.key) for run in runs)
            for protocol, column in view.columns
            if protocol in protocols
        )
    )


def _split_by_dataset(spec: ReportTable, runs: list[Run]) -> list[tuple[str, list[Run]]]:
    """The table's runs as one table, or one per data set (`TITLE on DATA SET`) where the data sets have columns of
    their own (other class attributes, other targets): one table would be wide and mostly empty."""
    datasets = list(dict.fromkeys(run.dataset for run in runs))
    expanding = [column for column in spec.columns if column.kind in EXPANDING_KINDS]
    groups = {d: [run for run in runs if run.dataset == d] for d in datasets}
    own_columns = any(
        set(_column_names(column, group)) != set(_column_names(column, runs))
        for column in expanding
        for group in groups.values()
    )
    if len(datasets) < 2 or not own_columns:
        return [(spec.title, runs)]
    return [(f"{spec.title} on {dataset}", group) for dataset, group in groups.items()]


def _table(spec: ReportTable, title: str, runs: list[Run]) -> Table:
    """`runs` in the report table `spec` declares, its expanding columns one per name the runs hold."""
    columns = [(column, _column_names(column, runs)) for column in (*spec.columns, *_view_columns(spec, runs))]
    headers = [
        header
        for column, names in columns
        for header in (
            [column.header]
            if column.kind not in EXPANDING_KINDS
            else [f"{column.header}: {n}" if column.header else n for n in names]
        )
    ]
    table = Table(title, headers, note=spec.note)
    for run in runs:
        table.rows.append([cell for column, names in columns for cell in CELLS[column.kind](run, column, names)])
    return table


def build_tables(runs: Sequence[Run], comparisons: Sequence[tuple[Path, dict]] = ()) -> list[Table]:
    """One table per report table the runs' protocols declare (`protocols.ProtocolSpec.table`), in its columns,
    rows in the order given (by protocol where protocols share a table; by data set where their columns differ:
    `_split_by_dataset`); then the diagnostic views' tables and one table per recorded comparison."""
    by_table: dict[ReportTable, list[Run]] = defaultdict(list)
    order = list(PROTOCOL_SPECS)
    # A shared table lists its protocols' runs in the order the protocols are registered (full before fewshot).
    for run in sorted(runs, key=lambda run: order.index(run.metrics["protocol"])):
        by_table[PROTOCOL_SPECS[run.metrics["protocol"]].table].append(run)
    tables = [
        _table(spec, title, table_runs)
        for spec in sorted(by_table, key=lambda table: table.position)
        for title, table_runs in _split_by_dataset(spec, by_table[spec])
    ]
    tables += [table for view in registered_views() if view.tables for table in view.tables(runs)]
    for file, comparison in comparisons:
        columns = comparison["columns"]
        table = Table(
            comparison.get("title", file.parent.name),
            [comparison.get("row_label", ""), *columns],
            note=comparison.get("note", ""),
        )
        for name, values in comparison["rows"].items():
            table.rows.append([name, *(_comparison_cell(values.get(c)) for c in columns)])
        tables.append(table)
    return tables


# ---- plots ---------------------------------------------------------------------------------------------------
def plot_base2new(runs: Sequence[Run], folder: Path, taken: set[str]) -> list[Plot]:
    """Per data set: base, new and HM bars for each method, with the seeds' standard deviation."""
    plt = pyplot()
    plots = []
    by_dataset = defaultdict(list)
    for run in runs:
        if run.metrics["protocol"] == "base2new":
            by_dataset[run.dataset].append(run)
    for dataset, group in by_dataset.items():
        fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(group) + 2), 3.6))
        width = 0.27
        for i, (key, label) in enumerate((("base_accuracy", "base"), ("new_accuracy", "new"), ("harmonic_mean", "HM"))):
            values = [r.metrics.get(key) for r in group]
            positions = [j + (i - 1) * width for j, v in enumerate(values) if v is not None]
            shown = [v for v in values if v is not None]
            errors = [r.metrics.get(f"{key}_std") or 0.0 for r in group if r.metrics.get(key) is not None]
            ax.bar(positions, shown, width, yerr=errors if any(errors) else None, label=label, capsize=2)
        ax.set_xticks(range(len(group)), [r.method for r in group], rotation=30, ha="right")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(f"base-to-new on {dataset}")
        ax.legend(ncols=3, loc="upper left", fontsize=8)
        ax.grid(axis="y", alpha=0.3)
        plots.append(Plot(f"Base / new / HM on {dataset}", save_figure(fig, folder, f"base2new-{dataset}", taken)))
    return plots


def _curve_key(run: Run) -> tuple[str, str, str, str]:
    """What makes runs one curve: the method with its configuration (the seed aside) and weights."""
    config = {k: v for k, v in (run.metrics.get("config") or {}).items() if k != "seed"}
    return (run.method, *run.weights, json.dumps(config, sort_keys=True, default=str))


def fewshot_points(runs: Sequence[Run]) -> dict[str, dict[str, dict[int, list[float]]]]:
    """data set -> curve -> shots -> the accuracies of its seeds. A curve is one method with one configuration and
    weights: the same method with other settings is another curve, named `method (2)`, .... Each seed counts once;
    where two runs hold the same seed, the one given later wins."""
    seen: dict[tuple, dict[int, float]] = defaultdict(dict)
    for run in runs:
        if run.metrics["protocol"] != "fewshot" or not isinstance(run.metrics.get("shots"), int):
            continue
        for seed, result in run.per_seed().items():
            accuracy = result.get("accuracy")
            if isinstance(accuracy, (int, float)) and math.isfinite(accuracy):
                seen[(run.dataset, _curve_key(run), run.metrics["shots"])][seed] = accuracy
    names: dict[tuple, str] = {}
    points: dict = defaultdict(dict)
    for (dataset, key, shots), by_seed in seen.items():
        if (dataset, key) not in names:
            same = sum(1 for d, k in names if d == dataset and k[0] == key[0])
            names[(dataset, key)] = key[0] if same == 0 else f"{key[0]} ({same + 1})"
        points[dataset].setdefault(names[(dataset, key)], {})[shots] = list(by_seed.values())
    return points


def plot_fewshot(runs: Sequence[Run], folder: Path, taken: set[str]) -> list[Plot]:
    """Per data set: accuracy against shots per method (mean over seeds, the band one standard deviation), with
    zero-shot on the same data set as a dashed line."""
    plt = pyplot()
    plots = []
    zero_shot = {
        (run.dataset, run.weights): run.metrics.get("accuracy")
        for run in runs
        if run.metrics["protocol"] == "full" and run.metrics.get("method") == "zeroshot"
    }
    for dataset, methods in fewshot_points(runs).items():
        if all(len(by_shots) < 2 for by_shots in methods.values()):
            continue  # one number of shots is not a curve
        # Zero-shot's line where every curve used the weights it ran with.
        models = {run.weights for run in runs if run.metrics["protocol"] == "fewshot" and run.dataset == dataset}
        zero_shot_line = zero_shot.get((dataset, models.pop())) if len(models) == 1 else None
        fig, ax = plt.subplots(figsize=(5.6, 3.8))
        all_shots = set()
        for method, by_shots in methods.items():
            shots = sorted(by_shots)
            all_shots.update(shots)
            means, stds = zip(*(mean_std(by_shots[k]) for k in shots))
            seeds = max(len(by_shots[k]) for k in shots)
            (line,) = ax.plot(shots, means, marker="o", label=f"{method} ({seeds} seed{'s' if seeds > 1 else ''})")
            ax.fill_between(
                shots,
                [m - s for m, s in zip(means, stds)],
                [m + s for m, s in zip(means, stds)],
                color=line.get_color(),
                alpha=0.2,
            )
        if isinstance(zero_shot_line, (int, float)) and math.isfinite(zero_shot_line):
            ax.axhline(zero_shot_line, linestyle="--", color="gray", label="zero-shot")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted(all_shots), [str(k) for k in sorted(all_shots)])
        ax.set_xlabel("shots per class")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"few-shot on {dataset}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        plots.append(Plot(f"Few-shot accuracy on {dataset}", save_figure(fig, folder, f"fewshot-{dataset}", taken)))
    return plots


# ---- the report ----------------------------------------------------------------------------------------------
STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:80em;color:#222}
table{border-collapse:collapse;margin:0.5em 0 1.5em}th,td{border:1px solid #ccc;padding:0.25em 0.6em;text-align:right}
td{white-space:nowrap}
td.text{text-align:left}thead{background:#f0f0f0}
figure{margin:1em 0 2em}figcaption{font-size:0.9em;color:#555}img{max-width:100%}.note{color:#555;font-size:0.9em}"""


def tensorboard_command(runs: Sequence[Run]) -> str | None:
    """`tensorboard --logdir FOLDER` over the runs' training logs (the folder that holds every run), or None when
    the runs trained nothing."""
    if not any(next(run.folder.rglob("events.out.tfevents.*"), None) for run in runs):
        return None
    return f"tensorboard --logdir {os.path.commonpath([str(run.folder) for run in runs])}"


def findings_html(lines: Sequence[str]) -> str:
    """`summarize`'s markdown bullets (two levels, `code` spans) as nested HTML lists."""

    def inline(text: str) -> str:
        return re.sub(r"`([^`]*)`", r"<code>\1</code>", html.escape(text))

    parts, nested = ["<ul>"], False
    for line in lines:
        inner = line.startswith("  - ")
        if inner and not nested:
            parts.append("<ul>")
        elif not inner:
            parts.append("</ul></li>" if nested else "</li>" if len(parts) > 1 else "")
        nested = inner
        parts.append(f"<li>{inline(line.lstrip()[2:])}" + ("</li>" if inner else ""))
    parts.append("</ul></li></ul>" if nested else "</li></ul>")
    return "".join(parts)


def write_report(paths: Sequence[str | Path], out: str | Path) -> tuple[list[Table], list[Plot]]:
    """Read the runs under `paths` and write `out` (HTML), the same tables as markdown beside it (`.md`) and the
    plots as PNG files in the folder `<out stem>_files/`. Returns what it wrote."""
    out = Path(out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise ClipadaptError(f"--out {out}: name an .html file (the markdown goes beside it as .md)")
    runs, comparisons = find_runs(paths)
    tables = build_tables(runs, comparisons)
    folder = out.with_name(out.stem + "_files")
    folder.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    plots = (
        plot_base2new(runs, folder, taken)
        + plot_fewshot(runs, folder, taken)
        + [plot for view in registered_views() if view.plots for plot in view.plots(runs, folder, taken)]
    )
    for old in folder.glob("*.png"):  # an earlier report's plots that this one did not draw again
        if old.name not in taken:
            old.unlink()
    link = f"{quote(folder.name)}/"
    parents = {Path(p).parent for p in paths}
    sources = f"under {parents.pop()}" if len(paths) > 3 and len(parents) == 1 else "from " + ", ".join(map(str, paths))
    figures = "".join(
        f"<figure><img src='{html.escape(link + quote(p.path.name))}' alt='{html.escape(p.title)}'>"
        f"<figcaption>{html.escape(p.title)}</figcaption></figure>"
        for p in plots
    )
    findings = summarize(runs)
    tensorboard = tensorboard_command(runs)
    logs = f"Training curves (loss, learning rate, validation, step time): `{tensorboard}`." if tensorboard else ""
    page = (
        f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>clipadapt report</title>"
        f"<style>{STYLE}</style></head><body><h1>clipadapt report</h1>"
        f"<p>{len(runs)} run(s) {html.escape(sources)}. Accuracies in percent; ± is the standard deviation "
        f"over seeds.</p>"
        + (f"<h2>What these runs show</h2>{findings_html(findings)}" if findings else "")
        + f"<h2>Tables</h2>{''.join(t.html() for t in tables)}"
        f"<h2>Plots</h2>{figures or '<p>No plot: these runs hold no data for one.</p>'}"
        + (f"<h2>Training logs</h2><p>{html.escape(logs)}</p>" if logs else "")
        + "</body></html>\n"
    )
    markdown = (
        "\n\n".join(
            [
                f"# clipadapt report\n\n{len(runs)} run(s) {sources}.",
                *(["## What these runs show\n\n" + "\n".join(findings)] if findings else []),
                *(t.markdown() for t in tables),
                *(f"![{p.title}]({link}{quote(p.path.name)})" for p in plots),
                *([f"## Training logs\n\n{logs}"] if logs else []),
            ]
        )
        + "\n"
    )
    write_text_atomic(out, page)
    write_text_atomic(out.with_suffix(".md"), markdown)
    return tables, plots
