"""The embedded model's calls, measured: per node, valid answers at the first attempt, proposals that are neither a
no-op nor a configuration already tried, and LLM seconds per call (median).

    .venv/bin/python scripts/bench_llm.py                       # a few minutes on a quiet 2-core machine
    .venv/bin/python scripts/bench_llm.py --proposals 20 --calls 8 --styles values,moves,free --json out.json

Every figure comes from the run's own trace. The inner loop runs on the surrogate (val_bpb from a model fitted on
real trainings: nothing is trained, so the time measured is the model's); the outer nodes (adjust, analyze, compose)
are called on prefixes of that run's trace, as a level-2 run would call them after each segment. Counts do not
depend on the machine's load; seconds do: the load average is printed with them.
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
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from checkpoints.run_folder import Ledger  # noqa: E402
from graphs.run_config import RunConfig, initial_inner_state, make_context  # noqa: E402
from graphs.runner import execute  # noqa: E402
from llm.client import LLMSettings, open_chat_model  # noqa: E402
from llm.structured import LLMBudget  # noqa: E402
from mechanisms.builtin.local_search import config_key  # noqa: E402
from mechanisms.space import SearchSpace  # noqa: E402
from nodes.adjust import adjust  # noqa: E402
from nodes.analyze import analyze  # noqa: E402
from nodes.context import OuterContext  # noqa: E402
from nodes.generate import generate  # noqa: E402

SURROGATE = "surrogate:ablation/data/surrogate_samples.csv"


def events(run_dir: Path, kind: str) -> list[dict[str, Any]]:
    return list(Ledger(run_dir).events(kind))


def median(values: list[float]) -> float | None:
    return round(statistics.median(values), 2) if values else None


def propose_figures(run_dir: Path, space: SearchSpace) -> dict[str, Any]:
    """From an inner run's trace: first answers valid, proposals from the model, no-op/repeat-free share, seconds."""
    calls = [c for c in events(run_dir, "llm_call") if c["node"].startswith(("propose", "mechanism:"))]
    firsts = [c for c in calls if c["attempt"] == 1]
    experiments = Ledger(run_dir).experiments()
    proposals = [e for e in experiments if e["iteration"] > 0]
    seen: set[str] = set()
    fresh = 0
    for e in experiments:
        key = config_key(space, e["params"])
        fresh += e["iteration"] > 0 and bool(e.get("changes")) and key not in seen
        seen.add(key)
    per_proposal: dict[int, float] = {}
    for c in calls:
        per_proposal[c["iteration"]] = per_proposal.get(c["iteration"], 0.0) + c["latency_s"]
    return {
        "proposals": len(proposals),
        "calls": len(calls),
        "first_valid": sum(c["ok"] for c in firsts),
        "first_asked": len(firsts),
        "from_model": sum(e.get("proposal_source") == "llm" for e in proposals),
        "fresh": fresh,
        "llm_s_per_proposal_median": median(list(per_proposal.values())),
        "prompt_tokens_median": median([float(c["prompt_tokens"]) for c in calls]),
        "completion_tokens_median": median([float(c["completion_tokens"]) for c in calls]),
    }


def run_inner(llm: Any, root: Path, style: str, proposals: int, seed: int) -> tuple[Path, dict[str, Any]]:
    run_dir = root / f"propose-{style}"
    config = RunConfig(
        run_dir=str(run_dir), level="1", iterations=proposals, segment=proposals + 1, executor=SURROGATE,
        proposal_style=style, seed=seed,
    )  # fmt: skip
    started = time.perf_counter()
    final = execute(config, llm=llm, inner_only=True)
    space = SearchSpace.from_train_source((run_dir / "base_train.py").read_text())
    return run_dir, {**propose_figures(run_dir, space), "wall_s": round(time.perf_counter() - started, 1),
                     "best_bpb": final.get("best_bpb")}  # fmt: skip


