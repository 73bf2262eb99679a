"""The numbers of the report, computed from `collect.collect`'s data: per group, against group A, per level and
per mechanism. Deltas are best - baseline in val_bpb: negative is an improvement."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from ablation.stats import bootstrap_ci, holm, paired_comparison, share_test, summarise

REFERENCE = "A"
# the model-free groups every other group is paired against as well: a search that needs no model at all, at the same
# number of trainings, is the bar a mechanism claim has to clear
PAIRED_BASELINES = ("local", "cmaes")
LEVELS = ("L1", "L1.5", "L2")


def family(mechanism_id: str) -> str:
    return mechanism_id.split("@", 1)[0]


def group_runs(data: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    by_group: dict[str, list[dict[str, Any]]] = {g: [] for g in data["spec"]["groups"]}
    for run in data["runs"]:
        by_group.setdefault(run["group"], []).append(run)
    return by_group


def curve(runs: list[dict[str, Any]], length: int) -> dict[str, list[float]]:
    """Mean running-best delta per iteration over the runs, with a bootstrap 95% band."""
    mean, low, high = [], [], []
    for i in range(length):
        values = [
            r["best_curve"][i] - r["baseline_bpb"]
            for r in runs
            if i < len(r["best_curve"]) and r["best_curve"][i] is not None and r["baseline_bpb"] is not None
        ]
        lo, hi = bootstrap_ci(values, n_boot=2000, seed=i)
        mean.append(float(np.mean(values)) if values else math.nan)
        low.append(lo)
        high.append(hi)
    return {"mean": mean, "low": low, "high": high}


def llm_table(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per level: LLM calls and tokens per run (mean), and latency per run (mean seconds)."""
    out = {}
    for level in LEVELS:
        per_run = [r["llm"].get(level, {}) for r in runs]
        out[level] = {
            "calls": _mean([u.get("calls", 0) for u in per_run]),
            "tokens": _mean([u.get("prompt_tokens", 0) + u.get("completion_tokens", 0) for u in per_run]),
            "latency_s": _mean([u.get("latency_s", 0.0) for u in per_run]),
        }
    return out


