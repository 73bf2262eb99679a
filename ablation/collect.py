"""Reading an ablation back from its folders alone: the manifest, the noise floor, and each run's ledger
(summary.json, trace.jsonl, the confirm re-trainings). Nothing here needs the process that ran the ablation."""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from ablation.harness import MANIFEST, run_id
from ablation.stats import mean_sd
from checkpoints.run_folder import Ledger
from nodes.train import read_outcome_file


def outcome_bpb(outcome: dict[str, Any] | None) -> float | None:
    if not outcome or not outcome.get("ok"):
        return None
    bpb = outcome.get("result", {}).get("val_bpb")
    return float(bpb) if isinstance(bpb, int | float) and math.isfinite(bpb) else None


def noise_floor(root: Path) -> dict[str, Any]:
    """The baseline configuration's val_bpb over the noise-floor seeds: values, mean, standard deviation."""
    outcomes = [read_outcome_file(p) for p in sorted((root / "noise").glob("n*/outcome.json"))]
    values = [v for v in (outcome_bpb(o) for o in outcomes) if v is not None]
    mean, sd = mean_sd(values)
    return {"n": len(values), "crashes": len(outcomes) - len(values), "values": values, "mean": mean, "sd": sd}


LOADED_SHARE = 0.15  # a training during which everything else used more of the CPU than this is flagged


def machine_load(root: Path, runs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the trainings recorded of the machine's other CPU use while they ran (``other_cpu_share``, written by
    the local executor): how many recorded it, the median and largest share, the trainings above LOADED_SHARE, and
    how many were trained again after attempts set aside as contended (``--retrain-above``)."""
    noise = {f"noise/{p.parent.name}": read_outcome_file(p) or {} for p in sorted(root.glob("noise/n*/outcome.json"))}
    shares: dict[str, Any] = {where: o.get("other_cpu_share") for where, o in noise.items()}
    contended = {where: len(o.get("contended") or []) for where, o in noise.items()}
    for run in runs:
        shares.update({f"{run['id']}/{where}": share for where, share in run["cpu_shares"].items()})
        contended.update({f"{run['id']}/{where}": n for where, n in run.get("contended", {}).items()})
    measured = {where: float(v) for where, v in shares.items() if isinstance(v, int | float)}
    values = sorted(measured.values())
    loaded = sorted(((where, v) for where, v in measured.items() if v > LOADED_SHARE), key=lambda item: -item[1])
    return {
        "trainings": len(shares),
        "measured": len(values),
        "median": statistics.median(values) if values else None,
        "max": values[-1] if values else None,
        "threshold": LOADED_SHARE,
        "loaded": [[where, v] for where, v in loaded],
        # --retrain-above: trainings measured under contention, set aside and trained again (not in the figures)
        "retrained": sum(n > 0 for n in contended.values()),
        "set_aside": sum(contended.values()),
    }


def experiments(ledger: Ledger) -> list[dict[str, Any]]:
    """The run's decided experiments, by the one rule of checkpoints/trace.py."""
    return ledger.experiments()


def running_best(records: list[dict[str, Any]]) -> list[float | None]:
    """The best val_bpb after each experiment (crashes never count)."""
    best: float | None = None
    out = []
    for e in records:
        bpb = e.get("val_bpb")
        if e["status"] != "crash" and isinstance(bpb, int | float):
            best = bpb if best is None else min(best, bpb)
        out.append(best)
    return out


