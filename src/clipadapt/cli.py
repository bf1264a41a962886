"""The `clipadapt` command. Each subcommand is a thin layer over the library; user errors print one line."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
import yaml

from .backbone import DEFAULT_WEIGHTS, list_models, load_backbone
from .classifier import Classifier, classifier_file, load_classifier, predict_to_file
from .config import build_config, load_config_file, parse_overrides
from .data import FEWSHOT_SAMPLERS, DatasetSplits, drop_unreadable_images, find_images, load_dataset
from .data.world import WORLD_DATASETS, generate_world
from .demo import run_demo
from .digest import fingerprint
from .errors import ClipadaptError
from .export import FORMATS, export_classifier
from .features import DEFAULT_SHARD_SIZE, default_cache_dir, extract_features
from .methods import METHODS
from .methods.addons.ship import Ship
from .paths import safe_name
from .pretraining.unicl import LOSSES, PretrainConfig, PretrainData, UniCLPretrainer
from .protocols import (
    PROTOCOL_SPECS,
    RunContext,
    protocol_shots,
    run_seeds,
    shots_trained,
    write_metrics,
)
from .report import write_report
from .sweep import TABLE_FOLDER, expand_grid, read_grid, run_sweep
from .text import read_names
from .training.distributed import default_workers, gpu_training_settings
from .training.loop import skipping_nonfinite_steps


def _add_training_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--skip-nonfinite",
        action="store_true",
        help="skip training steps whose loss is NaN or infinite (reported) instead of stopping",
    )


def _add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", help="open_clip name (ViT-B-16, RN50, ...), one of ours (tiny-vit, ...) or a YAML config"
    )
    parser.add_argument(
        "--pretrained", help="local weights file: OpenAI .pt, open_clip checkpoint or clipadapt .safetensors"
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--cache", type=Path, default=None, help="feature/split cache (default $CLIPADAPT_CACHE or ~/.cache/clipadapt)"
    )
    parser.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="images per encoder call (feature extraction: 64) or per training step",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="DataLoader worker processes decoding images: feature extraction, pretraining, training on "
        "images (default: up to 8 on a GPU, 0 on a CPU)",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--skip-bad-images",
        action="store_true",
        help="check every image first; leave out unreadable ones and report them instead of failing",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="clipadapt", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train (if the method learns) and evaluate a method under a protocol")
    run.add_argument(
        "method",
        help=f"one of: {', '.join(sorted(METHODS))}; METHOD+ship adds SHIP's synthesized "
        "features (ship.KEY=VALUE configures it)",
    )
    run.add_argument("--dataset", required=True, help="imagefolder:PATH, coop:NAME:ROOT, csv:PATH, ...")
    run.add_argument("--protocol", default="full", choices=tuple(PROTOCOL_SPECS))  # the registered ones
    run.add_argument(
        "--shots",
        type=int,
        default=None,
        help="k images per class for fewshot, base2new and crossdataset (the last two: default 16)",
    )
    run.add_argument(
        "--fewshot-sampler",
        default="clipadapt",
        choices=FEWSHOT_SAMPLERS,
        help="how k-shot subsets are drawn: clipadapt's, or dassl (the images CoOp's code draws for the seed)",
    )
    run.add_argument("--seed", type=int, default=1)
    run.add_argument("--seeds", default=None, help="comma-separated seeds (e.g. 1,2,3): run each, report mean and std")
    run.add_argument("--targets", default="", help="crossdataset: comma-separated target data set specs")
    run.add_argument(
        "--unseen", default=None, help="gzsl: unseen class names (comma list or file); default the new half"
    )
    run.add_argument("--config", type=Path, help="YAML file of method config values; key=value words override it")
    run.add_argument("--out", type=Path, help="run folder (default runs/<method>-<protocol>-<dataset>-seed<S>)")
    _add_model_args(run)
    _add_training_args(run)

    extract = sub.add_parser("extract", help="compute and cache frozen image features of a data set")
    extract.add_argument("--dataset", required=True)
    extract.add_argument("--splits", default="train,val,test", help="comma-separated splits to extract")
    extract.add_argument(
        "--shard-size",
        type=int,
        default=DEFAULT_SHARD_SIZE,
        help=f"images per cache shard, the unit that a killed extraction keeps ({DEFAULT_SHARD_SIZE})",
    )
    _add_model_args(extract)

    pretrain = sub.add_parser("pretrain", help="pretrain both towers with UniCL (or the CLIP / CE loss)")
    pretrain.add_argument("--data", required=True, help="comma-separated data set specs: image-label and image-text")
    pretrain.add_argument(
        "--out", type=Path, required=True, help="run folder: checkpoints, model.safetensors, metrics.json"
    )
    pretrain.add_argument("--loss", choices=LOSSES, default="unicl")
    pretrain.add_argument("--config", type=Path, help="YAML file of pretraining config values")
    pretrain.add_argument("--save-dtype", choices=("fp32", "fp16"), default="fp32", help="dtype of model.safetensors")
    _add_model_args(pretrain)
    _add_training_args(pretrain)

    world = sub.add_parser("world", help="generate the procedural image world into a folder (sizes as key=value)")
    world.add_argument("--out", type=Path, required=True)
    world.add_argument("--seed", type=int, default=0)
    world.add_argument("--image-size", type=int, default=64)
    world.add_argument("--no-progress", action="store_true")

    demo = sub.add_parser("demo", help="every method and protocol on the world with the shipped model, as a table")
    demo.add_argument("--out", type=Path, default=Path("runs/demo"))
    demo.add_argument("--cache", type=Path, default=None)
    demo.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="rows run side by side in worker processes that share the threads (default: 2 where there are 2 cores)",
    )
    demo.add_argument("--no-progress", action="store_true")

    report = sub.add_parser("report", help="tables (HTML and markdown) and PNG plots of the metrics.json files of runs")
    report.add_argument(
        "run_dirs", nargs="+", type=Path, help="run folders (searched recursively) or metrics.json files"
    )
    report.add_argument(
        "--out",
        type=Path,
        default=Path("report.html"),
        help="the HTML file; the markdown goes beside it (.md), the plots to <stem>_files/",
    )

    sweep = sub.add_parser(
        "sweep", help="a grid of runs (methods x data sets x protocols x shots x seeds), N at a time"
    )
    sweep.add_argument("grid", type=Path, help="the grid, a YAML file (docs/commands.md#sweeps-clipadapt-sweep)")
    sweep.add_argument(
        "--out", type=Path, default=None, help="where every run's folder goes (default runs/<grid name>)"
    )
    sweep.add_argument(
        "--launcher", choices=("local", "slurm"), default="local", help="this machine, or a Slurm job array"
    )
    sweep.add_argument("--jobs", type=int, default=None, help="local: runs at once (default: one per GPU, else one)")
    sweep.add_argument("--dry-run", action="store_true", help="check the grid and list its runs; run nothing")
    sweep.add_argument("--no-progress", action="store_true")

    predict = sub.add_parser("predict", help="classify new images with a trained method (a run folder or its file)")
    predict.add_argument("source", type=Path, help="a `clipadapt run` folder, or a classifier .safetensors file")
    predict.add_argument(
        "images", nargs="+", help="image files, folders (searched recursively), glob patterns, or a CSV of paths"
    )
    predict.add_argument("--out", type=Path, default=Path("predictions.csv"), help="a .csv or .json file")
    predict.add_argument("--top", type=int, default=5, help="classes per image, most likely first (5)")
    predict.add_argument(
        "--classes", default=None, help="other class names to score (a comma list or a file, one a line)"
    )
    predict.add_argument("--seed", type=int, default=None, help="which classifier of a run that trained several")
    predict.add_argument(
        "--model", help="the backbone, when the one the classifier records cannot be loaded here (with --pretrained)"
    )
    predict.add_argument("--pretrained", help="that backbone's weights file or open_clip tag")
    predict.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    predict.add_argument("--batch-size", type=int, default=64, help="images per encoder call (64)")
    predict.add_argument("--workers", type=int, default=None, help="DataLoader processes decoding images")
    predict.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    export = sub.add_parser("export", help="write a trained method as an ONNX file that runs without clipadapt")
    export.add_argument("source", type=Path, help="a `clipadapt run` folder, or a classifier .safetensors file")
    export.add_argument("--format", choices=FORMATS, default="onnx")
    export.add_argument(
        "--out", type=Path, default=None, help="the .onnx file (default: beside the classifier, METHOD.onnx)"
    )
    export.add_argument("--classes", default=None, help="other class names (a comma list or a file, one a line)")
    export.add_argument("--seed", type=int, default=None, help="which classifier of a run that trained several")
    export.add_argument("--model", help="the backbone, when the one the classifier records cannot be loaded here")
    export.add_argument("--pretrained", help="that backbone's weights file or open_clip tag")

    interpret = sub.add_parser("interpret", help="nearest vocabulary words to the prompt vectors SHIP learned in a run")
    interpret.add_argument("run_dir", type=Path, help="a `clipadapt run METHOD+ship` output folder")
    interpret.add_argument("--top", type=int, default=5, help="words per prompt vector")
    _add_model_args(interpret)
    sub.add_parser("models", help="list model names")
    return parser


def _load_dataset(args: argparse.Namespace, spec: str | None = None) -> tuple[DatasetSplits, list[str]]:
    """The data set `spec` (default `--dataset`); with `--skip-bad-images`, without unreadable images, reported on
    stderr."""
    splits = load_dataset(spec or args.dataset)
    if not args.skip_bad_images:
        return splits, []
    first_rank = _first_rank()  # under torchrun every rank checks; one reports
    splits, bad = drop_unreadable_images(splits, progress=not args.no_progress and first_rank)
    for sample, reason in bad if first_rank else []:
        print(f"skipped unreadable image {sample.path}: {reason}", file=sys.stderr)
    return splits, [str(sample.path) for sample, _ in bad]


def _parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ClipadaptError(f"--seeds must be comma-separated integers, got '{text}'") from None
    if not seeds or len(set(seeds)) != len(seeds):
        raise ClipadaptError(f"--seeds must list distinct integers, got '{text}'")
    return seeds


def _workers(args: argparse.Namespace) -> int:
    """--workers, or the default for --device (training.distributed.default_workers); checked before any work starts."""
    if args.workers is not None and args.workers < 0:
        raise ClipadaptError(f"--workers must be 0 or more, got {args.workers}")
    try:
        workers = default_workers(args.device) if args.workers is None else args.workers
        if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
            raise ClipadaptError(f"--device {args.device}: no CUDA GPU is available here (--device cpu)")
        return workers
    except RuntimeError as e:  # torch's own words for a device string it does not know
        raise ClipadaptError(f"--device {args.device}: {e}") from None


def _default_run_folder(
    args: argparse.Namespace, dataset_name: str, shots: int | None, targets: list[str], seeds: list[int]
) -> Path:
    """runs/<method>-<protocol>[-<k>shot]-<data set name>-seed<S>-<digest>: the digest covers the whole data set
    spec, targets, unseen classes and seeds, so runs that differ in any of them never share a folder (one would
    resume or overwrite the other); the name and many seeds are cut short."""
    parts = [args.method, args.protocol, *([f"{shots}shot"] if shots else [])]
    seed_label = "-".join(map(str, seeds))
    if len(seed_label) > 20:
        seed_label = f"{seeds[0]}-to-{seeds[-1]}-{len(seeds)}seeds"
    digest = fingerprint([args.dataset, targets, args.unseen, seeds], length=8)
    return Path("runs") / f"{safe_name('-'.join(parts))}-{safe_name(dataset_name, 30)}-seed{seed_label}-{digest}"


def _note_default_model(args: argparse.Namespace, specs: list[str]) -> None:
    """One line when the shipped world model meets data that is not the generated world: it knows nothing else."""
    if args.model is None and args.pretrained is None and any(not spec.startswith("world:") for spec in specs):
        print(
            "note: the default model is a tiny CLIP that knows only the generated world; for other data name real "
            "weights, e.g. --model ViT-B-32 --pretrained openai (docs/commands.md#models---model-and---pretrained)",
            file=sys.stderr,
        )


def cmd_run(args: argparse.Namespace) -> int:
    values = load_config_file(args.config) if args.config else {}
    values.update(parse_overrides(args.overrides))
    workers = _workers(args)
    seeds = _parse_seeds(args.seeds) if args.seeds else [args.seed]
    targets = [t for t in args.targets.split(",") if t]
    shots = protocol_shots(args.protocol, args.shots, targets, args.unseen, args.fewshot_sampler)  # before any work
    splits, skipped = _load_dataset(args)
    if args.model is not None and args.pretrained is None:
        torch.manual_seed(seeds[0])  # a model without weights: its random ones follow the seed too
    backbone = load_backbone(args.model, args.pretrained, device=args.device)
    _note_default_model(args, [args.dataset, *targets])
    out = args.out or _default_run_folder(args, splits.name, shots, targets, seeds)
    ctx = _run_context(args, backbone, out, workers, skipped)
    start = time.time()
    numbers, config = run_seeds(
        args.method,
        values,
        args.protocol,
        ctx,
        splits,
        seeds,
        source=str(args.config or "overrides"),
        shots=args.shots,
        targets=targets,
        unseen=args.unseen,
    )
    metrics = {
        "method": args.method,
        "dataset": args.dataset,
        "protocol": args.protocol,
        "shots": shots_trained(numbers, shots),
        **({"fewshot_sampler": args.fewshot_sampler} if shots else {}),
        "seed": seeds[0] if len(seeds) == 1 else seeds,
        "seconds": round(time.time() - start, 3),
        "model": backbone.name,
        "pretrained": _weights_label(args),
        "config": config,
        **numbers,
    }
    if args.skip_bad_images:
        metrics["skipped_images"] = skipped
    path = write_metrics(out, metrics)
    settings = {k: metrics[k] for k in ("method", "dataset", "protocol", "shots", "seed", "model", "pretrained")}
    (Path(out) / "config.yaml").write_text(yaml.safe_dump({**settings, "config": config}, sort_keys=False))
    print(_summary(metrics))
    print(f"wrote {path}")
    return 0


def _run_context(args: argparse.Namespace, backbone, out: Path, workers: int, skipped: list[Path]) -> RunContext:
    """The run-level settings of `clipadapt run`; the data sets a protocol names besides --dataset (cross-data-set
    targets) are loaded as --dataset is, once however many seeds ask, their skipped images added to `skipped`."""
    loaded_targets: dict[str, DatasetSplits] = {}

    def load_target(spec: str) -> DatasetSplits:
        if spec not in loaded_targets:
            loaded_targets[spec], bad = _load_dataset(args, spec)
            skipped.extend(path for path in bad if path not in skipped)
        return loaded_targets[spec]

    return RunContext(
        backbone,
        cache_dir=args.cache,
        out_dir=out,
        batch_size=args.batch_size or 64,
        num_workers=workers,
        progress=not args.no_progress,
        dataset_loader=load_target,
        fewshot_sampler=args.fewshot_sampler,
    )


def _weights_label(args: argparse.Namespace) -> str | None:
    """The weights a run used, as written to metrics.json: the file given, or the shipped model's by default."""
    if args.pretrained:
        return str(args.pretrained)
    return DEFAULT_WEIGHTS.name if args.model is None else None


