"""Run every benchmark and print its ratio lines: `NAME ratio=R target=T` (a script may print several, the last
one its own name's).

Each script runs in its own process (as `python bench/NAME.py ARGS`), so one's threads and caches do not slow the
next. `--quick` uses small sizes (all in under 5 minutes on 2 CPU cores); without it, each script's defaults.
A script that fails prints `NAME failed (exit code N)` and the rest still run; the exit code is then 1.

    python bench/run.py [--quick] [--only NAME,...] [--device cuda] [--model ViT-B-16] [--verbose]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
# name: (quick arguments, full arguments)
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "text_truncation": (["--classes", "25", "--repeats", "1"], []),
    "coop_cached": (["--classes", "4", "--steps", "1"], []),
    "cocoop_batched": (["--repeats", "1"], []),
    "ship_synthesis": (["--classes", "50"], []),
    "unicl_step": (["--batch", "64", "--steps", "3"], []),
    "extract_workers": ([], []),
    "predict": (["--images", "300"], []),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: all in under 5 minutes on 2 cores")
    parser.add_argument("--only", default="", help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    parser.add_argument("--device", default="cpu", help="passed to every benchmark (cuda on a GPU machine)")
    parser.add_argument("--model", default="", help="architecture for every benchmark (default: each script's own)")
    parser.add_argument("--verbose", action="store_true", help="print each script's whole output, not its last line")
    args = parser.parse_args()
    names = [n for n in args.only.split(",") if n] or list(BENCHMARKS)
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    failed = False
    start = time.perf_counter()
    for name in names:
        extra = [
            *BENCHMARKS[name][0 if args.quick else 1],
            "--device",
            args.device,
            *(["--model", args.model] if args.model else []),
        ]
        result = subprocess.run([sys.executable, str(HERE / f"{name}.py"), *extra], capture_output=True, text=True)
        lines = result.stdout.strip().splitlines()
        if result.returncode != 0 or not lines or not lines[-1].startswith(f"{name} ratio="):
            failed = True
            print(f"{name} failed (exit code {result.returncode}): {result.stderr.strip()[-500:]}", flush=True)
        else:
            print("\n".join(lines if args.verbose else [line for line in lines if " ratio=" in line]), flush=True)
    print(f"# {len(names)} benchmarks in {time.perf_counter() - start:.0f} s", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