def improvements(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The kept experiments that lowered the best, with the size of the step."""
    out, best = [], None
    for e in records:
        bpb = e.get("val_bpb")
        if e["status"] == "crash" or not isinstance(bpb, int | float):
            continue
        if best is not None and e["status"] == "keep" and bpb < best:
            out.append(
                {
                    "iteration": e["iteration"],
                    "val_bpb": bpb,
                    "gain": best - bpb,
                    "id": e["id"],
                    "source": e.get("proposal_source") or "?",
                }
            )
        best = bpb if best is None else min(best, bpb)
    return out


def proposal_sources(records: list[dict[str, Any]]) -> dict[str, int]:
    """How many experiments after the baseline each proposal source gave: `llm` (a valid answer of the model),
    `fallback` (the recorded seeded step taken when the model gave none), `mechanism` (a mechanism's own proposal)."""
    return dict(Counter(e.get("proposal_source") or "?" for e in records if e["iteration"] > 0))


def llm_use(ledger: Ledger) -> dict[str, dict[str, float]]:
    """Per level (L1, L1.5, L2): calls, prompt and completion tokens, latency, from the `llm_call` events."""
    use: dict[str, dict[str, float]] = defaultdict(
        lambda: {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "latency_s": 0.0}
    )
    for e in ledger.events("llm_call"):
        u = use[str(e.get("level", "?"))]
        u["calls"] += 1
        u["prompt_tokens"] += int(e.get("prompt_tokens") or 0)
        u["completion_tokens"] += int(e.get("completion_tokens") or 0)
        u["latency_s"] += float(e.get("latency_s") or 0.0)
    return dict(use)


def time_use(ledger: Ledger) -> dict[str, float]:
    """Wall time of the run and of its trainings (train_end wall seconds). A run stopped and resumed is timed per
    session — from its `run_start` to its last event — so the time it lay stopped does not count."""
    sessions: list[list[float]] = []
    for e in ledger.events():
        if e.get("kind") == "run_start" or not sessions:
            sessions.append([])
        if "time" in e:
            sessions[-1].append(e["time"])
    wall = sum(max(times) - min(times) for times in sessions if times)
    training = sum(float(e.get("wall_seconds") or 0.0) for e in ledger.events("train_end"))
    return {"wall_s": wall, "training_s": training}


def segment_progress(segment: dict[str, Any], baseline_bpb: float | None) -> float:
    """The drop of the best val_bpb during a segment. The graph records 0 for the first segment (no best before
    it, so its compare step has nothing to weigh); measured from the baseline, the first segment's mechanism gets
    credit for what it found."""
    if segment.get("best_before") is None and baseline_bpb is not None and segment.get("best_after") is not None:
        return max(0.0, float(baseline_bpb) - float(segment["best_after"]))
    return float(segment.get("progress") or 0.0)


def mechanism_use(ledger: Ledger, summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per propose mechanism: calls (and failed ones), LLM asks, segments active with the progress made in them,
    and the compare verdicts after its trial segments."""
    use: dict[str, dict[str, Any]] = defaultdict(
        lambda: {
            "calls": 0,
            "failed": 0,
            "llm_asks": 0,
            "changed": 0,
            "segments": 0,
            "progress": [],
            "kept": 0,
            "rolled_back": 0,
        }
    )
    for e in ledger.events("mechanism_call"):
        u = use[e["mechanism"]]
        u["calls"] += 1
        u["failed"] += not e.get("ok", False)
        u["llm_asks"] += int(e.get("llm_asks") or 0)
        u["changed"] += bool(e.get("changed_llm_proposal"))
    for segment in summary.get("segments", []):
        u = use[segment["mechanism"]]
        u["segments"] += 1
        u["progress"].append(segment_progress(segment, summary.get("baseline_bpb")))
    for decision in summary.get("history", []):
        if decision.get("event") in ("kept", "rolled_back"):
            use[decision["mechanism"]][decision["event"]] += 1
    return dict(use)


def run_record(root: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """Everything the report reads about one (group, repeat) run."""
    run_dir = root / "runs" / run_id(entry["group"], entry["repeat"])
    ledger = Ledger(run_dir)
    summary = json.loads((run_dir / "summary.json").read_text())
    records = experiments(ledger)
    confirmations = {p.parent.name: read_outcome_file(p) for p in sorted((run_dir / "confirm").glob("c*/outcome.json"))}
    confirm = [outcome_bpb(o) for o in confirmations.values()]
    return {
        "id": run_id(entry["group"], entry["repeat"]),
        "group": entry["group"],
        "repeat": entry["repeat"],
        "seed": entry["seed"],
        "baseline_bpb": summary.get("baseline_bpb"),
        "best_bpb": summary.get("best_bpb"),
        "delta": summary.get("delta_bpb"),
        "kept": summary.get("kept"),
        "crashes": summary.get("crashes"),
        "experiments": len(records),
        "stop_reason": summary.get("stop_reason"),
        "best_curve": running_best(records),
        "points": [[e["iteration"], e.get("val_bpb"), e["status"]] for e in records],
        "improvements": improvements(records),
        "sources": proposal_sources(records),
        "proposers": [e.get("mechanism", "") for e in records],
        "llm": llm_use(ledger),
        "time": time_use(ledger),
        "mechanisms": mechanism_use(ledger, summary),
        "confirm": [v for v in confirm if v is not None],
        "confirm_crashes": sum(v is None for v in confirm),
        "cpu_shares": {e["id"]: e.get("other_cpu_share") for e in records}
        | {f"confirm/{name}": (o or {}).get("other_cpu_share") for name, o in confirmations.items()},
        "contended": {e["id"]: len(e.get("contended") or []) for e in records}
        | {f"confirm/{name}": len((o or {}).get("contended") or []) for name, o in confirmations.items()},
    }


def collect(root: Path) -> dict[str, Any]:
    """The whole ablation as plain data: spec, manifest, noise floor and every finished run."""
    root = Path(root)
    manifest = json.loads((root / MANIFEST).read_text())
    entries = [e for e in manifest["runs"].values() if e.get("status") == "done"]
    runs = [run_record(root, e) for e in sorted(entries, key=lambda e: (e["repeat"], e["group"]))]
    return {
        "spec": manifest["spec"],
        "manifest": manifest,
        "noise": noise_floor(root),
        "runs": runs,
        "machine_load": machine_load(root, runs),
    }