def _summary(metrics: dict) -> str:
    """One line of the protocol's headline numbers (its declared `summary` keys)."""
    keys = PROTOCOL_SPECS[metrics["protocol"]].summary
    shown = "  ".join(f"{k}={metrics[k]:.2f}" for k in keys if metrics.get(k) is not None)
    return f"{metrics['method']} {metrics['protocol']} on {metrics['dataset']}: {shown}"


def cmd_extract(args: argparse.Namespace) -> int:
    workers = _workers(args)
    splits, _ = _load_dataset(args)
    device = _init_distributed(args.device)  # under torchrun, each rank computes its share of the shards
    say = print if _first_rank() else (lambda *_: None)
    try:
        backbone = load_backbone(args.model, args.pretrained, device=device)
        for split in [s for s in args.splits.split(",") if s]:
            samples = splits.split(split)
            if not samples:
                say(f"{split}: no samples, skipped")
                continue
            features = extract_features(
                backbone,
                samples,
                cache_dir=args.cache,
                batch_size=args.batch_size or 64,
                num_workers=workers,
                shard_size=args.shard_size,
                progress=not args.no_progress,
                desc=f"{splits.name}/{split}",
            )
            say(
                f"{split}: {len(features)} features of dimension {features.features.shape[1]} "
                f"cached under {args.cache or default_cache_dir()}"
            )
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


