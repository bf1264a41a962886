"""The documentation against the code. Every command in a ```bash block of README.md, CHANGELOG.md and docs/*.md
is parsed with the CLI's own parser and checked as `clipadapt` checks it before any work (subcommand, options,
method name, `key=value` config keys and types, `--config` files, data set prefixes, the protocol's options), so a
renamed option, subcommand or config field fails here, naming the file and line; `make` targets and the scripts
that `python` / `sh` lines run must exist. The cheap commands run for real, on a tiny colour data set and a micro
model: `clipadapt models` and one documented `clipadapt run` per protocol. Every link to a heading or a file
resolves, the README's method x protocol table matches the code, and the README stays short.

Synopses use placeholders: `[...]` marks optional parts (the brackets are dropped), `{a,b}` alternatives (each is
checked), an upper-case word (`METHOD`, `SPEC`, `K`, `KEY=VALUE`) a value of the user's (an example of the option's
type stands in), and `...` either an option's value or more options left out (the subcommand's required options are
then not asked for)."""

from __future__ import annotations

import contextlib
import csv
import functools
import io
import json
import re
import shlex
import sys
import types
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import torch
import yaml
from conftest import colour_images
from PIL import Image

import clipadapt
from clipadapt import load_backbone, load_classifier
from clipadapt.cli import _parse_seeds, build_parser, main
from clipadapt.config import build_config, load_config_file, parse_overrides
from clipadapt.data import DATASETS, find_images
from clipadapt.data.world import DEFAULT_SIZES, WORLD_DATASETS
from clipadapt.errors import ClipadaptError
from clipadapt.methods import METHODS, method_configs
from clipadapt.pretraining.unicl import PretrainConfig
from clipadapt.protocols import PROTOCOL_SPECS, PROTOCOLS, protocol_shots

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").glob("*.md"))]
PLACEHOLDER = re.compile(r"[A-Z][A-Z_]*")  # METHOD, SPEC, K, DATA_ROOT; not RN50 or ViT-B-16
README_MAX_LINES = 160


# ---- commands in ```bash blocks -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Command:
    file: Path
    line: int
    text: str  # continuation lines joined, the comment stripped
    words: tuple[str, ...]

    def where(self) -> str:
        return f"{self.file.relative_to(ROOT)}:{self.line}: {self.text}"


