"""`make bench`: measure, then rewrite each benchmark's section of BENCHMARKS.md in place.

Each benchmark returns a Markdown section; sections sit between `<!-- bench:NAME -->` markers so that
running one benchmark (`--only NAME`) leaves the figures of the others as they were.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from training.synth.generate import GeneratorConfig, generate_dataset
from training.validate import validate_dataset

REPO_ROOT = Path(__file__).resolve().parents[2]


def machine() -> str:
    return f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python {platform.python_version()}"


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def bench_data(n: int = 200) -> str:
    """Generator pages/s serial vs all cores, dataset size, and validation docs/s, in one run."""
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, os.cpu_count() or 1):
            out = Path(tmp) / f"w{workers}"
            started = time.perf_counter()
            generate_dataset(GeneratorConfig(n=n, seed=1), out, workers=workers, progress=False)
            seconds = time.perf_counter() - started
            rows.append(
                (
                    f"generate, {workers} worker(s)",
                    n,
                    seconds,
                    f"{n / seconds:.1f} pages/s",
                    f"{folder_mb(out) / n * 1000:.0f} MB per 1,000 invoices",
                )
            )
        started = time.perf_counter()
        report = validate_dataset(out, progress=False)
        seconds = time.perf_counter() - started
        assert report.success
        rows.append(
            (
                "validate (GX suite, incl. image decode + sha256)",
                n,
                seconds,
                f"{n / seconds:.1f} docs/s",
                f"{len(report.rules)} rules",
            )
        )
    table = "\n".join(
        f"| {name} | {count} | {seconds:.1f} | {rate} | {note} |" for name, count, seconds, rate, note in rows
    )
    return f"""## Labeled data: generator and validation

`make bench` (`tests/benchmarks/run.py --only data`), {n} synthetic invoices (seed 1, all 8 layout families,
half of them scan-degraded, 120 dpi), on {machine()}.

| step | documents | seconds | rate | notes |
|---|---|---|---|---|
{table}
"""


def bench_setup() -> str:
    """`make setup` into fresh environment folders (warm package cache), then again (nothing to do)."""
    with tempfile.TemporaryDirectory() as tmp:
        venvs = Path(tmp) / "venvs"
        command = ["make", "--no-print-directory", "setup", f"VENVS={venvs}"]
        timings = []
        for _ in range(2):
            started = time.perf_counter()
            subprocess.run(command, cwd=REPO_ROOT, check=True, capture_output=True)
            timings.append(time.perf_counter() - started)
        sizes = {name: folder_mb(venvs / name) for name in ("ml", "airflow")}
        shutil.rmtree(venvs)
    return f"""## Setup

`make setup` creating both environments from nothing with a warm package cache (uv), then the same command
again, on {machine()}.

| run | seconds | result |
|---|---|---|
| first (creates `ml` {sizes["ml"]:.0f} MB and `airflow` {sizes["airflow"]:.0f} MB) | {timings[0]:.1f} | environments built |
| second (idempotent) | {timings[1]:.1f} | nothing to do |
"""


BENCHMARKS: dict[str, Callable[[], str]] = {"setup": bench_setup, "data": bench_data}


def write_section(path: Path, name: str, body: str) -> None:
    """Replace (or append) the section between this benchmark's markers."""
    text = (
        path.read_text(encoding="utf-8")
        if path.exists()
        else "# Benchmarks\n\nFigures written by `make bench`.\n"
    )
    block = f"<!-- bench:{name} -->\n{body.strip()}\n<!-- /bench:{name} -->"
    pattern = re.compile(rf"<!-- bench:{name} -->.*?<!-- /bench:{name} -->", re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    path.write_text(text, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", type=Path, help="Markdown file to update (e.g. BENCHMARKS.md)")
    parser.add_argument(
        "--only", choices=sorted(BENCHMARKS), action="append", help="run only these benchmarks"
    )
    args = parser.parse_args()
    for name in args.only or BENCHMARKS:
        print(f"running benchmark {name} ...", flush=True)
        section = BENCHMARKS[name]()
        print(section)
        if args.write:
            write_section(args.write, name, section)


if __name__ == "__main__":
    main()