def _first_rank() -> bool:
    """Whether this process reports (and writes): the only one, or rank 0 under torchrun."""
    return int(os.environ.get("RANK", "0")) == 0


def _init_distributed(device: str) -> str:
    """Under torchrun, join the process group (NCCL on GPUs, gloo on CPUs) and pick this rank's device."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return device
    use_cuda = device.startswith("cuda") and torch.cuda.is_available()
    dist.init_process_group("nccl" if use_cuda else "gloo")
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        return f"cuda:{local_rank}"
    return device


def cmd_pretrain(args: argparse.Namespace) -> int:
    values = load_config_file(args.config) if args.config else {}
    values.update(parse_overrides(args.overrides))
    values["loss"] = args.loss
    if args.batch_size is not None:
        values["batch_size"] = args.batch_size
    if args.workers is not None or "workers" not in values:  # a config file's value stands unless --workers
        values["workers"] = _workers(args)
    config = build_config(PretrainConfig, values, source=str(args.config or "overrides"))
    device = _init_distributed(args.device)
    if device.startswith("cuda"):
        gpu_training_settings()
    torch.manual_seed(config.seed)
    backbone = load_backbone(args.model, args.pretrained, device=device)
    data = PretrainData.from_specs([s for s in args.data.split(",") if s])
    try:
        summary = UniCLPretrainer(backbone, config, data).fit(args.out, progress=not args.no_progress)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if _first_rank():
        weights = Path(args.out) / "model.safetensors"
        backbone.save(weights, dtype=torch.float16 if args.save_dtype == "fp16" else None)
        write_metrics(args.out, {"data": args.data, "model": backbone.name, "pretrained": args.pretrained, **summary})
        print(
            f"pretrained {backbone.name} with {config.loss} for {summary['steps']} steps "
            f"(final epoch loss {_loss_text(summary['epoch_losses'][-1])}); wrote {weights}"
        )
    return 0


def _loss_text(loss: float | None) -> str:
    return "none: every step was skipped" if loss is None else f"{loss:.4f}"


def cmd_world(args: argparse.Namespace) -> int:
    sizes = parse_overrides(args.overrides)  # images per class and split, e.g. train=16 captions=50
    out = generate_world(args.out, seed=args.seed, image_size=args.image_size, progress=not args.no_progress, **sizes)
    print(
        f"wrote the image world (seed {args.seed}) to {out}: "
        + ", ".join(f"world:{name}:{out}" for name in WORLD_DATASETS)
    )
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    if args.jobs is not None and args.jobs < 1:
        raise ClipadaptError(f"--jobs must be at least 1, got {args.jobs}")
    print(run_demo(args.out, cache_dir=args.cache, progress=not args.no_progress, jobs=args.jobs))
    print(f"wrote {args.out / 'results.md'} and {args.out / 'report.html'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    tables, plots = write_report(args.run_dirs, args.out)
    print("\n\n".join(table.markdown() for table in tables))
    print(
        f"wrote {args.out} ({len(tables)} tables, {len(plots)} plots), {args.out.with_suffix('.md')} and "
        f"{args.out.with_name(args.out.stem + '_files')}/"
    )
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    out = args.out or Path("runs") / safe_name(args.grid.stem)
    if args.dry_run:
        jobs = expand_grid(read_grid(args.grid), out)
        for job in jobs:
            print(("done  " if job.finished else "to do ") + shlex.join(["clipadapt", *job.argv()]))
        print(f"{len(jobs)} runs, {sum(job.finished for job in jobs)} finished")
        return 0
    text, failed = run_sweep(args.grid, out, args.jobs, progress=not args.no_progress, launcher=args.launcher)
    print(text)
    for job in failed:
        print(f"failed: {shlex.join(['clipadapt', *job.argv()])} (its log: {job.folder / 'log.txt'})", file=sys.stderr)
    print(f"wrote {out / 'report.html'} and {out / TABLE_FOLDER / 'summary.md'}")
    return 1 if failed else 0


def cmd_models(_: argparse.Namespace) -> int:
    print("\n".join(list_models()))
    return 0


def _one_line(message: str) -> str:
    """An error re-raised from a DataLoader worker carries the worker's traceback; its last line is the cause."""
    lines = [line for line in message.splitlines() if line.strip()]
    if len(lines) <= 1:
        return message
    return re.sub(r"^[\w.]*Error: ", "", lines[-1].strip())