def _strip_comment(line: str) -> str:
    """`line` without a shell comment: a `#` at the start of a word, outside quotes."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i]
    return line


def fenced_blocks(path: Path) -> list[tuple[str, int, list[str]]]:
    """(language, first line number, lines) of every fenced code block in `path`."""
    blocks, current = [], None
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.lstrip().startswith("```"):
            if current is None:
                current = (line.strip()[3:].strip(), number + 1, [])
            else:
                blocks.append(current)
                current = None
        elif current is not None:
            current[2].append(line)
    assert current is None, f"{path}: a code block is not closed"
    return blocks


def bash_commands(path: Path) -> list[Command]:
    commands = []
    for language, first, lines in fenced_blocks(path):
        if language != "bash":
            continue
        pending, start = "", None
        for number, line in enumerate(lines, first):
            start = start or number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            text = _strip_comment(pending + line).strip()
            pending, line_number, start = "", start, None
            if text:
                commands.append(Command(path, line_number, " ".join(text.split()), tuple(shlex.split(text))))
    return commands


ALL_COMMANDS = [command for path in DOCS for command in bash_commands(path)]


@cache
def _model_names() -> frozenset[str]:
    from clipadapt import list_models

    return frozenset(list_models())


def _subparser(name: str):
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    return parser, subparsers.choices.get(name)


def _expand_alternatives(words: list[str]) -> list[list[str]]:
    """`{a,b,c}` -> one command line per alternative."""
    for i, word in enumerate(words):
        match = re.fullmatch(r"\{([^{}]+)\}", word)
        if match:
            return [
                w for alt in match.group(1).split(",") for w in _expand_alternatives([*words[:i], alt, *words[i + 1 :]])
            ]
    return [words]


def _concrete(words: list[str]) -> tuple[list[str], bool]:
    """The words with synopsis placeholders replaced by values argparse accepts, and whether something was left
    out (`...`)."""
    parser, sub = _subparser(words[0]) if words else (None, None)
    if sub is None:
        return words, False
    out, elided = [], False
    for word in words:
        word = word.strip("[]")
        if not word:
            continue
        previous = sub._option_string_actions.get(out[-1]) if out else None
        takes_value = (
            previous is not None and previous.nargs is None and previous.option_strings and previous.const is None
        )
        if word == "...":  # a value, or more options, left out
            elided = True
            if takes_value:
                out.append(word)
            continue
        if PLACEHOLDER.fullmatch(word) and takes_value:
            word = "1" if previous.type is int else (previous.choices[0] if previous.choices else word)
        out.append(word)
    return out, elided


def _is_placeholder(value: str | None) -> bool:
    return value is None or value == "..." or bool(PLACEHOLDER.fullmatch(value))


def _spec_problems(spec: str | None) -> list[str]:
    if _is_placeholder(spec):
        return []
    prefix, sep, rest = spec.partition(":")
    if not sep or prefix not in DATASETS:
        return [f"data set spec '{spec}': no loader for prefix '{prefix}:' (known: {', '.join(sorted(DATASETS))})"]
    if prefix == "world" and rest.partition(":")[0] not in WORLD_DATASETS:
        return [f"data set spec '{spec}': no world data set '{rest.partition(':')[0]}'"]
    if prefix == "coop" and ":" not in rest:
        return [f"data set spec '{spec}': coop: needs NAME:ROOT"]
    return []


def _model_problems(model: str | None) -> list[str]:
    if _is_placeholder(model) or model.endswith((".yaml", ".yml")) or model in _model_names():
        return []
    return [f"--model {model}: not a model name (`clipadapt models`) or a YAML config"]


def _config_values(args, overrides: list[str]) -> tuple[dict, list[str]]:
    """The method / pretraining config values as `clipadapt` gathers them: the --config file, then key=value words
    (placeholders such as KEY=VALUE left out)."""
    values, problems = {}, []
    if getattr(args, "config", None) is not None:
        path = args.config if args.config.is_absolute() else ROOT / args.config
        if path.is_file():
            values.update(load_config_file(path))
        elif not _is_placeholder(str(args.config)):
            problems.append(f"--config {args.config}: no such file in the repository")
    values.update(parse_overrides([w for w in overrides if not PLACEHOLDER.fullmatch(w.partition("=")[0])]))
    return values, problems


def _run_problems(args, values: dict, synopsis: bool) -> list[str]:
    problems = []
    if not _is_placeholder(args.method):
        try:
            method_configs(args.method, values)  # what build_method checks before it needs a backbone
        except ClipadaptError as e:
            problems.append(str(e))
    targets = [t for t in args.targets.split(",") if t]
    try:
        if not synopsis:  # a synopsis lists every option, not a combination that runs
            protocol_shots(args.protocol, args.shots, targets, args.unseen, args.fewshot_sampler)
        if args.seeds:
            _parse_seeds(args.seeds)
    except ClipadaptError as e:
        problems.append(str(e))
    return problems + [p for spec in [args.dataset, *targets] for p in _spec_problems(spec)]


def clipadapt_problems(argv: list[str]) -> list[str]:
    """What `clipadapt ARGV` would refuse before doing any work (argparse, then the checks of cli.main and the
    subcommand); [] when it would start."""
    problems = []
    synopsis = any(char in word for word in argv for char in "[]{}")
    for words in _expand_alternatives(list(argv)):
        words, elided = _concrete(words)
        parser, sub = _subparser(words[0]) if words else (build_parser(), None)
        if elided and sub is not None:
            for action in sub._actions:
                action.required = False
        stderr = io.StringIO()
        try:
            with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
                args, extra = parser.parse_known_args(words)
        except SystemExit as e:
            if e.code:  # --help exits with 0
                problems.append(stderr.getvalue().strip().splitlines()[-1])
            continue
        # argparse takes an option's prefix (--shot for --shots): the docs spell every option out.
        named = {*parser._option_string_actions, *(sub._option_string_actions if sub else ())}
        problems += [
            f"option {w.split('=')[0]}: not the CLI's name for it"
            for w in words
            if w.startswith("--") and w.split("=")[0] not in named and w not in extra
        ]
        overrides = [w for w in extra if "=" in w and not w.startswith("-")]  # as cli.main splits them
        unknown = [w for w in extra if w not in overrides]
        if unknown or (overrides and args.command not in ("run", "pretrain", "world")):
            problems.append(f"unrecognized arguments: {' '.join(unknown or overrides)}")
            continue
        problems += _model_problems(getattr(args, "model", None))
        if args.command in ("run", "pretrain"):
            values, config_problems = _config_values(args, overrides)
            problems += config_problems
        if args.command == "run":
            problems += _run_problems(args, values, synopsis)
        elif args.command == "pretrain":
            try:
                build_config(PretrainConfig, {**values, "loss": args.loss})
            except ClipadaptError as e:
                problems.append(str(e))
            problems += [p for spec in (args.data or "").split(",") if spec for p in _spec_problems(spec)]
        elif args.command == "extract":
            problems += _spec_problems(args.dataset)
            problems += [
                f"--splits: no split '{s}'" for s in args.splits.split(",") if s not in ("train", "val", "test")
            ]
        elif args.command == "sweep" and str(args.grid).startswith("configs/"):  # a grid the repository ships
            problems += [] if (ROOT / args.grid).is_file() else [f"grid {args.grid} does not exist"]
        elif args.command == "world":
            unknown_sizes = sorted(set(parse_overrides(overrides)) - set(DEFAULT_SIZES))
            problems += [f"unknown world size(s) {', '.join(unknown_sizes)}"] if unknown_sizes else []
    return problems


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([\w.-]+)\s*:(?!=)", text, re.M)}


def command_problems(command: Command) -> list[str]:
    """Problems of a documented command; lines that are neither clipadapt, make, nor a repository script are not
    checked."""
    words = list(command.words)
    if words[0] == "torchrun":  # torchrun's own options, then the program and its arguments
        program = next((i for i, w in enumerate(words) if Path(w).name == "clipadapt"), None)
        return clipadapt_problems(words[program + 1 :]) if program is not None else ["torchrun runs no clipadapt"]
    if Path(words[0]).name == "clipadapt":
        return clipadapt_problems(words[1:])
    if words[:3] in (["python", "-m", "clipadapt"], ["python3", "-m", "clipadapt"]):
        return clipadapt_problems(words[3:])
    if words[0] == "make":
        missing = [t for t in words[1:] if not t.startswith("-") and "=" not in t and t not in _make_targets()]
        return [f"no Makefile target '{t}'" for t in missing]
    if words[0] in ("python", "python3", "sh", "bash") and len(words) > 1 and not words[1].startswith("-"):
        return [] if (ROOT / words[1]).is_file() else [f"{words[1]} does not exist"]
    return []


def test_docs_hold_the_commands_this_test_checks():
    kinds = {Path(c.words[0]).name for c in ALL_COMMANDS}
    assert {"clipadapt", "make", "torchrun", "python"} <= kinds
    assert sum(Path(c.words[0]).name == "clipadapt" for c in ALL_COMMANDS) >= 30
    assert any(c.file == README for c in ALL_COMMANDS)


def test_every_documented_command_parses():
    problems = [f"{c.where()}\n    {p}" for c in ALL_COMMANDS for p in command_problems(c)]
    assert not problems, "documented commands the code does not accept:\n" + "\n".join(problems)


@pytest.mark.parametrize(
    "argv, problem",
    [
        ("run coop --dataset world:objects --protcol base2new", "unrecognized arguments: --protcol"),
        ("train coop --dataset world:objects", "invalid choice: 'train'"),
        ("run coop --dataset world:objects n_context=4", "key(s) in overrides: n_context"),
        ("run coop --dataset world:objects epochs=many", "epochs in overrides must be int"),
        ("run coop+ship --dataset world:objects --protocol base2new ship.depth=3", "unknown ShipConfig key"),
        ("run cocoop+ship --dataset world:objects --protocol base2new", "cannot train on synthesized features"),
        ("run coop_v2 --dataset world:objects", "unknown method 'coop_v2'"),
        ("run coop --dataset world:objects --shots 4", "--shots is for"),
        ("run coop --dataset world:object", "no world data set 'object'"),
        ("run coop --dataset folder:data", "no loader for prefix 'folder:'"),
        ("run coop --dataset world:objects --model ViT-B-99", "not a model name"),
        ("run coop --dataset world:objects --config configs/nothing.yaml", "no such file"),
        ("pretrain --data world:pretrain --out runs/x lr=fast", "lr in overrides must be float"),
        ("world --out w colours=3", "unknown world size(s) colours"),
        ("report runs/ --out r.html epochs=3", "unrecognized arguments: epochs=3"),
        ("run coop --dataset world:objects --protocol {full,fullshot}", "invalid choice: 'fullshot'"),
        ("run coop --dataset world:objects --protocol fewshot --shot 4", "option --shot: not the CLI's name"),
        ("run METHOD --dataset SPEC [--targts T]", "unrecognized arguments: --targts T"),
    ],
)
def test_the_command_check_catches_what_clipadapt_refuses(argv, problem):
    problems = clipadapt_problems(shlex.split(argv))
    assert any(problem in p for p in problems), problems


def test_synopsis_placeholders_are_accepted():
    assert (
        clipadapt_problems(
            shlex.split("run METHOD --dataset SPEC --protocol {fewshot,base2new} [--shots K] [KEY=VALUE ...]")
        )
        == []
    )
    assert clipadapt_problems(shlex.split("pretrain ...")) == []
    assert clipadapt_problems(shlex.split("pretrain --data ... --device cuda")) == []


# ---- the cheap commands, for real -------------------------------------------------------------------------
# One documented `clipadapt run` per protocol, run as written but for its data, model and output folder. Each
# must be in a ```bash block of README.md exactly as here.
RUNS = {
    "full": "clipadapt run finetune --dataset world:birds",
    "fewshot": "clipadapt run tip_adapter --dataset world:objects --protocol fewshot --shots 16 finetune=true",
    "base2new": "clipadapt run coop+ship --dataset world:objects --protocol base2new",
    "gzsl": "clipadapt run clip_adapter+ship --dataset world:objects --protocol gzsl",
    "crossdataset": (
        "clipadapt run cocoop --dataset world:objects --protocol crossdataset --targets world:patterns,world:scenes"
    ),
}
TARGET_COLOURS = (
    {"purple": (140, 40, 170), "orange": (240, 140, 20)},
    {"cyan": (40, 220, 220), "pink": (250, 150, 190)},
)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Four colour classes with 16 training images each (CoOp's 16 shots), two target data sets of other colours,
    and a micro CLIP whose 40-token text context holds CoOp's 16 context vectors (random weights, saved)."""
    root = tmp_path_factory.mktemp("docs")
    data = colour_images(root / "colours", per_split={"train": 16, "val": 2, "test": 3})
    targets = [colour_images(root / f"target{i}", {"test": 3}, colours) for i, colours in enumerate(TARGET_COLOURS)]
    config = yaml.safe_load((ROOT / "src/clipadapt/configs/models/micro-vit.yaml").read_text())
    config["text_cfg"]["context_length"] = 40
    model = root / "micro-40.yaml"
    model.write_text(yaml.safe_dump(config))
    torch.manual_seed(0)
    weights = root / "micro-40.safetensors"
    load_backbone(str(model)).save(weights)
    return types.SimpleNamespace(root=root, data=data, targets=targets, model=model, weights=weights)


