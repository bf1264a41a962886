"""`clipadapt report RUN_DIR... --out FILE.html`: every run's `metrics.json` under the given folders as tables
(HTML, and markdown beside it) and PNG plots: base / new / HM bars per method, few-shot accuracy against shots
with the seeds' spread, real vs SHIP-synthesized features projected to two dimensions, and where MP-FGVC's SsVP
looks on example images. A plot is drawn only where the runs hold its data: a folder of base2new runs gives bars,
fewshot runs at several `--shots` give curves, `METHOD+ship` runs leave a `synthesis-*.safetensors` sample, and
MP-FGVC runs on data that knows its parts (the world's badges and birds) list overlay examples under `part_overlap`."""

from __future__ import annotations

import html
import json
import math
import os
import re
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import torch
from PIL import Image

from .data import load_image
from .errors import ClipadaptError
from .paths import write_text_atomic
from .protocols import PROTOCOL_SPECS, Column, ReportTable, mean_std, safe_name, trained
from .summary import summarize

COMPARISON_FILE = "comparison.json"  # a table of numbers recorded elsewhere (the demo's pretraining comparison)
NUMERIC = re.compile(r"^[-+\d.,± ()]*$")  # cells aligned right; names and words align left
MAX_PROJECTED_CLASSES = 8  # more colours than this are not told apart in a scatter plot


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
def _number(value) -> str:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "-"
    return f"{value:.1f}"


def _comparison_cell(value) -> str:
    """A recorded comparison's cell: a number, or [mean, std] over seeds."""
    if isinstance(value, list) and len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
        return f"{value[0]:.1f} ± {value[1]:.1f}"
    return _number(value)


def _count(value) -> str:
    return str(int(value)) if isinstance(value, (int, float)) and float(value).is_integer() else "-"


def _cell(metrics: dict, key: str) -> str:
    """`mean ± std` where the run has several seeds, else the value; `-` where there is none."""
    text = _number(metrics.get(key))
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
        return _number(result.get("accuracy"))
    return _cell({"accuracy": result.get("accuracy"), "accuracy_std": mean_std(values)[1]}, "accuracy")


def _seeds_text(run: Run) -> str:
    return ",".join(map(str, run.seeds))


def _shots_text(run: Run) -> str:
    if not trained(run.metrics):
        return "-"  # a method that trains nothing (zero-shot)
    shots = run.metrics.get("shots")
    if run.metrics.get("protocol") == "base2new":  # runs written before metrics.json held the default
        return str(shots or PROTOCOL_SPECS["base2new"].default_shots)
    return "all" if shots is None else str(shots)  # a crossdataset run of then trained on the whole source


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


def _overlap_cell(run: Run, column: Column) -> list[str]:
    overlap = run.metrics.get("part_overlap") or {}
    return [f"{_number(overlap.get(column.key))} ({_number(overlap.get(column.reference))})" if overlap else "-"]


