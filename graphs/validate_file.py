"""`python -m graphs.bilevel mechanisms validate FILE.py [--json]`: the validator, for people who write mechanisms.

It runs exactly what the outer loop's `validate` node runs — the static policy, then the module in the OS sandbox:
load, the contract test on synthetic traces, the counterfactual replay (on a run's recorded trace with `--run`, else on
a synthetic one), each batch twice in two children — within the same total time limit, and prints the report.
Exit status: 0 accepted, 1 refused, 2 usage error (no such file, not a run folder, bad arguments).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console

from mechanisms import jail
from mechanisms.space import SearchSpace
from mechanisms.validation import TIME_LIMIT_S, ValidationReport, synthetic_trace, validate_mechanism
from trials.launcher import TRAIN_PATH

console = Console()


def _trace(run_dir: Path | None, space: SearchSpace, seed: int) -> list[dict[str, Any]]:
    if run_dir is None:
        return [{**r, "id": f"e{i:04d}", "iteration": i} for i, r in enumerate(synthetic_trace(space, seed) * 2)]
    from checkpoints.rebuild import experiments_from, trace_events

    return experiments_from(trace_events(run_dir))


def _print(report: ValidationReport, path: Path) -> None:
    verdict = "[green]accepted[/]" if report.ok else f"[red]refused[/] at stage {report.stage}"
    console.print(f"{path}: {verdict}", highlight=False)
    if report.name:
        console.print(f"  NAME {report.name}  TARGET {report.target}  sha256 {report.sha256}", highlight=False)
    for error in report.errors:
        console.print(f"  - {error}", highlight=False, markup=False)
    timings = ", ".join(f"{k} {v:.2f} s" for k, v in report.timings.items())
    console.print(f"  time: {timings} (limit {report.time_limit_s:g} s for all stages)", highlight=False)
    if report.replay:
        console.print(f"  replay: {report.replay}", highlight=False)


def main_validate(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m graphs.bilevel mechanisms validate",
        description="Validate a mechanism module as the outer loop would, in the OS sandbox.",
    )
    ap.add_argument("file", type=Path, help="the mechanism module (NAME, TARGET, the entry function)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    ap.add_argument("--run", type=Path, help="replay on this run folder's recorded trace and search space")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--time-limit-s", type=float, default=TIME_LIMIT_S, help="all stages together")
    args = ap.parse_args(argv)
    if not args.file.is_file():
        console.print(f"[red]error:[/] no such file: {args.file}", highlight=False)
        return 2
    base = TRAIN_PATH
    if args.run is not None:
        base = args.run / "base_train.py"
        if not (args.run / "trace.jsonl").is_file() or not base.is_file():
            console.print(f"[red]error:[/] {args.run} is not a run folder (no trace.jsonl or base_train.py)")
            return 2
    try:
        source = args.file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        console.print(f"[red]error:[/] cannot read {args.file}: {exc}", highlight=False)
        return 2
    space = SearchSpace.from_train_source(base.read_text())
    trace = _trace(args.run, space, args.seed)
    report = validate_mechanism(source, space, trace, seed=args.seed, time_limit_s=args.time_limit_s)
    if args.json:
        print(json.dumps({**report.to_dict(), "file": str(args.file), "sandbox": jail.unavailable() is None}))
    else:
        _print(report, args.file)
    return 0 if report.ok else 1
