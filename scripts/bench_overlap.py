"""Trials per hour with and without overlap, where the LLM does not share the trainer's cores.

The embedded model's server is pinned to one core and every training to the others (Linux CPU affinity), the way a
remote endpoint or a GPU trainer leaves the two apart. The same inner-loop run — real trainings through the warm
worker, the embedded model proposing, `--batch` proposals per iteration, one trainer slot — runs with `--overlap off`
and `--overlap on`, alternating; printed: the wall time of each run, trials per hour and the LLM seconds. (Which
experiments are proposed follows the results, which a fixed wall-clock budget makes vary from run to run; that overlap
proposes the same experiments for the same results is what tests/test_trial_pipeline.py shows.)

    .venv/bin/python scripts/bench_overlap.py --budget-s 10 --iterations 6 --batch 3 --pairs 2 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from checkpoints.run_folder import Ledger  # noqa: E402
from graphs.run_config import RunConfig  # noqa: E402
from graphs.runner import execute  # noqa: E402
from llm.client import LLMSettings, open_chat_model  # noqa: E402
from trials.launcher import LocalExecutor  # noqa: E402


def one_run(root: Path, overlap: str, args: argparse.Namespace, llm: Any, executor: LocalExecutor) -> dict[str, Any]:
    run_dir = root / f"{overlap}-{time.monotonic_ns()}"
    config = RunConfig(
        run_dir=str(run_dir),
        level="1",
        iterations=args.iterations,
        segment=args.iterations + 1,
        budget_s=args.budget_s,
        batch=args.batch,
        overlap=overlap,
        llm_attempts=1,
        seed=args.seed,
    )
    start = time.perf_counter()
    final = execute(config, llm=llm, executor=executor, inner_only=True)
    wall = time.perf_counter() - start
    ledger = Ledger(run_dir)
    llm_s = sum(float(e.get("latency_s") or 0.0) for e in ledger.events("llm_call"))
    trials = len(final["experiments"])
    return {"overlap": overlap, "wall_s": wall, "trials": trials, "llm_s": llm_s}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget-s", type=float, default=10.0)
    ap.add_argument("--iterations", type=int, default=6)
    ap.add_argument("--batch", type=int, default=3)
    ap.add_argument("--pairs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--llm-core", type=int, default=0, help="the core the model's server runs on")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        raise SystemExit("needs at least 2 cores: one for the model, the others for the trainer")
    trainer_cores = set(cores) - {args.llm_core}
    os.sched_setaffinity(0, {args.llm_core})  # the server started next inherits this core
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp, open_chat_model(LLMSettings.resolve(seed=args.seed)) as (llm, _):
        os.sched_setaffinity(0, trainer_cores)  # the warm worker and every training inherit these
        executor = LocalExecutor(warm=True)
        try:
            for pair in range(args.pairs):
                for overlap in ("off", "on") if pair % 2 == 0 else ("on", "off"):
                    row = one_run(Path(tmp), overlap, args, llm, executor)
                    rows.append(row)
                    print(
                        f"overlap={overlap:3s} wall {row['wall_s']:6.1f} s  trials {row['trials']}  "
                        f"LLM {row['llm_s']:5.1f} s  trials/hour {3600 * row['trials'] / row['wall_s']:6.1f}",
                        flush=True,
                    )
        finally:
            executor.close()
    summary: dict[str, Any] = {}
    for overlap in ("off", "on"):
        mine = [r for r in rows if r["overlap"] == overlap]
        wall = statistics.median(r["wall_s"] for r in mine)
        summary[overlap] = {
            "median_wall_s": wall,
            "trials_per_hour": 3600 * mine[0]["trials"] / wall,
            "median_llm_s": statistics.median(r["llm_s"] for r in mine),
        }
    ratio = summary["on"]["trials_per_hour"] / summary["off"]["trials_per_hour"]
    print(
        f"median: off {summary['off']['median_wall_s']:.1f} s, on {summary['on']['median_wall_s']:.1f} s; "
        f"trials/hour off {summary['off']['trials_per_hour']:.1f}, on {summary['on']['trials_per_hour']:.1f} "
        f"(x{ratio:.3f})"
    )
    if args.json:
        args.json.write_text(
            json.dumps(
                {"machine": platform.processor() or platform.machine(), "args": vars(args) | {"json": str(args.json)},
                 "runs": rows, "summary": summary, "ratio": ratio},
                indent=1,
            )
        )  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