# A row's cells, by column kind (`protocols.Column`): the run, the column and `_column_names` give them.
CELLS = {
    "method": lambda run, column, names: [run.method],
    "dataset": lambda run, column, names: [run.dataset],
    "protocol": lambda run, column, names: [str(run.metrics["protocol"])],
    "shots": lambda run, column, names: [_shots_text(run)],
    "seeds": lambda run, column, names: [_seeds_text(run)],
    "metric": lambda run, column, names: [_cell(run.metrics, column.key)],
    "overlap": lambda run, column, names: _overlap_cell(run, column),
    "attributes": lambda run, column, names: [
        _number((run.metrics.get("attribute_accuracy") or {}).get(column.key, {}).get(a)) for a in names
    ],
    "targets": lambda run, column, names: [_target_cell(run, t) for t in names],
}


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
    columns = [
        (column, _column_names(column, runs))
        for column in spec.columns
        # SsVP's part overlap is a diagnostic of some runs: no column where no run has it.
        if column.kind != "overlap" or any(run.metrics.get("part_overlap") for run in runs)
    ]
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
    `_split_by_dataset`); then SHIP's diagnostics and one table per recorded comparison."""
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
    # SHIP's diagnostics: the run's own (base2new, gzsl), and each cross-data-set target's.
    synthesized = [
        (run, run.dataset, run.metrics["synthesis"]) for run in runs if isinstance(run.metrics.get("synthesis"), dict)
    ]
    synthesized += [
        (run, target, result["synthesis"])
        for run in runs
        for target, result in (run.metrics.get("targets") or {}).items()
        if isinstance(result, dict) and isinstance(result.get("synthesis"), dict)
    ]
    if synthesized:
        table = Table(
            "SHIP's synthesized features against the real test features of their classes",
            [
                "method",
                "data set",
                "protocol",
                "classes",
                "nearest real class is own (%)",
                "cosine to own class",
                "cosine to other classes",
            ],
        )
        for run, dataset, s in synthesized:
            cosines = [
                f"{s[k]:.3f}" if isinstance(s.get(k), (int, float)) else "-"
                for k in ("cosine_to_own_class", "cosine_to_other_classes")
            ]
            table.rows.append(
                [
                    run.method,
                    dataset,
                    run.metrics["protocol"],
                    _count(s.get("classes")),
                    _number(s.get("nearest_class_accuracy")),
                    *cosines,
                ]
            )
        tables.append(table)
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
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, folder: Path, name: str, taken: set[str]) -> Path:
    base = stem = safe_name(name)
    i = 1
    while f"{stem}.png" in taken:  # two runs of the same name
        i += 1
        stem = f"{base}-{i}"
    taken.add(f"{stem}.png")
    path = folder / f"{stem}.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def plot_base2new(runs: Sequence[Run], folder: Path, taken: set[str]) -> list[Plot]:
    """Per data set: base, new and HM bars for each method, with the seeds' standard deviation."""
    plt = _pyplot()
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
        plots.append(Plot(f"Base / new / HM on {dataset}", _save(fig, folder, f"base2new-{dataset}", taken)))
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
    plt = _pyplot()
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
        plots.append(Plot(f"Few-shot accuracy on {dataset}", _save(fig, folder, f"fewshot-{dataset}", taken)))
    return plots


def project_2d(features: torch.Tensor) -> torch.Tensor:
    """The first two principal components [N, 2] of `features` [N, D] (centred; signs fixed so that each
    component's largest coordinate is positive, for plots that do not flip between runs)."""
    centred = features.float() - features.float().mean(dim=0)
    _, _, v = torch.linalg.svd(centred, full_matrices=False)
    components = v[:2].T
    signs = torch.sign(components.gather(0, components.abs().argmax(dim=0, keepdim=True)))
    return centred @ (components * signs)


def plot_synthesis(runs: Sequence[Run], folder: Path, taken: set[str]) -> list[Plot]:
    """Real test features (dots) and SHIP's synthesized features (crosses) of up to eight classes, projected on
    the two principal components of both together."""
    from .methods.addons.ship import load_synthesis_sample

    plt = _pyplot()
    plots = []
    for run in runs:
        for file in sorted(run.folder.glob("synthesis-*.safetensors")):
            try:
                real, synthetic, names = load_synthesis_sample(file)
            except ClipadaptError as e:
                _skip(f"no projection for {file}: {e}")
                continue
            source = file.stem.removeprefix("synthesis-")
            classes = list(range(min(len(names), MAX_PROJECTED_CLASSES)))
            keep_real = torch.isin(real.labels, torch.tensor(classes))
            keep_synthetic = torch.isin(synthetic.labels, torch.tensor(classes))
            points = project_2d(torch.cat([real.features[keep_real], synthetic.features[keep_synthetic]])).numpy()
            real_points, synthetic_points = points[: int(keep_real.sum())], points[int(keep_real.sum()) :]
            real_labels, synthetic_labels = real.labels[keep_real].numpy(), synthetic.labels[keep_synthetic].numpy()
            fig, ax = plt.subplots(figsize=(6.4, 4.6))
            colours = plt.get_cmap("tab10")
            for c in classes:
                ax.scatter(*real_points[real_labels == c].T, s=12, alpha=0.6, color=colours(c), label=names[c][:28])
                ax.scatter(*synthetic_points[synthetic_labels == c].T, s=18, marker="x", color=colours(c))
            ax.set_title(f"{run.method}: real (dots) vs synthesized (crosses), {source}", fontsize=9)
            ax.set_xlabel("principal component 1")
            ax.set_ylabel("principal component 2")
            ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
            title = f"Real vs SHIP-synthesized features of {source}'s classes: {run.method} trained on {run.dataset}"
            if len(names) > len(classes):
                title += f" (the first {len(classes)} of {len(names)} classes)"
            plots.append(Plot(title, _save(fig, folder, f"synthesis-{run.method}-{file.stem}", taken)))
    return plots


