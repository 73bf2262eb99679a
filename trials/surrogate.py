"""A surrogate trainer for studying search at scale: val_bpb served in milliseconds from a model fitted on real samples.

The model is fitted, deterministically, from the samples CSV every time it is loaded (no pickled model to go stale):

- val_bpb: a Gaussian process on log(val_bpb) over the unit cube of the free parameters (ARD Matern 5/2 plus a
  WhiteKernel); a served value is the posterior mean plus seeded Gaussian noise of the measured size — the standard
  deviation of the replicates (the default configuration trained with different seeds) when there are three or
  more, else the GP's own noise level;
- crashes: a configuration train.py refuses (`trials.constraints`, exit 2) crashes exactly as it would; among the
  others, a random-forest classifier learnt from the crashed samples (out of memory, too slow, diverged) crashes those
  it gives a crash probability above one half;
- the other result fields (steps, memory, training seconds) are those of the nearest successful sample.

`SurrogateExecutor` has the real trainer's interface (an `Executor`): it reads the candidate's constants from
`trial.folder/"train.py"`, and its result carries the locked evaluator's hash, the samples' split hash and
`"surrogate": True`. A run that uses it says so in run.json (`executor: "surrogate:PATH"`) and in every result.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import json
import math
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.ensemble import RandomForestClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import ConstantKernel, Matern, WhiteKernel

from mechanisms.space import SearchSpace
from trials.constraints import config_error
from trials.launcher import EVALUATOR_PATH, OVERRUN_FACTOR, TRAIN_PATH, TrainerSettings, Trial, file_sha256

MIN_REPLICATES = 3
CRASH_THRESHOLD = 0.5


def sample_status(row: dict[str, Any]) -> str:
    """The status of a sample, by the evaluate node's rule: "crash" also for a result over the budget."""
    bpb, seconds = row.get("val_bpb"), row.get("training_seconds")
    if row.get("error") or not isinstance(bpb, int | float) or not math.isfinite(bpb) or bpb <= 0:
        return "crash"
    if not isinstance(seconds, int | float) or seconds > row["budget_s"] * OVERRUN_FACTOR + 1:
        return "crash"
    return "ok"


