"""`python -m graphs.bilevel report RUN`: a report regenerated from the ledger alone (results.tsv, trace.jsonl,
mechanisms/): a markdown summary, per-mechanism proof of execution, and PNG plots."""

from __future__ import annotations

import argparse
import json
import math
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from checkpoints.run_folder import Ledger, write_atomic  # noqa: E402


def mechanism_activity(ledger: Ledger) -> dict[str, dict[str, Any]]:
    """Per mechanism: calls, failed calls, LLM asks, proposals it changed, iterations active (proof it ran)."""
    stats: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"calls": 0, "failed": 0, "llm_asks": 0, "changed": 0, "iterations": set(), "origin": ""}
    )
    for e in ledger.events("mechanism_call"):
        s = stats[e["mechanism"]]
        s["calls"] += 1
        s["failed"] += not e.get("ok", False)
        s["llm_asks"] += e.get("llm_asks", 0)
        s["changed"] += bool(e.get("changed_llm_proposal"))
        s["iterations"].add(e.get("iteration"))
        s["origin"] = e.get("origin", "")
    return {k: {**v, "iterations": sorted(i for i in v["iterations"] if i is not None)} for k, v in stats.items()}


REJECTION_KINDS = (
    ("no-op", "no-op"),
    ("outside", "out of range"),
    ("frozen", "frozen"),
    ("did not call the tool", "no tool call"),
    ("did not validate", "wrong schema"),
    ("could not be read", "unreadable arguments"),
    ("endpoint error", "endpoint error"),
)


