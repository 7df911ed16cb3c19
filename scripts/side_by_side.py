#!/usr/bin/env python3
"""Measure two commits side by side, in one run: worker pacing and the /metrics scrape.

A refactor must not cost the audio clock or the scrape. Numbers from runs hours
apart on a shared host say more about the host than the code, so this script
builds each commit in its own git worktree and virtualenv and alternates their
runs (A B A B ...), then prints each figure's median per commit and the ratio.

    python3 scripts/side_by_side.py BASE [HEAD] [--rounds 3] [--calls 200] [--extensions 100]

Figures: ``bench_worker`` p99 deviation at ``--calls`` calls (whole call), the worker's
CPU, and the text /metrics scrape p50 of a supervisor with ``--extensions`` extensions.
Each commit's own benchmark module is used (it moved from ``audiogw.client.bench_*`` to
``audiogw.bench.*``), so both sides are measured by the code of their time.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# (figure, module candidates, arguments, path into the JSON report)
WORKER_MODULES = ("audiogw.bench.worker", "audiogw.client.bench_worker")
SUPERVISOR_MODULES = ("audiogw.bench.supervisor", "audiogw.client.bench_supervisor")


def _run(command: list[str], **kwargs) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True, **kwargs).stdout


def prepare(commit: str, folder: Path) -> Path:
    """A worktree and a venv with that commit installed; returns the venv's python."""
    sha = _run(["git", "-C", str(ROOT), "rev-parse", commit]).strip()
    tree = folder / sha[:12]
    if not tree.exists():
        _run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), sha])
    python = tree / ".venv" / "bin" / "python"
    if not python.exists():
        _run([sys.executable, "-m", "venv", str(tree / ".venv")])
        _run([str(python), "-m", "pip", "install", "-q", "-e", ".[test,bench]"], cwd=tree)
    return python


def module(python: Path, candidates: tuple[str, ...]) -> str:
    for name in candidates:
        found = subprocess.run([str(python), "-c", f"import importlib.util,sys; sys.exit(importlib.util.find_spec('{name}') is None)"])
        if found.returncode == 0:
            return name
    raise SystemExit(f"{python}: none of {candidates} is importable")


def measure(python: Path, calls: int, seconds: float, extensions: int) -> dict[str, float]:
    worker = json.loads(_run([str(python), "-m", module(python, WORKER_MODULES), "--calls", str(calls),
                              "--seconds", str(seconds), "--json"], cwd="/tmp"))
    supervisor = json.loads(_run([str(python), "-m", module(python, SUPERVISOR_MODULES), "--extensions", str(extensions),
                                  "--kills", "0", "--pacing-calls", "0", "--idle-seconds", "1", "--json"], cwd="/tmp"))
    return {
        "worker_p99_ms": worker["pacing"]["whole_call"]["p99_deviation_ms"],
        "worker_gaps_over_40ms": worker["pacing"]["whole_call"]["gaps_over_40ms"],
        "worker_cpu_percent": worker["worker"].get("cpu_percent_mean", float("nan")),
        "scrape_text_p50_ms": supervisor["scrape_ms"]["p50"],
        "scrape_openmetrics_p50_ms": supervisor["scrape_openmetrics_ms"]["p50"],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("base")
    parser.add_argument("head", nargs="?", default="HEAD")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--extensions", type=int, default=100)
    parser.add_argument("--folder", default=os.path.join(os.environ.get("TMPDIR", "/tmp"), "audiogw-side-by-side"))
    args = parser.parse_args()
    folder = Path(args.folder)
    folder.mkdir(parents=True, exist_ok=True)
    sides = {"base": prepare(args.base, folder), "head": prepare(args.head, folder)}
    results: dict[str, list[dict[str, float]]] = {name: [] for name in sides}
    for round_index in range(args.rounds):
        order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
        for name in order:
            figures = measure(sides[name], args.calls, args.seconds, args.extensions)
            results[name].append(figures)
            print(f"round {round_index + 1} {name}: " + ", ".join(f"{key} {value:.2f}" for key, value in figures.items()),
                  flush=True)
    print(f"\nmedians over {args.rounds} rounds ({args.base} vs {args.head}), ratio head/base:")
    for key in results["base"][0]:
        base = statistics.median(run[key] for run in results["base"])
        head = statistics.median(run[key] for run in results["head"])
        ratio = head / base if base else float("nan")
        print(f"  {key:28s} base {base:8.2f}  head {head:8.2f}  ratio {ratio:5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