def cmd_interpret(args: argparse.Namespace) -> int:
    files = sorted(args.run_dir.glob("**/*.ship.safetensors"))  # `ship.generator_path` of each METHOD+ship file
    if not files:
        raise ClipadaptError(
            f"no SHIP generator (*.ship.safetensors) under {args.run_dir}: interpret a `clipadapt run METHOD+ship` "
            "folder"
        )
    model, pretrained = args.model, args.pretrained
    run_config = args.run_dir / "config.yaml"
    if model is None and pretrained is None and run_config.is_file():  # the weights the run used
        recorded = yaml.safe_load(run_config.read_text()) or {}
        if recorded.get("pretrained") != DEFAULT_WEIGHTS.name:  # not the shipped model: what the run named
            model, pretrained = recorded.get("model"), recorded.get("pretrained")
    backbone = load_backbone(model, pretrained, device=args.device)
    report = {}
    for path in files:
        words = Ship.from_file(backbone, path).interpret(args.top)
        report[str(path.relative_to(args.run_dir))] = words
        print(path.relative_to(args.run_dir))
        for kind, rows in words.items():
            for i, row in enumerate(rows):
                print(f"  {kind[:-1]} {i + 1}: " + "  ".join(f"{w} ({s:.2f})" for w, s in row))
    out = args.run_dir / "interpret.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