def proposal_stats(ledger: Ledger) -> dict[str, Any]:
    """How the Level-1 proposals came about: valid at once, repaired after a re-ask, or a recorded fallback;
    why answers were rejected; and the LLM time per proposal."""
    by_iteration: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for e in ledger.events("llm_call"):
        if e.get("level") == "L1":
            by_iteration[e.get("iteration", -1)].append(e)
    outcome: Counter[str] = Counter()
    reasons: Counter[str] = Counter()
    latency = []
    for calls in by_iteration.values():
        latency.append(sum(c.get("latency_s") or 0.0 for c in calls))
        first_ok = next((i for i, c in enumerate(calls) if c.get("ok")), None)
        outcome["valid at once" if first_ok == 0 else "repaired" if first_ok is not None else "fallback"] += 1
        for c in calls:
            if not c.get("ok"):
                error = c.get("error") or ""
                reasons[next((label for key, label in REJECTION_KINDS if key in error), "other")] += 1
    latency.sort()
    return {
        "proposals": len(by_iteration),
        "outcome": dict(outcome),
        "rejections": dict(reasons),
        "median_llm_s": latency[len(latency) // 2] if latency else None,
    }


def surrogate_label(ledger: Ledger) -> str | None:
    """The surrogate the run's val_bpb came from ("surrogate:PATH"), or None for a run that trained."""
    for event in ledger.events("run_start"):
        executor = str(event.get("executor") or "")
        if executor.startswith("surrogate:"):
            return executor
    return None


def plot_progress(experiments: list[dict[str, Any]], path: Path, surrogate: bool = False) -> None:
    """autoresearch's progress chart: every experiment's val_bpb, the kept ones, and the running best."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    if surrogate:
        ax.set_title("val_bpb per experiment (surrogate: served by a fitted model, not trained)")
    xs = [e["iteration"] for e in experiments if isinstance(e.get("val_bpb"), float)]
    ys = [e["val_bpb"] for e in experiments if isinstance(e.get("val_bpb"), float)]
    ax.scatter(xs, ys, s=14, color="#bbbbbb", label="discarded")
    kept = [e for e in experiments if e["status"] == "keep"]
    ax.scatter(
        [e["iteration"] for e in kept], [e["val_bpb"] for e in kept], s=30, color="#2a9d8f", label="kept", zorder=3
    )
    best, run = [], None
    for e in experiments:
        if e["status"] != "crash" and isinstance(e.get("val_bpb"), float):
            run = e["val_bpb"] if run is None else min(run, e["val_bpb"])
        best.append(run)
    ax.step(
        [e["iteration"] for e in experiments],
        [math.nan if b is None else b for b in best],
        where="post",
        color="#e76f51",
        label="running best",
    )
    for e in experiments:
        if e["status"] == "crash":
            ax.axvline(e["iteration"], color="#e63946", alpha=0.25, lw=1)
    ax.set_xlabel("experiment")
    ax.set_ylabel("val_bpb (lower is better)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_mechanisms(experiments: list[dict[str, Any]], path: Path, surrogate: bool = False) -> None:
    """Which mechanism proposed each experiment, over time."""
    names = sorted({e.get("mechanism") or "?" for e in experiments})
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(names) + 1.5))
    colours = {"keep": "#2a9d8f", "discard": "#8d99ae", "crash": "#e63946"}
    for e in experiments:
        ax.scatter(e["iteration"], names.index(e.get("mechanism") or "?"), color=colours[e["status"]], s=40)
    ax.set_yticks(range(len(names)), names)
    ax.set_xlabel("experiment (green kept, grey discarded, red crash)")
    ax.set_title("mechanism active at each experiment" + (" (surrogate executor)" if surrogate else ""))
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(run_dir: Path) -> Path:
    ledger = Ledger(run_dir)
    experiments = ledger.experiments()
    activity = mechanism_activity(ledger)
    llm: Counter[tuple[str, str]] = Counter()
    for e in ledger.events("llm_call"):
        llm[(e.get("level", "?"), "calls")] += 1
        llm[(e.get("level", "?"), "tokens")] += int(e.get("prompt_tokens") or 0) + int(e.get("completion_tokens") or 0)
    surrogate = surrogate_label(ledger)
    lines = [f"# Run report: {run_dir.name}" + (" (surrogate)" if surrogate else ""), ""]
    if surrogate:
        lines += [
            f"**Surrogate run**: no training happened; every val_bpb was served by the model fitted on the real "
            f"samples at `{surrogate.split(':', 1)[1]}` (`--executor {surrogate}`).",
            "",
        ]
    unsafe = list(ledger.events("unsafe_no_sandbox"))
    if unsafe:
        needs = "; ".join(unsafe[0].get("needs") or []) or "none"
        lines += [
            f"**Unsafe run** (`--unsafe-no-sandbox`): LLM-written code ran without the OS sandbox ({needs}).",
            "",
        ]
    if experiments:
        plot_progress(experiments, run_dir / "progress.png", surrogate is not None)
        plot_mechanisms(experiments, run_dir / "mechanisms.png", surrogate is not None)
        ok = [e for e in experiments if e["status"] != "crash" and isinstance(e.get("val_bpb"), float)]
        base = experiments[0].get("val_bpb")
        best = min((e["val_bpb"] for e in ok), default=None)
        lines += [
            f"- experiments: {len(experiments)} (kept {sum(e['status'] == 'keep' for e in experiments[1:])}, "
            f"crashes {sum(e['status'] == 'crash' for e in experiments)})",
            f"- baseline val_bpb: {base}",
            f"- best val_bpb: {best}",
            f"- Δ val_bpb (best − baseline): {best - base:+.6f}" if best and base else "- Δ val_bpb: n/a",
            "",
            "![progress](progress.png)",
            "",
            "![mechanisms](mechanisms.png)",
            "",
        ]
    lines += [
        "## Mechanisms (proof of execution: every call is a `mechanism_call` event in trace.jsonl)",
        "",
        "| mechanism | origin | calls | failed | LLM asks | proposals it changed | iterations |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in activity.items():
        its = s["iterations"]
        span = f"{its[0]}–{its[-1]}" if its else "—"
        lines.append(
            f"| {name} | {s['origin']} | {s['calls']} | {s['failed']} | {s['llm_asks']} | {s['changed']} | {span} |"
        )
    decisions = list(ledger.events("compare")) + [e for e in ledger.events("inject") if not e.get("injected")]
    if decisions:
        lines += ["", "## Outer decisions", ""]
        lines += [
            f"- cycle {e.get('cycle')}: {e.get('event') or 'refused'} {e.get('mechanism')} — "
            f"{e.get('evidence') or e.get('reason')}"
            for e in decisions
        ]
    refused = [e for e in ledger.events("validate") if not e.get("ok")]
    if refused:
        lines += ["", "## Candidates the validator refused", ""]
        for e in refused:
            first = " ".join(str((e.get("errors") or ["?"])[0]).split())
            lines.append(
                f"- cycle {e.get('cycle')}: {e.get('mechanism') or '(no candidate)'} at {e.get('stage', '?')} — "
                f"{first[:300]}"
            )
    stats = proposal_stats(ledger)
    if stats["proposals"]:
        lines += [
            "",
            "## Level-1 proposals",
            "",
            f"- proposals that asked the LLM: {stats['proposals']}; median LLM time per proposal: "
            f"{stats['median_llm_s']:.1f} s",
            "- " + ", ".join(f"{k}: {v}" for k, v in stats["outcome"].items()),
            "- rejected answers by reason: "
            + (", ".join(f"{k} {v}" for k, v in stats["rejections"].items()) or "none"),
        ]
    lines += time_split_lines(experiments)
    lines += ["", "## LLM use by level", "", "| level | calls | tokens |", "|---|---|---|"]
    for level in sorted({k[0] for k in llm}):
        lines.append(f"| {level} | {llm[(level, 'calls')]} | {llm[(level, 'tokens')]} |")
    path = run_dir / "report.md"
    write_atomic(path, "\n".join(lines) + "\n")
    return path


TIME_PHASES = (
    ("startup_seconds", "start-up (interpreter, torch, data)"),
    ("warmup_seconds", "warm-up steps (compilation)"),
    ("training_seconds", "training (the budget)"),
    ("setup_and_overhead_seconds", "model set-up and loop overhead"),
    ("eval_seconds", "evaluation"),
)


def time_split_lines(experiments: list[dict[str, Any]]) -> list[str]:
    """Where each training's wall time went, phase by phase (medians over the trainings that report it), and the
    fixed cost around the budget as a share of it."""
    timed = [e for e in experiments if isinstance(e.get("timing"), dict)]
    if not timed:
        return []

    def median(values: list[float]) -> float:
        values = sorted(values)
        return values[len(values) // 2] if values else math.nan

    lines = ["", f"## Where a training's time went (medians over {len(timed)} trainings)", ""]
    lines += ["| phase | seconds |", "|---|---|"]
    for key, label in TIME_PHASES:
        lines.append(f"| {label} | {median([float(e['timing'].get(key) or 0.0) for e in timed]):.2f} |")
    walls = [float(e["seconds"]) for e in timed if isinstance(e.get("seconds"), int | float)]
    trained = median([float(e["timing"].get("training_seconds") or 0.0) for e in timed])
    if walls and trained > 0:
        fixed = median(walls) - trained
        lines.append(f"| wall time as the executor saw it | {median(walls):.2f} |")
        lines += ["", f"Fixed cost per trial (wall − training): {fixed:.2f} s, {fixed / trained:.0%} of the training."]
    return lines


def main_report(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphs.bilevel report")
    ap.add_argument("run_dir", type=Path)
    args = ap.parse_args(argv)
    path = write_report(args.run_dir)
    print(path.read_text())
    print(json.dumps({"report": str(path)}))
    return 0
