"""The quality of a fitted surrogate (`trials.surrogate`): its held-out fit by K-fold cross-validation, against the
measured noise, and the cross-validated accuracy of its crash rule."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import r2_score
from sklearn.model_selection import KFold

from trials.constraints import config_error
from trials.launcher import EVALUATOR_PATH, file_sha256
from trials.surrogate import LogBpbGP, SurrogateModel, fit_classifier, sample_status, unit_features

FOLDS = 5


def fit_quality(model: SurrogateModel, folds: int = FOLDS) -> dict[str, Any]:
    """Held-out quality by K-fold cross-validation: R^2 and RMSE of val_bpb, against the noise; crash accuracy."""
    rows = model.ok_rows
    x, y = model.ok_x, np.array([row["val_bpb"] for row in rows])
    predicted = np.zeros_like(y)
    for train, test in KFold(min(folds, len(y)), shuffle=True, random_state=0).split(x):
        predicted[test] = LogBpbGP.fit(x[train], y[train]).predict(x[test])
    replicates = [row["val_bpb"] for row in rows if row.get("design") == "replicate"]
    baseline = float(np.mean(replicates)) if replicates else model.mean_bpb(model.space.defaults())
    rmse = float(np.sqrt(np.mean((predicted - y) ** 2)))
    noise_bpb = baseline * model.noise_log_sd
    admissible = [row for row in model.rows if config_error(row) is None]
    all_x = np.array([unit_features(model.space, row) for row in admissible])
    crashed = np.array([sample_status(row) == "crash" for row in admissible])
    refused = [row for row in model.rows if row.get("returncode") == 2]
    return {
        "samples": len(model.rows),
        "successful": len(rows),
        "crashed": sum(sample_status(row) == "crash" for row in model.rows),
        "rule_agrees": sum((row.get("returncode") == 2) == (config_error(row) is not None) for row in model.rows),
        "refused_by_trainer": len(refused),
        "budget_s": model.budget_s,
        "cv_folds": min(folds, len(y)),
        "cv_r2": float(r2_score(y, predicted)),
        "cv_r2_log": float(r2_score(np.log(y), np.log(predicted))),
        "cv_rmse_bpb": rmse,
        "cv_mae_bpb": float(np.mean(np.abs(predicted - y))),
        "noise_source": model.noise_source,
        "noise_sd_bpb_at_baseline": noise_bpb,
        "replicate_sd_bpb": float(np.std(replicates, ddof=1)) if len(replicates) > 1 else None,
        "gp_noise_sd_bpb_at_baseline": baseline * model.regressor.noise_log_sd,
        "rmse_over_noise": rmse / noise_bpb if noise_bpb > 0 else None,
        "crash_cv_accuracy": crash_accuracy(all_x, crashed, folds),
        "crash_base_rate": float(crashed.mean()),
        "kernel": str(model.regressor.gp.kernel_),
        "samples_sha256": model.digest,
        "evaluator_sha256_of_samples": sorted({r["evaluator_sha256"] for r in rows if r.get("evaluator_sha256")}),
        "evaluator_sha256_now": file_sha256(EVALUATOR_PATH),
        "cv_predictions": [[float(a), float(b)] for a, b in zip(y, predicted, strict=True)],
    }


def crash_accuracy(x: np.ndarray, crashed: np.ndarray, folds: int) -> float | None:
    """Cross-validated accuracy of the crash rule (None when all samples agree: nothing to learn)."""
    if crashed.all() or not crashed.any():
        return None
    hits = 0
    for train, test in KFold(min(folds, len(crashed)), shuffle=True, random_state=0).split(x):
        model = fit_classifier(x[train], crashed[train])
        guess = np.full(len(test), bool(crashed[train].mean() > 0.5)) if model is None else model.predict(x[test])
        hits += int(np.sum(guess == crashed[test]))
    return hits / len(crashed)