def source_table(runs: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Per proposal source: experiments per run (mean), the kept improvements it gave (total over the runs) and
    the share of its experiments that were kept improvements."""
    names = sorted({name for r in runs for name in r.get("sources", {})})
    table = {}
    for name in names:
        total = sum(r.get("sources", {}).get(name, 0) for r in runs)
        kept = sum(imp.get("source") == name for r in runs for imp in r["improvements"])
        table[name] = {
            "per_run": _mean([r.get("sources", {}).get(name, 0) for r in runs]),
            "total": total,
            "kept": kept,
            "kept_rate": kept / total if total else math.nan,
        }
    if {"llm", "fallback"} <= set(table):
        table["llm"]["vs_fallback_p"] = share_test(table["llm"], table["fallback"])
    return table


def confirmed_delta(run: dict[str, Any], noise: dict[str, Any]) -> float:
    """The run's best re-trained with fresh seeds (mean), minus the noise floor's mean: a Δ with no selection on
    noise in it."""
    return float(np.mean(run["confirm"])) - noise["mean"]


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


def mechanism_table(runs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per mechanism family over the runs of a group: where it was used, how often it ran, what it achieved."""
    table: dict[str, dict[str, Any]] = defaultdict(
        lambda: {
            "runs": 0,
            "segments": 0,
            "calls": 0,
            "failed": 0,
            "llm_asks": 0,
            "progress": [],
            "kept": 0,
            "rolled_back": 0,
        }
    )
    for run in runs:
        seen = set()
        for mid, use in run["mechanisms"].items():
            t = table[family(mid)]
            if family(mid) not in seen:
                t["runs"] += 1
                seen.add(family(mid))
            for key in ("segments", "calls", "failed", "llm_asks", "kept", "rolled_back"):
                t[key] += use[key]
            t["progress"].extend(use["progress"])
    return {
        name: {
            **{k: v for k, v in t.items() if k != "progress"},
            "mean_progress": float(np.mean(t["progress"])) if t["progress"] else math.nan,
        }
        for name, t in table.items()
    }


def analyse(data: dict[str, Any]) -> dict[str, Any]:
    noise = data["noise"]
    noise_sd = noise["sd"]
    by_group = group_runs(data)
    length = data["spec"]["iterations"] + 1
    reference = {r["repeat"]: r["delta"] for r in by_group.get(REFERENCE, []) if r["delta"] is not None}
    reference_confirmed = {r["repeat"]: confirmed_delta(r, noise) for r in by_group.get(REFERENCE, []) if r["confirm"]}
    groups = {}
    for group, runs in by_group.items():
        deltas = [r["delta"] for r in runs if r["delta"] is not None]
        gains = [imp["gain"] for r in runs for imp in r["improvements"]]
        confirmed = [confirmed_delta(r, noise) for r in runs if r["confirm"]]
        paired = [r for r in runs if r["delta"] is not None and r["repeat"] in reference]
        paired_confirmed = [r for r in runs if r["confirm"] and r["repeat"] in reference_confirmed]
        entry: dict[str, Any] = {
            "runs": len(runs),
            "delta": summarise(deltas).to_dict(),
            "confirmed_delta": summarise(confirmed).to_dict() if confirmed else None,
            "kept_improvements": len(gains),
            "within_noise": sum(g < noise_sd for g in gains) if not math.isnan(noise_sd) else None,
            "runs_within_noise": sum(abs(d) < noise_sd for d in deltas) if not math.isnan(noise_sd) else None,
            "crashes": sum(r["crashes"] or 0 for r in runs),
            "experiments": sum(r["experiments"] for r in runs),
            "curve": curve(runs, length),
            "llm": llm_table(runs),
            "sources": source_table(runs),
            "wall_s": _mean([r["time"]["wall_s"] for r in runs]),
            "training_s": _mean([r["time"]["training_s"] for r in runs]),
            "mechanisms": mechanism_table(runs),
        }
        if group != REFERENCE and paired:
            comparison = paired_comparison([r["delta"] for r in paired], [reference[r["repeat"]] for r in paired])
            entry["vs_A"] = comparison.to_dict()
        if group != REFERENCE and paired_confirmed:
            entry["vs_A_confirmed"] = paired_comparison(
                [confirmed_delta(r, noise) for r in paired_confirmed],
                [reference_confirmed[r["repeat"]] for r in paired_confirmed],
            ).to_dict()
        groups[group] = entry
    # each group against A is one test of a family: Holm's adjustment of the exact permutation p-values
    family = {g: e["vs_A"]["permutation_p"] for g, e in groups.items() if "vs_A" in e}
    for g, p in holm(family).items():
        groups[g]["vs_A"]["holm_p"] = p
    return {"noise": noise, "groups": groups, "vs_baselines": against_baselines(by_group)}


def against_baselines(by_group: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Every group that is not itself a baseline, paired on Δ against each baseline that ran (by repeat, so by seed);
    the p-values of all these comparisons adjusted together (Holm)."""
    rows: list[dict[str, Any]] = []
    for base in PAIRED_BASELINES:
        reference = {r["repeat"]: r["delta"] for r in by_group.get(base, []) if r["delta"] is not None}
        if not reference:
            continue
        for group, runs in by_group.items():
            paired = [r for r in runs if r["delta"] is not None and r["repeat"] in reference]
            if group in PAIRED_BASELINES or not paired:
                continue
            comparison = paired_comparison([r["delta"] for r in paired], [reference[r["repeat"]] for r in paired])
            rows.append({"group": group, "baseline": base, **comparison.to_dict()})
    adjusted = holm({f"{r['group']}|{r['baseline']}": r["permutation_p"] for r in rows})
    for r in rows:
        r["holm_p"] = adjusted[f"{r['group']}|{r['baseline']}"]
    return rows
