"""The inner loop's own overhead per iteration (graph, checkpoint, ledger), with the LLM and the trainer taken out:
a scripted model answers instantly and a synthetic executor returns a result instantly, so what remains is the
machinery. Prints the median per iteration and its share of a 60 s training budget.

    .venv/bin/python scripts/bench_loop.py --iterations 60
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from support import SyntheticExecutor, change  # noqa: E402

from checkpoints.run_folder import Ledger  # noqa: E402
from graphs.run_config import RunConfig  # noqa: E402
from graphs.runner import execute  # noqa: E402
from llm.scripted import ScriptedChatModel  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--iterations", type=int, default=60)
    ap.add_argument("--budget-s", type=float, default=60.0, help="the budget the overhead is compared with")
    args = ap.parse_args()
    values = [0.01 + 0.002 * i for i in range(args.iterations + 5)]
    script = [change("MATRIX_LR", round(v, 4)) for v in values]
    with tempfile.TemporaryDirectory() as tmp:
        config = RunConfig(run_dir=str(Path(tmp) / "run"), level="1", iterations=args.iterations, budget_s=1.0)
        start = time.perf_counter()
        execute(config, llm=ScriptedChatModel(script=script), executor=SyntheticExecutor(), inner_only=True)
        total = time.perf_counter() - start
        decided = [e["time"] for e in Ledger(Path(tmp) / "run").events("experiment")]
    per_iteration = [b - a for a, b in zip(decided, decided[1:], strict=False)]
    median = statistics.median(per_iteration)
    print(
        f"iterations={args.iterations} total_s={total:.2f} median_iteration_ms={median * 1000:.1f} "
        f"p90_iteration_ms={sorted(per_iteration)[int(0.9 * len(per_iteration))] * 1000:.1f} "
        f"share_of_{args.budget_s:g}s_budget={median / args.budget_s:.4%}"
    )


if __name__ == "__main__":
    main()
