"""Simulated-annealing acceptance: keep improvements, keep a worse result with probability exp(-delta / T)."""

import math
from typing import Any

NAME = "annealing"
TARGET = "decide"
PARAMS: dict[str, dict[str, Any]] = {
    "t0": {"kind": "float", "low": 1e-5, "high": 0.5, "log": True, "default": 0.01},
    "decay": {"kind": "float", "low": 0.5, "high": 1.0, "default": 0.9},
    "t_min": {"kind": "float", "low": 1e-9, "high": 0.01, "log": True, "default": 1e-6},
}


def temperature(t0: float, decay: float, t_min: float, iteration: int) -> float:
    """Exponential schedule: T = max(t_min, t0 * decay ** iteration)."""
    return max(t_min, t0 * decay ** max(0, iteration))


def _param(view: Any, key: str) -> Any:
    return view.params.get(key, PARAMS[key]["default"])


def decide(view: Any) -> dict[str, Any]:
    result = view.result or {}
    bpb = result.get("val_bpb")
    if result.get("status") == "crash" or bpb is None or not math.isfinite(bpb):
        return {"keep": False, "reason": "crashed or no val_bpb: never kept"}
    if view.best_bpb is None:
        return {"keep": True, "reason": f"first result (val_bpb {bpb:.6f})"}
    delta = bpb - view.best_bpb
    if delta < 0:
        return {"keep": True, "reason": f"improved by {-delta:.6f}"}
    temp = temperature(_param(view, "t0"), _param(view, "decay"), _param(view, "t_min"), view.iteration)
    prob = math.exp(-delta / temp)
    draw = view.rng.random()
    keep = draw < prob
    verdict = "accepted" if keep else "rejected"
    return {"keep": keep, "reason": f"worse by {delta:.6f} at T={temp:.3g}: p={prob:.3f}, draw={draw:.3f}, {verdict}"}