@dataclass(frozen=True)
class LogBpbGP:
    """A GP on centred log(val_bpb): its WhiteKernel's noise level is a variance of log(val_bpb) itself."""

    gp: GaussianProcessRegressor
    offset: float

    @classmethod
    def fit(cls, x: np.ndarray, bpb: np.ndarray) -> LogBpbGP:
        y = np.log(bpb)
        kernel = ConstantKernel(0.1, (1e-5, 1e2)) * Matern(np.full(x.shape[1], 0.5), (1e-2, 1e3), nu=2.5)
        kernel += WhiteKernel(1e-3, (1e-7, 1.0))
        gp = GaussianProcessRegressor(kernel, n_restarts_optimizer=2, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            gp.fit(x, y - y.mean())
        return cls(gp, float(y.mean()))

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Posterior mean of val_bpb (the exponential of the log-space mean)."""
        return np.exp(self.gp.predict(x) + self.offset)

    @property
    def noise_log_sd(self) -> float:
        return float(math.sqrt(self.gp.kernel_.k2.noise_level))


def fit_classifier(x: np.ndarray, crashed: np.ndarray) -> RandomForestClassifier | None:
    if crashed.all() or not crashed.any():
        return None
    return RandomForestClassifier(n_estimators=100, max_features=None, random_state=0).fit(x, crashed)


@dataclass
class SurrogateModel:
    """The fitted surrogate of one samples CSV."""

    space: SearchSpace
    rows: list[dict[str, Any]]
    budget_s: float
    split_sha256: str
    regressor: LogBpbGP
    classifier: RandomForestClassifier | None
    noise_log_sd: float  # served noise, as a standard deviation of log(val_bpb)
    noise_source: str  # "replicates" or "gp"
    digest: str  # sha256 of the CSV the model was fitted on
    ok_x: np.ndarray = field(repr=False)
    ok_rows: list[dict[str, Any]] = field(repr=False)

    @classmethod
    def fit(cls, rows: list[dict[str, Any]], space: SearchSpace, digest: str = "") -> SurrogateModel:
        if not rows:
            raise ValueError("no samples to fit a surrogate on")
        budgets = {row["budget_s"] for row in rows}
        if len(budgets) != 1:
            raise ValueError(f"samples of several budgets: {sorted(budgets)}")
        ok_rows = [row for row in rows if sample_status(row) == "ok"]
        if len(ok_rows) < 3:
            raise ValueError(f"only {len(ok_rows)} successful samples: not enough to fit")
        splits = {row["split_sha256"] for row in ok_rows}
        if len(splits) != 1:
            raise ValueError("the successful samples were measured on different data splits")
        admissible = [row for row in rows if config_error(row) is None]
        x_admissible = np.array([unit_features(space, row) for row in admissible])
        crashed = np.array([sample_status(row) == "crash" for row in admissible])
        ok_x = np.array([unit_features(space, row) for row in ok_rows])
        regressor = LogBpbGP.fit(ok_x, np.array([row["val_bpb"] for row in ok_rows]))
        noise_log_sd, source = regressor.noise_log_sd, "gp"
        replicates = [math.log(row["val_bpb"]) for row in ok_rows if row.get("design") == "replicate"]
        if len(replicates) >= MIN_REPLICATES:
            noise_log_sd, source = float(np.std(replicates, ddof=1)), "replicates"
        return cls(
            space=space,
            rows=rows,
            budget_s=float(budgets.pop()),
            split_sha256=str(splits.pop()),
            regressor=regressor,
            classifier=fit_classifier(x_admissible, crashed),
            noise_log_sd=noise_log_sd,
            noise_source=source,
            digest=digest,
            ok_x=ok_x,
            ok_rows=ok_rows,
        )

    def crash_probability(self, params: dict[str, Any]) -> float:
        if self.classifier is None:  # no sample crashed
            return 0.0
        x = unit_features(self.space, params)[None, :]
        return float(self.classifier.predict_proba(x)[0][list(self.classifier.classes_).index(True)])

    def mean_bpb(self, params: dict[str, Any]) -> float:
        return float(self.regressor.predict(unit_features(self.space, params)[None, :])[0])

    def nearest(self, params: dict[str, Any]) -> dict[str, Any]:
        distances = np.abs(self.ok_x - unit_features(self.space, params)).max(axis=1)
        return self.ok_rows[int(np.argmin(distances))]

    def serve(self, params: dict[str, Any], noise_seed: int) -> dict[str, Any]:
        """One training outcome: a crash where train.py or the crash model says so, else the mean with noise."""
        refused = config_error(params)
        if refused:
            return {
                "ok": False,
                "returncode": 2,
                "surrogate": True,
                "error": f"exit 2: invalid configuration (surrogate, train.py's rule: {refused})",
            }
        p_crash = self.crash_probability(params)
        if p_crash > CRASH_THRESHOLD:
            return {
                "ok": False,
                "returncode": 1,
                "surrogate": True,
                "error": f"surrogate: crash predicted (p={p_crash:.2f}) from the crashed samples",
            }
        mean = self.mean_bpb(params)
        draw = float(np.random.default_rng(noise_seed).normal(0.0, self.noise_log_sd))
        near = self.nearest(params)
        result = {
            "val_bpb": mean * math.exp(draw),
            "training_seconds": min(float(near["training_seconds"]), self.budget_s),
            "num_steps": near.get("num_steps"),
            "peak_memory_mb": near.get("peak_memory_mb"),
            "split_sha256": self.split_sha256,
            "surrogate": True,
            "surrogate_samples_sha256": self.digest,
            "surrogate_mean_bpb": mean,
            "surrogate_noise_log_sd": self.noise_log_sd,
            "crash_probability": p_crash,
            "budget_s": self.budget_s,
        }
        return {"ok": True, "returncode": 0, "result": result}


def file_digest(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@functools.lru_cache(maxsize=8)
def _load(path: str, digest: str) -> SurrogateModel:
    space = SearchSpace.from_train_source(TRAIN_PATH.read_text())
    return SurrogateModel.fit(read_samples(Path(path)), space, digest)


def load_model(path: Path) -> SurrogateModel:
    """The surrogate of the samples at ``path`` (fitted once per process and file content)."""
    return _load(str(Path(path).resolve()), file_digest(path))


def noise_seed(settings: TrainerSettings, experiment_id: str, params: dict[str, Any]) -> int:
    """The noise draw of one trial: a function of the run's seed, the experiment and its configuration, so the
    paired groups of an ablation (same seeds) see the same draw for the same experiment, and a resume too."""
    key = json.dumps([settings.seed, experiment_id, params], sort_keys=True, default=str)
    return int.from_bytes(hashlib.sha256(key.encode()).digest()[:8], "big")


class SurrogateExecutor:
    """An `Executor` that serves val_bpb from a fitted surrogate instead of training."""

    def __init__(self, model: SurrogateModel, label: str) -> None:
        self.model = model
        self.label = label
        # computed here, in the parent, as the local executor hashes the evaluator a training imports: the evaluator
        # the run's results stand for (the samples' own is recorded in the ablation's surrogate_fit.json)
        self.evaluator_sha256 = file_sha256(EVALUATOR_PATH)

    @classmethod
    def load(cls, path: Path) -> SurrogateExecutor:
        return cls(load_model(path), f"surrogate:{path}")

    def run(self, trial: Trial, settings: TrainerSettings) -> dict[str, Any]:
        if not math.isclose(settings.budget_s, self.model.budget_s):
            raise ValueError(f"{self.label} models a {self.model.budget_s:g} s budget, not {settings.budget_s:g} s")
        start = time.monotonic()
        params = SearchSpace.from_train_source((trial.folder / "train.py").read_text()).defaults()
        outcome = self.model.serve(params, noise_seed(settings, trial.experiment_id, params))
        outcome["wall_seconds"] = round(time.monotonic() - start, 4)
        outcome["surrogate"] = self.label  # every outcome, crashes included: nothing here was trained
        outcome["evaluator_sha256"] = self.evaluator_sha256
        if outcome["ok"]:
            outcome["result"]["surrogate_label"] = self.label
        return outcome

    def run_batch(self, trials: list[Trial], settings: TrainerSettings) -> list[dict[str, Any]]:
        return [self.run(trial, settings) for trial in trials]


def read_samples(path: Path) -> list[dict[str, Any]]:
    """The CSV's rows with numbers parsed (empty cells read as None)."""
    if not Path(path).exists():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: _parse(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _parse(text: str | None) -> Any:
    if text is None or text == "":
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def unit_features(space: SearchSpace, params: Mapping[str, Any]) -> np.ndarray:
    """A configuration as a point of the unit cube (free parameters, in declaration order)."""
    out = []
    for p in space:
        if p.frozen:
            continue
        value = params.get(p.name, p.default)
        if p.kind in ("int", "float"):
            out.append(p.to_unit(value))
        else:
            values = [False, True] if p.kind == "bool" else list(p.choices)
            index = next((i for i, v in enumerate(values) if v == value and type(v) is type(value)), 0)
            out.append((index + 0.5) / len(values))
    return np.asarray(out, dtype=float)