def _load_classifier(args: argparse.Namespace, device: str = "cpu") -> Classifier:
    """The classifier `predict` and `export` are given (on --model/--pretrained when named), with --classes."""
    backbone = None
    if args.model is not None or args.pretrained is not None:
        backbone = load_backbone(args.model, args.pretrained, device=device)
    classifier = load_classifier(args.source, backbone=backbone, device=device, seed=args.seed)
    return classifier.with_classes(read_names(args.classes)) if args.classes else classifier


def cmd_predict(args: argparse.Namespace) -> int:
    workers = _workers(args)
    images = find_images(args.images)
    classifier = _load_classifier(args, args.device)
    records = predict_to_file(
        classifier, images, args.out, args.top, args.batch_size, workers, progress=not args.no_progress
    )
    shown = 10 if len(records) > 20 else len(records)
    for record in records[:shown]:
        top = record["top"][0] if record["top"] else None
        path = record["path"].encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")  # any name
        print(f"{path}: " + (f"{top['label']} ({top['probability']:.3f})" if top else record["error"]))
    if shown < len(records):
        print(f"... {len(records) - shown} more")
    unreadable = sum(record["error"] is not None for record in records)
    listed = f" ({unreadable} unreadable, listed with their error)" if unreadable else ""
    print(
        f"classified {len(records) - unreadable} images with {classifier.name} over {len(classifier.classnames)} "
        f"classes{listed}; wrote {args.out}"
    )
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    classifier = _load_classifier(args)
    out = args.out or classifier_file(args.source, args.seed).with_suffix(".onnx")
    graph, description = export_classifier(classifier, out, args.format)
    print(
        f"exported {classifier.name} over {len(classifier.classnames)} classes: {graph} (preprocessed images "
        f"[batch, 3, H, W] -> logits), its preprocessing and class names in {description}"
    )
    return 0


COMMANDS = {
    "run": cmd_run,
    "predict": cmd_predict,
    "export": cmd_export,
    "interpret": cmd_interpret,
    "extract": cmd_extract,
    "pretrain": cmd_pretrain,
    "world": cmd_world,
    "demo": cmd_demo,
    "report": cmd_report,
    "sweep": cmd_sweep,
    "models": cmd_models,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Method config overrides are bare key=value words, accepted anywhere on the `run` command line.
    args.overrides = [word for word in extra if "=" in word and not word.startswith("-")]
    unknown = [word for word in extra if word not in args.overrides]
    if unknown or (args.overrides and args.command not in ("run", "pretrain", "world")):
        parser.error(f"unrecognized arguments: {' '.join(unknown or args.overrides)}")
    try:
        with skipping_nonfinite_steps(getattr(args, "skip_nonfinite", False)):
            return COMMANDS[args.command](args)
    except ClipadaptError as e:
        print(f"clipadapt: error: {_one_line(str(e))}", file=sys.stderr)
        return 2
    except (OSError, MemoryError) as e:
        print(f"clipadapt: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("clipadapt: interrupted", file=sys.stderr)
        return 130
