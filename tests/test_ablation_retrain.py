"""`--retrain-above SHARE`: a training during which everything else used more than SHARE of the CPU is set aside and
trained again — a fixed wall-clock budget measured under contention measures the machine, not the configuration."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from ablation import cli
from trials.launcher import LocalExecutor, TrainerSettings, Trial


class SharesExecutor:
    """Writes a log and a result like a training does; reports the next of ``shares`` as the others' CPU share."""

    def __init__(self, shares: list[float | None]) -> None:
        self.shares = list(shares)
        self.calls = 0

    def run(self, trial: Trial, settings: TrainerSettings) -> dict[str, Any]:
        self.calls += 1
        bpb = 2.0 + self.calls / 10
        (trial.folder / "log.txt").write_text(f"attempt {self.calls}\n")
        (trial.folder / "result.json").write_text(json.dumps({"val_bpb": bpb}))
        share = self.shares.pop(0)
        outcome: dict[str, Any] = {"ok": True, "wall_seconds": 1.0, "result": {"val_bpb": bpb, "num_steps": 3}}
        return outcome if share is None else {**outcome, "other_cpu_share": share}


def trial(tmp_path: Path) -> Trial:
    folder = tmp_path / "e0001"
    folder.mkdir(parents=True)
    return Trial("e0001", folder)


def test_a_contended_training_is_set_aside_and_trained_again(tmp_path) -> None:
    inner = SharesExecutor([0.40, 0.20, 0.01])
    t = trial(tmp_path)
    outcome = cli.PausingExecutor(inner, None, retrain_above=0.05).run(t, TrainerSettings(budget_s=1.0))
    assert inner.calls == 3
    # the outcome is the quiet attempt's; the two contended ones are listed, their files kept aside
    assert outcome["result"]["val_bpb"] == 2.3 and outcome["other_cpu_share"] == 0.01
    assert [c["other_cpu_share"] for c in outcome["contended"]] == [0.40, 0.20]
    assert [c["val_bpb"] for c in outcome["contended"]] == [2.1, 2.2]
    assert (t.folder / "log.txt").read_text() == "attempt 3\n"
    for k in (0, 1):
        aside = t.folder / "contended" / f"a{k}"
        assert (aside / "log.txt").read_text() == f"attempt {k + 1}\n"
        assert json.loads((aside / "result.json").read_text())["val_bpb"] == 2.1 + k / 10
        assert json.loads((aside / "outcome.json").read_text())["other_cpu_share"] == [0.40, 0.20][k]


def test_retraining_stops_after_its_cap_and_keeps_the_last_attempt(tmp_path) -> None:
    inner = SharesExecutor([0.5, 0.5, 0.5])
    outcome = cli.PausingExecutor(inner, None, retrain_above=0.05, max_retrains=2).run(
        trial(tmp_path), TrainerSettings(budget_s=1.0)
    )
    assert inner.calls == 3 and len(outcome["contended"]) == 2 and outcome["other_cpu_share"] == 0.5


def test_without_the_flag_or_a_measure_nothing_is_trained_again(tmp_path) -> None:
    for k, (retrain_above, share) in enumerate(((None, 0.9), (0.05, None))):  # no flag; nothing measured (not Linux)
        inner = SharesExecutor([share])
        outcome = cli.PausingExecutor(inner, None, retrain_above=retrain_above).run(
            trial(tmp_path / str(k)), TrainerSettings(budget_s=1.0)
        )
        assert inner.calls == 1 and "contended" not in outcome


FAKE_TRAINER = """import argparse, json, time
ap = argparse.ArgumentParser()
ap.add_argument("--result-json")
args, _ = ap.parse_known_args()
time.sleep(1.5)
json.dump({"val_bpb": 2.5, "num_steps": 1}, open(args.result_json, "w"))
"""


def test_the_real_measure_sees_a_busy_machine_and_the_training_runs_again(tmp_path) -> None:
    """The local executor's own measure of the others' CPU share, with two busy processes beside the first attempt:
    that attempt is set aside. The busy processes end with it (they spin for the first attempt's length only)."""
    t = trial(tmp_path)
    (t.folder / "train.py").write_text(FAKE_TRAINER)
    spin = "import time, sys\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end: pass\n"
    busy = [subprocess.Popen([sys.executable, "-c", spin, "1.8"]) for _ in range(2)]
    try:
        outcome = cli.PausingExecutor(LocalExecutor(), None, retrain_above=0.3, max_retrains=3).run(
            t, TrainerSettings(budget_s=1.0, kill_after_s=30)
        )
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert outcome["ok"] and outcome["result"]["val_bpb"] == 2.5
    first = outcome["contended"][0]
    assert first["other_cpu_share"] > 0.3 and first["ok"]  # two spinning processes took most of the machine
    assert (t.folder / "contended" / "a0" / "result.json").exists()
    # the last attempt is the one kept: quiet enough, or the cap reached on a machine that stayed busy
    assert outcome["other_cpu_share"] <= 0.3 or len(outcome["contended"]) == 3


def test_an_ablation_records_and_reports_what_it_trained_again(tmp_path) -> None:
    from ablation.collect import experiments
    from ablation.harness import Ablation, AblationSpec
    from ablation.report import write_ablation_report
    from checkpoints.run_folder import Ledger
    from tests.support import SyntheticExecutor
    from tests.test_ablation_harness import quiet, scripted

    class ContendedOnce(SyntheticExecutor):
        """Everything else took half the CPU during the first attempt at A-r00's e0001 and at noise n01."""

        def run(self, trial: Trial, settings: TrainerSettings) -> dict[str, Any]:
            outcome = super().run(trial, settings)
            first = self.runs.count(trial.experiment_id) == 1
            hit = trial.folder.parts[-3:] == ("A-r00", "experiments", "e0001") or trial.experiment_id == "noise-01"
            return {**outcome, "other_cpu_share": 0.5 if hit and first else 0.01}

    spec = AblationSpec(groups=["A"], repeats=1, iterations=2, segment=2, budget_s=1.0, noise_repeats=2)
    ablation = Ablation.open(tmp_path / "abl", spec)
    inner = ContendedOnce()
    assert ablation.run(llm_for=scripted(), executor=cli.PausingExecutor(inner, None, retrain_above=0.05), log=quiet)
    assert inner.runs.count("noise-01") == 2 and len(inner.runs) == 2 + 3 + 2
    record = next(e for e in experiments(Ledger(ablation.root / "runs" / "A-r00")) if e["id"] == "e0001")
    assert [c["other_cpu_share"] for c in record["contended"]] == [0.5] and record["other_cpu_share"] == 0.01
    report = write_ablation_report(ablation.root).read_text()
    assert "2 trainings were trained again after 2 attempts set aside as contended" in report
