"""The surrogate against real trainings it was not fitted on: the configurations a real ablation's searches visited.

Cross-validation (`surrogate.fit_quality`) measures the fit where the samples are; the searches spend their trials
elsewhere — one to three parameters away from the default or from a good configuration. A real ablation's folder
holds exactly those trainings (every experiment of every run, the noise floor, the confirmations), so the surrogate's
predictions for them, set against what the real trainer measured, say how far a result on the surrogate carries.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from ablation.collect import experiments, outcome_bpb
from ablation.harness import MANIFEST
from checkpoints.run_folder import Ledger
from nodes.train import read_outcome_file
from trials.constraints import config_error
from trials.surrogate import CRASH_THRESHOLD, SurrogateModel


def real_trainings(root: Path) -> list[dict[str, Any]]:
    """Every training of an ablation folder as {source, params, val_bpb (None: crashed)}."""
    root = Path(root)
    out: list[dict[str, Any]] = []
    for run_dir in sorted((root / "runs").glob("*")):
        for e in experiments(Ledger(run_dir)):
            bpb = e.get("val_bpb") if e["status"] != "crash" else None
            out.append({"source": f"{run_dir.name}/{e['id']}", "params": dict(e["params"]), "val_bpb": bpb})
    for path in sorted(root.glob("noise/n*/outcome.json")) + sorted(root.glob("runs/*/confirm/c*/outcome.json")):
        outcome = read_outcome_file(path)
        if outcome is not None and "params" in outcome:
            source = str(path.parent.relative_to(root))
            out.append({"source": source, "params": outcome["params"], "val_bpb": outcome_bpb(outcome)})
    return out


def check_against(model: SurrogateModel, root: Path) -> dict[str, Any]:
    """The surrogate's predictions for every real training of the ablation folder ``root``, against the measured
    values: rank and error agreement on the trainings both call successful, and the crash rule's agreement."""
    spec = json.loads((Path(root) / MANIFEST).read_text())["spec"]
    if spec["executor"].startswith("surrogate:"):
        raise ValueError(f"{root} was served by a surrogate: its trainings are not real ones to check against")
    if float(spec["budget_s"]) != model.budget_s:
        raise ValueError(f"{root} trained at {spec['budget_s']} s, the surrogate's samples at {model.budget_s:g} s")
    trainings = real_trainings(root)
    refused = [t for t in trainings if config_error(t["params"]) is not None]
    judged = [t for t in trainings if config_error(t["params"]) is None]
    predicted_crash = [model.crash_probability(t["params"]) > CRASH_THRESHOLD for t in judged]
    real_crash = [t["val_bpb"] is None for t in judged]
    both_ok = [t for t, pc, rc in zip(judged, predicted_crash, real_crash, strict=True) if not pc and not rc]
    real = np.array([t["val_bpb"] for t in both_ok], dtype=float)
    mean = np.array([model.mean_bpb(t["params"]) for t in both_ok], dtype=float)
    errors = np.abs(mean - real)
    noise_sd = float(np.mean(real)) * model.noise_log_sd if real.size else math.nan
    distinct = len({json.dumps(t["params"], sort_keys=True) for t in both_ok})
    return {
        "folder": str(root),
        "trainings": len(trainings),
        "refused_by_rule": len(refused),
        "crash_agreement": {
            "both_crash": sum(p and r for p, r in zip(predicted_crash, real_crash, strict=True)),
            "both_ok": len(both_ok),
            "predicted_crash_only": sum(p and not r for p, r in zip(predicted_crash, real_crash, strict=True)),
            "real_crash_only": sum(r and not p for p, r in zip(predicted_crash, real_crash, strict=True)),
        },
        "distinct_configurations": distinct,
        "spearman": float(sps.spearmanr(mean, real).statistic) if real.size > 2 else math.nan,
        "mae_bpb": float(errors.mean()) if real.size else math.nan,
        "median_abs_error_bpb": float(np.median(errors)) if real.size else math.nan,
        "bias_bpb": float(np.mean(mean - real)) if real.size else math.nan,
        "served_noise_sd_bpb": noise_sd,
        "within_2_noise_sd": float(np.mean(errors <= 2 * noise_sd)) if real.size else math.nan,
        "pairs": [[t["source"], float(m), float(r)] for t, m, r in zip(both_ok, mean, real, strict=True)],
    }
