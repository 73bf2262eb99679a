"""The surrogate trainer on a small fitted model: the sampling plan and its resume, the served results (hashes,
label, seeded noise, learnt crashes), its held-out fit quality, and a run that uses it through RunConfig."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support import SPLIT, synthetic_bpb

from ablation import cli
from ablation.harness import Ablation, AblationSpec
from ablation.sampling import archive_path, collect_samples, from_unit, plan, unit_centre, write_samples
from ablation.surrogate_check import check_against
from ablation.surrogate_quality import fit_quality
from checkpoints.run_folder import Ledger
from graphs.run_config import RunConfig
from graphs.runner import execute
from llm.scripted import ScriptedChatModel
from mechanisms.space import SearchSpace
from trials.candidate import rewrite_constants
from trials.constraints import config_error
from trials.launcher import EVALUATOR_PATH, TRAIN_PATH, TrainerSettings, Trial, file_sha256
from trials.surrogate import SurrogateExecutor, load_model, read_samples, unit_features

SPACE = SearchSpace.from_train_source(TRAIN_PATH.read_text())


class NoisyTrainer:
    """The synthetic landscape with 1 % seeded noise; WEIGHT_DECAY above 0.25 diverges."""

    def __init__(self) -> None:
        self.runs: list[str] = []

    def run_batch(self, trials: list[Trial], settings: TrainerSettings) -> list[dict[str, Any]]:
        return [self.run(t, settings) for t in trials]

    def run(self, trial: Trial, settings: TrainerSettings) -> dict[str, Any]:
        self.runs.append(trial.experiment_id)
        params = SearchSpace.from_train_source((trial.folder / "train.py").read_text()).defaults()
        if params["WEIGHT_DECAY"] > 0.25:
            return {"ok": False, "returncode": 3, "error": "exit 3: diverged", "wall_seconds": 0.01}
        bpb = synthetic_bpb(params) * (1 + 0.01 * random.Random(settings.seed).gauss(0, 1))
        result = {
            "val_bpb": bpb,
            "training_seconds": settings.budget_s * 0.9,
            "num_steps": 7,
            "peak_memory_mb": 800.0,
            "split_sha256": SPLIT,
        }
        evaluator = file_sha256(EVALUATOR_PATH)  # hashed by the executor, as the real ones do
        return {"ok": True, "returncode": 0, "wall_seconds": 0.01, "result": result, "evaluator_sha256": evaluator}


@pytest.fixture(scope="module")
def samples(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("samples")
    collect_samples(root / "samples.csv", root / "work", 36, 4, 20.0, executor=NoisyTrainer(), log=lambda _: None)
    return root / "samples.csv"


def test_the_plan_interleaves_designs_and_a_collection_resumes(samples: Path, tmp_path: Path) -> None:
    points = plan(SPACE, 36, 4, 0)
    assert [p["design"] for p in points[:3]] == ["replicate", "global", "local"]
    assert sum(p["design"] == "replicate" for p in points) == 4 and len(points) == 40
    rows = read_samples(samples)
    assert [r["point"] for r in rows] == [p["point"] for p in points]
    assert all(r[n] == p["params"][n] for r, p in zip(rows, points, strict=True) for n in SPACE.names)
    again = NoisyTrainer()
    collect_samples(samples, tmp_path / "work", 36, 4, 20.0, executor=again, log=lambda _: None)
    assert again.runs == []  # nothing trained twice
    with pytest.raises(ValueError, match="not the point of this plan"):
        collect_samples(samples, tmp_path / "work", 20, 4, 20.0, executor=again, log=lambda _: None)
    with pytest.raises(ValueError, match="budget"):
        collect_samples(samples, tmp_path / "work", 36, 4, 30.0, executor=again, log=lambda _: None)


def test_samples_measured_on_a_loaded_machine_are_archived_and_trained_again(samples: Path, tmp_path: Path) -> None:
    csv_path = tmp_path / "samples.csv"
    rows = read_samples(samples)
    for i, row in enumerate(rows):
        row["load_avg"] = [0.5, 7.0, None][i % 3]
    write_samples(csv_path, rows, SPACE.names)
    again = NoisyTrainer()
    after = collect_samples(csv_path, tmp_path / "work", 36, 4, 20.0, executor=again, retrain_above_load=2.0, log=print)
    loaded = [r["point"] for i, r in enumerate(rows) if i % 3]
    assert sorted(again.runs) == sorted(loaded)  # exactly the loaded ones, trained again
    assert sorted(r["point"] for r in read_samples(csv_path)) == sorted(r["point"] for r in rows)
    assert [r["point"] for r in read_samples(archive_path(csv_path))] == loaded  # kept, not deleted
    assert len(after) == len(rows) and all(isinstance(r["load_avg"], float) for r in after)


def test_unit_positions_of_choices_and_numerics() -> None:
    head = SPACE["HEAD_DIM"]
    assert [from_unit(head, u) for u in (0.0, 0.34, 0.99, 1.0)] == [32, 64, 128, 128]
    assert unit_centre(head) == pytest.approx(0.5) and unit_centre(SPACE["OPTIMIZER"]) == pytest.approx(0.25)
    assert from_unit(SPACE["MATRIX_LR"], unit_centre(SPACE["MATRIX_LR"])) == pytest.approx(0.04)
    x = unit_features(SPACE, SPACE.defaults())
    assert x.shape == (len(SPACE),) and ((0 <= x) & (x <= 1)).all()


def test_the_batch_constraint_is_repaired_in_the_plan_and_enforced_by_the_surrogate(samples: Path, tmp_path) -> None:
    base = SPACE.defaults()
    assert config_error(base) is None
    bad = {**base, "TOTAL_BATCH_TOKENS": 7943, "DEVICE_BATCH_SIZE": 34}
    assert "not a multiple" in config_error(bad)
    fixed = SPACE.repair(bad)
    assert config_error(fixed) is None and fixed["TOTAL_BATCH_TOKENS"] == 8704  # 34 * 256 is the nearest multiple
    assert all(config_error(p["params"]) is None for p in plan(SPACE, 36, 4, 0))
    outcome = SurrogateExecutor.load(samples).run(
        trial(tmp_path, "e0003", TOTAL_BATCH_TOKENS=7943), TrainerSettings(budget_s=20.0)
    )
    assert not outcome["ok"] and outcome["returncode"] == 2 and "invalid configuration" in outcome["error"]


def trial(tmp_path: Path, name: str, **changes: Any) -> Trial:
    folder = tmp_path / name
    folder.mkdir()
    (folder / "train.py").write_text(rewrite_constants(TRAIN_PATH.read_text(), {**SPACE.defaults(), **changes}))
    return Trial(name, folder)


def test_served_results_are_labelled_seeded_and_crash_where_the_samples_crashed(samples: Path, tmp_path) -> None:
    executor = SurrogateExecutor.load(samples)
    settings = TrainerSettings(budget_s=20.0, seed=3)
    good = trial(tmp_path, "e0001", MATRIX_LR=0.08)
    outcome = executor.run(good, settings)
    result = outcome["result"]
    assert outcome["ok"] and result["surrogate"] is True and result["surrogate_label"] == f"surrogate:{samples}"
    assert outcome["evaluator_sha256"] == file_sha256(EVALUATOR_PATH) and result["split_sha256"] == SPLIT
    assert "evaluator_sha256" not in result  # the executor's hash, never one the result carries
    assert result["training_seconds"] <= 20.0 and outcome["wall_seconds"] < 1.0
    assert executor.run(good, settings)["result"]["val_bpb"] == result["val_bpb"]  # same seed: same draw
    other = executor.run(good, TrainerSettings(budget_s=20.0, seed=4))["result"]["val_bpb"]
    assert other != result["val_bpb"]
    assert abs(math.log(other / result["surrogate_mean_bpb"])) < 5 * result["surrogate_noise_log_sd"]
    crashed = executor.run(trial(tmp_path, "e0002", WEIGHT_DECAY=0.45), settings)
    assert not crashed["ok"] and "crash predicted" in crashed["error"] and crashed["surrogate"]
    with pytest.raises(ValueError, match="20 s budget"):
        executor.run(good, TrainerSettings(budget_s=60.0))


def test_fit_quality_is_held_out_and_compared_with_the_noise(samples: Path) -> None:
    quality = fit_quality(load_model(samples))
    assert quality["samples"] == 40 and quality["crashed"] > 0 and quality["cv_folds"] == 5
    assert quality["rule_agrees"] == 40 and quality["refused_by_trainer"] == 0
    assert quality["cv_r2"] > 0.5 and quality["noise_source"] == "replicates"
    replicates = [r["val_bpb"] for r in read_samples(samples) if r["design"] == "replicate"]
    assert quality["replicate_sd_bpb"] == pytest.approx(float(np.std(replicates, ddof=1)))
    assert quality["crash_cv_accuracy"] >= quality["crash_base_rate"] - 0.1
    assert len(quality["cv_predictions"]) == quality["successful"]


def test_a_run_names_its_surrogate_and_every_result_is_labelled(samples: Path, tmp_path) -> None:
    config = RunConfig(
        run_dir=str(tmp_path / "run"),
        level="1",
        iterations=4,
        segment=5,
        budget_s=20.0,
        mechanism="random_search",
        executor=f"surrogate:{samples}",
    )
    final = execute(config, llm=ScriptedChatModel(script=[]))
    assert json.loads((tmp_path / "run" / "run.json").read_text())["executor"] == f"surrogate:{samples}"
    start = next(Ledger(tmp_path / "run").events("run_start"))
    assert start["executor"] == f"surrogate:{samples}"
    outcomes = [json.loads(p.read_text()) for p in sorted((tmp_path / "run" / "experiments").glob("*/outcome.json"))]
    assert len(outcomes) == 5 and all(o["surrogate"] if not o["ok"] else o["result"]["surrogate"] for o in outcomes)
    assert final["inner"]["experiments"][0]["status"] == "keep"  # the baseline was not refused (split of the samples)


def test_runs_in_worker_processes_match_the_same_runs_one_after_another(samples: Path, tmp_path: Path) -> None:
    spec = AblationSpec(
        groups=["random", "tpe"], repeats=2, iterations=6, segment=3, executor=f"surrogate:{samples}", noise_repeats=2
    )
    serial, parallel = Ablation.open(tmp_path / "serial", spec), Ablation.open(tmp_path / "parallel", spec)
    assert serial.run(log=lambda _: None)
    assert parallel.run(workers=2, log=lambda _: None)
    assert all(e["status"] == "done" for e in parallel.manifest["runs"].values())
    for rid in serial.manifest["runs"]:
        one, two = (Ledger(a.root / "runs" / rid).events("experiment") for a in (serial, parallel))
        assert [(e["params"], e["val_bpb"]) for e in one] == [(e["params"], e["val_bpb"]) for e in two]
    local = Ablation.open(tmp_path / "local", AblationSpec(groups=["A"], repeats=1, noise_repeats=0))
    with pytest.raises(ValueError, match="surrogate"):
        local.run(workers=2, log=lambda _: None)


def test_the_surrogate_is_checked_against_the_trainings_of_a_real_ablation(samples: Path, tmp_path: Path) -> None:
    model = load_model(samples)
    spec = AblationSpec(groups=["random", "tpe"], repeats=2, iterations=6, segment=3, noise_repeats=3, confirm=1)
    # a control: the "real" trainer is the surrogate itself, so only its served noise separates prediction and value
    control = Ablation.open(tmp_path / "control", spec)
    assert control.run(executor=SurrogateExecutor.load(samples), log=lambda _: None)
    check = check_against(model, control.root)
    experiments_made = sum(
        1 for rid in control.manifest["runs"] for _ in Ledger(control.root / "runs" / rid).events("experiment")
    )
    confirmations = len(list(control.root.glob("runs/*/confirm/c*/outcome.json")))
    assert check["trainings"] == experiments_made + 3 + confirmations
    cells = check["crash_agreement"]
    assert sum(cells.values()) + check["refused_by_rule"] == check["trainings"]
    assert cells["predicted_crash_only"] == cells["real_crash_only"] == 0  # the same crash rule on both sides
    assert len(check["pairs"]) == cells["both_ok"] > 3
    assert check["median_abs_error_bpb"] < 2 * check["served_noise_sd_bpb"]
    # the synthetic trainer the samples came from: the same landscape, measured afresh
    real = Ablation.open(tmp_path / "real", spec)
    assert real.run(executor=NoisyTrainer(), log=lambda _: None)
    check = check_against(model, real.root)
    assert check["crash_agreement"]["both_ok"] > 0 and not math.isnan(check["mae_bpb"])
    assert cli.main_fit(["--csv", str(samples), "--against", str(real.root)]) == 0
    written = json.loads((real.root / "report" / "surrogate_check.json").read_text())
    assert written["pairs"] == check["pairs"] and (real.root / "report" / "surrogate_check.png").stat().st_size > 10_000
    with pytest.raises(ValueError, match="served by a surrogate"):
        surrogate_spec = AblationSpec(groups=["random"], repeats=1, executor=f"surrogate:{samples}")
        check_against(model, Ablation.open(tmp_path / "served", surrogate_spec).root)
    with pytest.raises(ValueError, match="trained at 60"):
        check_against(
            model, Ablation.open(tmp_path / "longer", AblationSpec(groups=["random"], repeats=1, budget_s=60)).root
        )