def _on_tiny_inputs(words: list[str], tiny, out: Path) -> list[str]:
    """The command's arguments with --dataset, --targets, --model, --pretrained and --out pointing at the tiny inputs
    (and a cache of its own); everything else as documented."""
    rewritten = {"--dataset": f"imagefolder:{tiny.data}", "--model": str(tiny.model), "--pretrained": str(tiny.weights)}
    rewritten["--out"] = str(out)
    args, i = [], 0
    while i < len(words):
        word = words[i]
        if word == "--targets":
            specs = words[i + 1].split(",")
            args += [word, ",".join(f"imagefolder:{tiny.targets[j % len(tiny.targets)]}" for j in range(len(specs)))]
            i += 2
        elif word in rewritten:
            args += [word, rewritten.pop(word)]
            i += 2
        else:
            args.append(word)
            i += 1
    for option, value in rewritten.items():
        args += [option, value]
    return [*args, "--cache", str(tiny.root / "cache"), "--no-progress"]


def test_clipadapt_models_lists_ours_and_open_clips(capsys):
    assert any(c.file == README and c.text.startswith("clipadapt models") for c in ALL_COMMANDS)
    assert main(["models"]) == 0
    names = capsys.readouterr().out.split()
    assert {"tiny-vit", "micro-vit", "ViT-B-16", "RN50"} <= set(names)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_documented_run_of_each_protocol_runs(protocol, tiny, one_thread, capsys):
    documented = RUNS[protocol]
    readme = {c.text for c in bash_commands(README)}
    assert documented in readme, f"the README no longer shows `{documented}`: pick another command for {protocol}"
    out = tiny.root / f"run-{protocol}"
    argv = _on_tiny_inputs(shlex.split(documented)[1:], tiny, out)
    code = main(argv)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["protocol"] == protocol
    for key in PROTOCOL_SPECS[protocol].summary:
        assert isinstance(metrics[key], float) and 0 <= metrics[key] <= 100, (key, metrics[key])
    assert f"{metrics['method']} {protocol} on imagefolder:" in captured.out