def _model_input(path: Path, size: int, resize: int | Sequence[int]) -> Image.Image:
    """The image as the model saw it: the shorter side resized to `resize` (or squashed to [height, width]), the
    centre `size` x `size` crop (as the run's transform and `box_in_crop`)."""
    image = load_image(path)
    if isinstance(resize, (list, tuple)):
        width, height = int(resize[1]), int(resize[0])
    else:
        scale = resize / min(image.size)
        width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((width, height), Image.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return image.crop((left, top, left + size, top + size))


def _skip(message: str) -> None:
    print(f"clipadapt report: {message}; skipped", file=sys.stderr)


def _overlay_examples(run: Run) -> tuple[dict, list[dict]]:
    """`part_overlap` with its examples: the run's own, or its first seed's (a multi-seed mean has none)."""
    for result in [run.metrics, *run.per_seed().values()]:
        overlap = result.get("part_overlap")
        if isinstance(overlap, dict) and overlap.get("examples"):
            return overlap, overlap["examples"]
    return {}, []


def plot_kept_tokens(runs: Sequence[Run], folder: Path, taken: set[str]) -> list[Plot]:
    """MP-FGVC's SsVP on example images: the class-token attention over patches as a heat map, the kept patches
    outlined in white, the discriminative parts' boxes in red."""
    from matplotlib.patches import Rectangle

    plt = _pyplot()
    plots = []
    for run in runs:
        overlap, examples = _overlay_examples(run)
        examples = [e for e in examples if Path(e["path"]).is_file()]  # images moved since the run: nothing to draw
        if not examples:
            continue
        grid, size = overlap["grid"], overlap["image_size"]
        resize, cell = overlap.get("resize", size), size / grid
        try:
            images = [_model_input(Path(e["path"]), size, resize) for e in examples]
        except ClipadaptError as e:
            _skip(f"no overlays for {run.folder}: {e}")
            continue
        fig, axes = plt.subplots(1, len(examples), figsize=(2.1 * len(examples), 2.5), squeeze=False)
        for ax, example, image in zip(axes[0], examples, images):
            ax.imshow(image, extent=(0, size, size, 0))
            heat = torch.tensor(example["scores"]).reshape(grid, grid).numpy()
            ax.imshow(heat, cmap="inferno", alpha=0.45, extent=(0, size, size, 0), interpolation="nearest")
            for index in example["kept"]:
                row, col = divmod(index, grid)
                ax.add_patch(
                    Rectangle((col * cell, row * cell), cell, cell, fill=False, edgecolor="white", linewidth=1)
                )
            # (runs written before the birds recorded their one part's box as `part`)
            for x0, y0, x1, y1 in example.get("parts") or [example["part"]]:
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="red", linewidth=1.5))
            ax.set_title(str(example.get("class") or example["label"])[:22], fontsize=7)
            ax.axis("off")
        fig.suptitle(f"{run.method}: kept tokens (white), attention (heat), parts (red)", fontsize=8)
        plots.append(
            Plot(
                f"Where SsVP looks: {run.method} on {run.dataset} "
                f"({overlap.get('tokens_kept')} of {overlap.get('tokens')} patches kept)",
                _save(fig, folder, f"kept-tokens-{run.method}-{run.dataset}", taken),
            )
        )
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
        + plot_synthesis(runs, folder, taken)
        + plot_kept_tokens(runs, folder, taken)
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
