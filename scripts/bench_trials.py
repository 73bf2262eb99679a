"""Trials per hour at a fixed budget: the time around the budget of every training, cold and from a warm worker.

Trains gpt/train.py's default configuration `--trials` times each way, alternating (cold, warm, cold, warm, ...),
through the local executor as a run does, and prints medians of the wall time the executor saw, the training
seconds, each phase of the time around the budget (result.json's `timing`), the fixed cost per trial as a share of
the budget, and trials per hour with one worker. Run it on a quiet machine: every figure is wall-clock time.

    .venv/bin/python scripts/bench_trials.py --budget-s 20 --trials 4 --json docs/bench_trials.json
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trials.launcher import REPO_ROOT, LocalExecutor, TrainerSettings, Trial  # noqa: E402

PHASES = ("startup_seconds", "warmup_seconds", "training_seconds", "setup_and_overhead_seconds", "eval_seconds")


def summarise(outcomes: list[dict[str, Any]], budget_s: float) -> dict[str, Any]:
    ok = [o for o in outcomes if o.get("ok")]
    if not ok:
        return {"trials": len(outcomes), "ok": 0}
    wall = statistics.median(o["wall_seconds"] for o in ok)
    trained = statistics.median(o["result"]["training_seconds"] for o in ok)
    phases = {p: statistics.median(o["result"]["timing"][p] for o in ok) for p in PHASES}
    return {
        "trials": len(outcomes),
        "ok": len(ok),
        "wall_seconds": wall,
        "training_seconds": trained,
        "fixed_seconds": wall - trained,
        "fixed_share_of_budget": (wall - trained) / budget_s,
        "trials_per_hour": 3600 / wall,
        "phases": phases,
        "val_bpb": [o["result"]["val_bpb"] for o in ok],
        "dtype": ok[0]["result"].get("dtype"),
        "other_cpu_share_max": max((o.get("other_cpu_share") or 0.0) for o in ok),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget-s", type=float, default=20.0)
    ap.add_argument("--trials", type=int, default=4, help="trainings of each kind (cold and warm)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    settings = TrainerSettings(budget_s=args.budget_s)
    cold, warm = LocalExecutor(), LocalExecutor(warm=True)
    started = time.monotonic()
    warm.idle.put(warm.worker_for(settings))  # the worker's one-off start-up, timed on its own
    worker_start = time.monotonic() - started
    outcomes: dict[str, list[dict[str, Any]]] = {"cold": [], "warm": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.trials):
            for kind, executor in (("cold", cold), ("warm", warm)):
                folder = Path(tmp) / f"{kind}{i}"
                folder.mkdir()
                shutil.copy(REPO_ROOT / "gpt" / "train.py", folder / "train.py")
                outcome = executor.run(Trial(folder.name, folder), settings)
                outcomes[kind].append(outcome)
                timing = outcome.get("result", {}).get("timing", {})
                print(
                    f"{kind} {i}: ok={outcome.get('ok')} wall {outcome.get('wall_seconds', 0):.1f} s, "
                    + ", ".join(f"{k.removesuffix('_seconds')} {v:.1f}" for k, v in timing.items())
                    + f", other load {outcome.get('other_cpu_share')}",
                    flush=True,
                )
    warm.close()
    figures = {kind: summarise(o, args.budget_s) for kind, o in outcomes.items()}
    figures["worker_start_seconds"] = worker_start
    figures["machine"] = {"cpu": platform.processor() or platform.machine(), "date": time.strftime("%Y-%m-%d")}
    print(
        f"\nmedians, {args.trials} trials each, budget {args.budget_s:g} s "
        f"(the worker's start-up, once: {worker_start:.1f} s)"
    )
    print("| | wall s | training s | fixed s | fixed / budget | trials/hour | " + " | ".join(PHASES) + " |")
    print("|---" * (6 + len(PHASES)) + "|")
    for kind in ("cold", "warm"):
        f = figures[kind]
        if not f.get("ok"):
            print(f"| {kind} | no trial succeeded |")
            continue
        print(
            f"| {kind} | {f['wall_seconds']:.1f} | {f['training_seconds']:.1f} | {f['fixed_seconds']:.1f} | "
            f"{f['fixed_share_of_budget']:.0%} | {f['trials_per_hour']:.0f} | "
            + " | ".join(f"{f['phases'][p]:.1f}" for p in PHASES)
            + " |"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