def _python_blocks(path: Path) -> list[str]:
    return ["\n".join(lines) for language, _, lines in fenced_blocks(path) if language == "python"]


def test_the_method_in_adding_md_registers_and_runs(tiny, one_thread, capsys):
    (code,) = [block for block in _python_blocks(ROOT / "docs/adding.md") if "@register_method" in block]
    module = types.ModuleType("docs_adding_example")
    sys.modules[module.__name__] = module
    try:
        exec(compile(code, str(ROOT / "docs/adding.md"), "exec"), module.__dict__)
        assert "class_mean" in METHODS
        for protocol in ("full", "base2new"):
            out = tiny.root / f"class-mean-{protocol}"
            argv = ["run", "class_mean", "--protocol", protocol, "scale=10"]
            assert main(_on_tiny_inputs(argv, tiny, out)) == 0, capsys.readouterr().err
            metrics = json.loads((out / "metrics.json").read_text())
            assert metrics["config"] == {"scale": 10.0}
            assert metrics["accuracy" if protocol == "full" else "base_accuracy"] >= 0
        assert metrics["new_accuracy"] is None  # capabilities.scores_unseen_classes is false: base only
        # What the protocol saved loads back into a fresh instance.
        (saved,) = out.glob("train-*/class_mean.safetensors")
        method = METHODS["class_mean"](None, METHODS["class_mean"].Config())
        method.load(saved)
        assert method.weights.shape[0] == metrics["num_base_classes"]
    finally:
        METHODS.pop("class_mean", None)
        sys.modules.pop(module.__name__, None)


