"""The report's opening summary against a run set whose numbers it must describe: each method against zero-shot and
against its paper's claims, with the sign and the seeds' spread, paired by seed where the runs share seeds."""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from clipadapt.protocols import aggregate_seeds, harmonic_mean, write_metrics
from clipadapt.report import find_runs, findings_html, write_report
from clipadapt.summary import summarize


def base2new(base: float, new: float) -> dict:
    base, new = float(base), float(new)  # as a run's accuracies are (aggregate_seeds spreads floats)
    return {"base_accuracy": base, "new_accuracy": new, "harmonic_mean": harmonic_mean(base, new), "training": {}}


def write_run(root, name: str, method: str, protocol: str, per_seed: list[dict], shots=None, dataset="world:objects"):
    seeds = list(range(1, len(per_seed) + 1))
    numbers = per_seed[0] if len(per_seed) == 1 else aggregate_seeds(per_seed, seeds)
    if method == "zeroshot":
        for result in [numbers, *numbers.get("per_seed", {}).values()]:
            result.pop("training", None)
    metrics = {"method": method, "dataset": dataset, "protocol": protocol, "shots": shots, "model": "tiny-vit"}
    metrics |= {"pretrained": "w.safetensors", "seed": seeds[0] if len(seeds) == 1 else seeds, **numbers}
    write_metrics(root / name, metrics)


@pytest.fixture
def runs(tmp_path):
    write_run(tmp_path, "zs", "zeroshot", "base2new", [base2new(60, 70)])
    write_run(tmp_path, "coop", "coop", "base2new", [base2new(72, 60), base2new(74, 62), base2new(76, 64)], 16)
    cocoop = [base2new(70, 61), base2new(72, 63), base2new(74, 66)]
    write_run(tmp_path, "cocoop", "cocoop", "base2new", cocoop, 16)
    ship = [base2new(72, 59), base2new(74, 64), base2new(76, 64)]
    write_run(tmp_path, "coop+ship", "coop+ship", "base2new", ship, 16)
    write_run(tmp_path, "zs-full", "zeroshot", "full", [{"accuracy": 50.0}])
    for shots, accuracy in ((1, 30.0), (16, 58.0)):
        write_run(tmp_path, f"lp{shots}", "linear_probe", "fewshot", [{"accuracy": accuracy, "training": {}}], shots)
    birds = "world:birds"
    write_run(tmp_path, "ft", "finetune", "full", [{"accuracy": 19.0, "training": {}}], dataset=birds)
    write_run(tmp_path, "mp", "mpfgvc", "full", [{"accuracy": 18.5, "training": {}}], dataset=birds)
    write_run(tmp_path, "mp-level", "mpfgvc", "full", [{"accuracy": 19.04, "training": {}}], dataset=birds)
    return tmp_path


def test_each_method_against_zero_shot_and_its_papers_claims(runs):
    lines = summarize(find_runs([runs])[0])
    text = "\n".join(lines)
    # Against a one-seed zero-shot run: the difference of means, ± CoOp's own spread over its 3 seeds (1.6).
    assert "- `coop` on world:objects, base2new, 16 shots (seeds 1,2,3) against `zeroshot`: base +14.0 ± 1.6, " in text
    assert "new −8.0 ± 1.6" in text
    assert "  - base +14.0 ± 1.6 against `zeroshot`: as the paper, which reports it above (CoCoOp (CVPR 2022)" in text
    assert "  - new −8.0 ± 1.6 against `zeroshot`: as the paper, which reports it below" in text
    # Paired by seed: CoCoOp's new classes 1, 1 and 2 points above CoOp's.
    assert (
        "  - new +1.3 ± 0.5 against `coop`: as the paper, which reports it above (CoCoOp (CVPR 2022), Table 1)" in text
    )
    # SHIP's new classes -1, +2, 0 against CoOp: no direction beyond the spread.
    assert re.search(r"new \+0\.3 ± 1\.2 against `coop`: within the seeds' spread, which reports it above \(SHIP", text)
    # The linear probe against the zero-shot `full` run (the same test set); its claim is for 16 shots only.
    assert "`linear_probe` on world:objects, fewshot, 1 shot (seed 1) against `zeroshot`: accuracy −20.0." in text
    assert text.count("`linear_probe`") == 2 and text.count("Fig. 3: 16 shots") == 1
    assert "  - accuracy +8.0 against `zeroshot`: as the paper (one seed), which reports it above" in text
    # MP-FGVC against fine-tuning: one seed each, below where its paper has it above.
    assert (
        "- `mpfgvc` on world:birds, full (seed 1):\n  - accuracy −0.5 against `finetune`: against the paper (one seed)"
        in text
    )
    assert "  - accuracy +0.0 against `finetune`: level, which reports it above" in text  # 0.04: no direction
    assert not any("`zeroshot` on" in line or "`finetune` on" in line for line in lines)  # baselines themselves


class Nesting(HTMLParser):
    def __init__(self):
        super().__init__()
        self.open: list[str] = []
        self.items = 0

    def handle_starttag(self, tag, attrs):
        self.open.append(tag)
        self.items += tag == "li"

    def handle_endtag(self, tag):
        assert self.open.pop() == tag


def test_the_report_opens_with_the_summary(runs):
    lines = summarize(find_runs([runs])[0])
    parser = Nesting()
    parser.feed(findings_html(lines))
    assert parser.open == [] and parser.items == len(lines)
    write_report([runs], runs / "report.html")
    page = (runs / "report.html").read_text()
    assert page.index("What these runs show") < page.index("<h2>Tables</h2>")
    assert "<code>cocoop</code>" in page
    markdown = (runs / "report.md").read_text()
    assert "## What these runs show\n\n- `cocoop` on world:objects" in markdown  # in path order


def test_a_table_whose_data_sets_have_columns_of_their_own_is_split_by_data_set(tmp_path):
    from clipadapt.report import build_tables

    def with_attributes(base: float, new: float, attributes: dict) -> dict:
        return {**base2new(base, new), "attribute_accuracy": {"base": attributes, "new": attributes}}

    write_run(tmp_path, "a", "zeroshot", "base2new", [with_attributes(60, 70, {"colour": 90.0, "shape": 70.0})])
    write_run(tmp_path, "b", "coop", "base2new", [with_attributes(70, 60, {"colour": 95.0, "shape": 60.0})], 16)
    runs, _ = find_runs([tmp_path])
    (table,) = [t for t in build_tables(runs) if t.title.startswith("Base-to-new")]  # one data set: one table
    assert table.title == "Base-to-new" and table.columns[-2:] == ["new: colour", "new: shape"]
    far = {"colour": 50.0, "pattern": 40.0}
    write_run(tmp_path, "c", "zeroshot", "base2new", [with_attributes(50, 26, far)], dataset="world:textures")
    tables = {t.title: t for t in build_tables(find_runs([tmp_path])[0]) if t.title.startswith("Base-to-new")}
    assert list(tables) == ["Base-to-new on world:objects", "Base-to-new on world:textures"]
    assert tables["Base-to-new on world:objects"].columns[-2:] == ["new: colour", "new: shape"]
    assert tables["Base-to-new on world:textures"].columns[-2:] == ["new: colour", "new: pattern"]
    assert [row[0] for row in tables["Base-to-new on world:objects"].rows] == ["zeroshot", "coop"]