def outer_calls(llm: Any, root: Path, trace_run: Path, style: str, calls: int, seed: int) -> dict[str, Any]:
    """adjust, analyze and compose, each called on `calls` prefixes of the inner run's trace."""
    run_dir = root / f"outer-{style}"
    config = RunConfig(run_dir=str(run_dir), level="2", executor=SURROGATE, proposal_style=style, seed=seed)
    config.save()
    ledger = Ledger(run_dir)
    ctx = make_context(config, ledger, llm, LLMBudget())
    ctx.proposal_style = style
    outer = OuterContext(
        inner=ctx, level="2", segment=config.segment, generate_mode="compose", inner_graph_mermaid="(the inner graph)"
    )
    experiments = Ledger(trace_run).experiments()
    active = {"id": "llm_greedy@start", "name": "llm_greedy", "origin": "builtin", "target": "propose"}
    cuts = [max(2, round(len(experiments) * (k + 1) / calls)) for k in range(calls)]
    for cycle, cut in enumerate(cuts, start=1):
        prefix = experiments[:cut]
        best = min((e["val_bpb"] for e in prefix if isinstance(e.get("val_bpb"), float)), default=None)
        inner = {**initial_inner_state(ctx.space, 100), "iteration": cut, "experiments": prefix, "best_bpb": best}
        state: dict[str, Any] = {"inner": inner, "active": active, "cycle": cycle, "segments": [], "diagnosis": None}
        runtime = SimpleNamespace(context=outer)
        state["inner"] = adjust(state, runtime).get("inner", inner)  # type: ignore[arg-type]
        state["diagnosis"] = analyze(state, runtime)["diagnosis"]  # type: ignore[arg-type]
        generate(state, runtime)  # type: ignore[arg-type]
    out = {}
    all_calls = events(run_dir, "llm_call")
    for node, label in (("adjust", "adjust"), ("analyze", "analyze"), ("generate", "compose")):
        mine = [c for c in all_calls if c["node"] == node]
        firsts = [c for c in mine if c["attempt"] == 1]
        out[label] = {
            "calls": len(mine),
            "first_valid": sum(c["ok"] for c in firsts),
            "first_asked": len(firsts),
            "llm_s_median": median([c["latency_s"] for c in mine]),
            "prompt_tokens_median": median([float(c["prompt_tokens"]) for c in mine]),
        }
    return out


def share(n: int, d: int) -> str:
    return f"{n}/{d} ({n / d:.0%})" if d else "-"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--proposals", type=int, default=12, help="proposals per schema (default 12)")
    ap.add_argument("--calls", type=int, default=5, help="calls of each outer node (default 5)")
    ap.add_argument("--styles", default="values,moves,free", help="proposal schemas to measure: values, moves, free")
    ap.add_argument(
        "--free-proposals", type=int, default=4, help="proposals with the free schema (long prompts; default 4)"
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", type=Path, help="write the figures here as JSON")
    ap.add_argument("--keep", type=Path, help="keep the run folders here (default: a temporary folder)")
    args = ap.parse_args()
    styles = [s.strip() for s in args.styles.split(",") if s.strip()]
    root = args.keep or Path(tempfile.mkdtemp(prefix="bench-llm-"))
    root.mkdir(parents=True, exist_ok=True)
    machine = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "load_before": [round(x, 2) for x in os.getloadavg()],
    }
    results: dict[str, Any] = {"machine": machine, "propose": {}, "outer": {}}
    started = time.perf_counter()
    with open_chat_model(LLMSettings.resolve(), server_log=root / "llm_server.log") as (llm, description):
        watchdog = next((cb for cb in llm.callbacks or () if hasattr(cb, "timer")), None)
        results["model"] = description
        results["measured_speed_tokens_per_s"] = getattr(getattr(watchdog, "server", None), "speed", None)
        for style in styles:
            n = args.free_proposals if style == "free" else args.proposals
            print(f"propose ({style}): {n} proposals on the surrogate ...", flush=True)
            trace_run, results["propose"][style] = run_inner(llm, root, style, n, args.seed)
            if style == "values" and args.calls:
                print(f"adjust, analyze, compose ({style}): {args.calls} calls each ...", flush=True)
                results["outer"][style] = outer_calls(llm, root, trace_run, style, args.calls, args.seed)
    machine["load_after"] = [round(x, 2) for x in os.getloadavg()]
    results["wall_s"] = round(time.perf_counter() - started, 1)

    print(f"\n{results['model']}; {machine['processor']}, {machine['cpus']} CPUs, {machine['date']}")
    print(f"load average before {machine['load_before']}, after {machine['load_after']} (seconds depend on it)")
    print(f"measured speed (prompt, decode tokens/s, no grammar): {results['measured_speed_tokens_per_s']}\n")
    print(f"{'node':<18}{'first answer valid':>20}{'from the model':>16}{'new, not a no-op':>18}{'LLM s (median)':>16}")
    for style, f in results["propose"].items():
        print(
            f"{'propose/' + style:<18}{share(f['first_valid'], f['first_asked']):>20}"
            f"{share(f['from_model'], f['proposals']):>16}{share(f['fresh'], f['proposals']):>18}"
            f"{str(f['llm_s_per_proposal_median']) + ' /proposal':>16}"
        )
    for style, nodes in results["outer"].items():
        for node, f in nodes.items():
            label = f"{node}/{style}"
            print(f"{label:<18}{share(f['first_valid'], f['first_asked']):>20}{'':>16}{'':>18}"
                  f"{str(f['llm_s_median']) + ' /call':>16}")  # fmt: skip
    print(f"\nwall time {results['wall_s']} s; run folders in {root}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