QUICK_START = "## Classify new images with what you trained"


def test_the_quick_start_classifies_new_images_exports_and_runs_the_export_without_clipadapt(
    tiny, one_thread, tmp_path, monkeypatch, capsys
):
    """The README's quick start and docs/predict.md, run as written in a folder of their own but for the model (the
    micro one): train CoOp on data/mine, predict new.jpg and photos/, export; then docs/predict.md's export and its
    Python blocks (onnxruntime alone, and the API)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mine").symlink_to(tiny.data)
    red = sorted((tiny.data / "test" / "red").glob("*.png"))
    Image.open(red[0]).convert("RGB").save("new.jpg")
    (tmp_path / "photos").mkdir()
    for path in red[1:]:
        Image.open(path).convert("RGB").save(tmp_path / "photos" / f"{path.stem}.jpg")
    Path("list.csv").write_text("path\nnew.jpg\n")
    quick_start = [c for c in bash_commands(README) if c.line > _line_of(README, QUICK_START)][:3]
    run, predict, export = (shlex.split(c.text)[1:] for c in quick_start)
    assert (run[0], predict[0], export[0]) == ("run", "predict", "export")
    assert main(_on_tiny_inputs(run, tiny, Path(run[run.index("--out") + 1]))) == 0, capsys.readouterr().err
    assert main(predict) == 0, capsys.readouterr().err
    rows = list(csv.DictReader(open("predictions.csv")))
    assert [Path(row["path"]).name for row in rows] == ["new.jpg", *[f"{p.stem}.jpg" for p in red[1:]]]
    assert main(export) == 0, capsys.readouterr().err
    documented = [shlex.split(c.text)[1:] for c in bash_commands(ROOT / "docs/predict.md")]
    predicts = [argv for argv in documented if argv[0] == "predict"]
    assert len(predicts) >= 4  # the page's every way of naming images and outputs
    for argv in predicts:
        assert main(argv) == 0, (argv, capsys.readouterr().err)
    assert {r["path"] for r in json.load(open("predictions.json"))} == {str(p) for p in find_images(["photos"])}
    assert list(Path("runs/mine").glob("train-*/coop.onnx")) and list(Path("runs/mine").glob("train-*/coop.json"))
    assert main(next(argv for argv in documented if argv[0] == "export" and "--out" in argv)) == 0
    onnx_block, api_block = _python_blocks(ROOT / "docs/predict.md")
    exec(compile(onnx_block, "docs/predict.md", "exec"), {})
    label = capsys.readouterr().out.strip().splitlines()[-1]
    assert label == load_classifier("runs/mine").predict(["new.jpg"])[0]
    # The API block, on the micro model too.
    monkeypatch.setattr(
        clipadapt, "adapt", functools.partial(clipadapt.adapt, model=str(tiny.model), pretrained=tiny.weights)
    )
    exec(compile(api_block, "docs/predict.md", "exec"), {})
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed[-1] in ("['zebra']", "['okapi']") and Path("mine.clipadapt.safetensors").is_file()


def _line_of(path: Path, heading: str) -> int:
    return path.read_text(encoding="utf-8").splitlines().index(heading) + 1


# ---- links ----------------------------------------------------------------------------------------------------
def _without_code(text: str) -> str:
    """`text` without fenced blocks and with inline code spans emptied (links inside them are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "code", text)


def github_slug(heading: str) -> str:
    """GitHub's anchor of a heading: the rendered text lower-cased, punctuation other than '-' and '_' dropped,
    spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text
    text = text.replace("`", "").strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


@cache
def anchors(path: Path) -> frozenset[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(encoding="utf-8"), flags=re.M | re.S)
    seen: dict[str, int] = {}
    result = set()
    for match in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M):
        slug = github_slug(match.group(1))
        result.add(f"{slug}-{seen[slug]}" if slug in seen else slug)  # GitHub numbers repeated headings
        seen[slug] = seen.get(slug, 0) + 1
    return frozenset(result)


def test_github_slugs():
    assert github_slug("Data sets: `--dataset SPEC`") == "data-sets---dataset-spec"
    assert github_slug("The papers' patterns on the world") == "the-papers-patterns-on-the-world"
    assert github_slug("Results: the demo (`make demo`)") == "results-the-demo-make-demo"
    assert github_slug("On the world's birds (CUB's regime)") == "on-the-worlds-birds-cubs-regime"


def link_problems(path: Path) -> list[str]:
    """Links of `path` whose file does not exist or whose `#anchor` names no heading of the linked page."""
    problems = []
    for match in re.finditer(r"\[[^\]]*\]\(([^)\s]+)\)", _without_code(path.read_text(encoding="utf-8"))):
        target = match.group(1)
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{path.name}: ({target}): {file_part} does not exist")
        elif anchor and (linked.suffix != ".md" or anchor not in anchors(linked)):
            problems.append(f"{path.name}: ({target}): no heading #{anchor} in {linked.name}")
    return problems


def test_every_link_resolves():
    problems = [problem for path in DOCS for problem in link_problems(path)]
    assert not problems, "\n".join(problems)
    assert sum(len(re.findall(r"\]\((?:docs/)?\w+\.md#", p.read_text())) for p in DOCS) >= 30  # links were seen


def test_the_link_check_finds_broken_links(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other page\n\n## A section\n")
    page.write_text(
        "# Page\n\n[ok](#page) [ok](other.md#a-section) [ok](other.md) [`code`](other.md#other-page)\n"
        "[bad](#nowhere) [bad](other.md#b-section) [bad](missing.md) `[not a link](#nowhere)`\n"
        "```bash\n# [not a link](#nowhere)\n```\n"
    )
    assert link_problems(page) == [
        "page.md: (#nowhere): no heading #nowhere in page.md",
        "page.md: (other.md#b-section): no heading #b-section in other.md",
        "page.md: (missing.md): missing.md does not exist",
    ]


def test_every_docs_page_is_linked_from_the_readme():
    readme = README.read_text(encoding="utf-8")
    unlinked = [p.name for p in sorted((ROOT / "docs").glob("*.md")) if f"](docs/{p.name}" not in readme]
    assert not unlinked and "](CHANGELOG.md" in readme, unlinked


# ---- the README -----------------------------------------------------------------------------------------------
def test_readme_is_short():
    lines = len(README.read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move details to docs/"


def _table_after(path: Path, heading: str) -> list[list[str]]:
    """The cells of the first table under `heading`, without the separator row."""
    lines = path.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|") and i > lines.index(heading))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        if not line.startswith("|---"):
            rows.append([cell.strip() for cell in line.strip().strip("|").split("|")])
    return rows


def test_the_method_protocol_table_matches_the_code():
    """The README's table against what the protocols look at: a method that scores only its training classes
    (`capabilities.scores_unseen_classes` false) has base2new's base accuracy and no gzsl or crossdataset;
    `METHOD+ship` is offered for the methods that declare `trains_on_generated` and runs only where a protocol has
    classes without training data; UniCL is not a `run` method."""
    header, *rows = _table_after(README, "## Methods and protocols")
    assert header == ["method", *PROTOCOLS, "predict / export"]
    table = {row[0]: row[1:] for row in rows}
    names = {True: "✓, any class names", False: "✓, its classes"}  # what `Classifier.with_classes` allows
    for name, cls in METHODS.items():
        scores = cls.capabilities.scores_unseen_classes
        expected = ["✓", "✓", "✓" if scores else "base only", *(["✓" if scores else "–"] * 2), names[scores]]
        assert table.pop(f"`{name}`", None) == expected, name
    (ship_row,) = [key for key in table if key.startswith("`METHOD+ship`")]
    offered = set(re.findall(r"`(\w+)\+ship`", ship_row.partition(":")[2]))
    assert offered == {name for name, cls in METHODS.items() if cls.capabilities.trains_on_generated}
    assert all(METHODS[name].capabilities.scores_unseen_classes for name in offered)
    assert table.pop(ship_row) == ["–", "–", "✓", "✓", "✓", names[True]]
    assert "unicl" not in METHODS
    assert table == {"UniCL pretraining (`clipadapt pretrain`)": ["–"] * 6}
