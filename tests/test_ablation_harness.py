"""The ablation harness: a smoke ablation of every group, the same code path for every level, the paired seeds,
resume after kill -9 without re-running a finished repeat, and the report regenerated from the ledger alone.

Also a runner for the kill test: ``python tests/test_ablation_harness.py ROOT DELAY_S``.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from support import SyntheticExecutor, change  # noqa: E402

from ablation import cli  # noqa: E402
from ablation.collect import experiments, mechanism_use, time_use  # noqa: E402
from ablation.figures import PAIRED_BASELINES  # noqa: E402
from ablation.harness import GROUP_NAMES, Ablation, AblationSpec, embedded_model, with_seed  # noqa: E402
from ablation.pack import pack  # noqa: E402
from ablation.report import write_ablation_report  # noqa: E402
from checkpoints.run_folder import Ledger  # noqa: E402
from llm.client import EMBEDDED_MAX_TOKENS  # noqa: E402
from llm.scripted import ScriptedChatModel  # noqa: E402
from nodes.prompts import ADJUST_SYSTEM, ANALYZE_SYSTEM, COMPOSE_SYSTEM, GENERATE_SYSTEM  # noqa: E402
from trials.launcher import (  # noqa: E402
    TRAIN_PATH,  # noqa: E402
    TrainerSettings,
    Trial,
)

REPO = Path(__file__).resolve().parent.parent
PROPOSALS = [change("MATRIX_LR", v) for v in (0.05, 0.06, 0.07, 0.09, 0.1, 0.12, 0.15, 0.02)]
VALID_ADJUST = {"strategy": "exploit", "freeze": [], "unfreeze": [], "guidance": "small steps"}
INVALID_ADJUST = {"strategy": "no such strategy"}
DIAGNOSIS = {"finding": "uneven", "ideas": ["tabu search"]}
COMPOSITION = {"family": "tabu", "params": [{"name": "radius", "value": "0.1"}], "rationale": "r"}
REFUSED_CODE = {
    "name": "bad",
    "rationale": "r",
    "source": "NAME = 'bad'\nTARGET = 'propose'\nimport os\ndef propose(view):\n    return {}\n",
}


def scripted(adjust: dict[str, Any] = VALID_ADJUST, generate: dict[str, Any] = REFUSED_CODE):
    """A chat model per run that answers by the node that asks (read from the system prompt)."""

    def llm_for(_config: Any) -> ScriptedChatModel:
        proposals = itertools.cycle(PROPOSALS)

        def answer(messages: list) -> Any:
            system = messages[0].content
            return {
                ADJUST_SYSTEM: adjust,
                ANALYZE_SYSTEM: DIAGNOSIS,
                COMPOSE_SYSTEM: COMPOSITION,
                GENERATE_SYSTEM: generate,
            }.get(system) or next(proposals)

        return ScriptedChatModel(script=[answer], cycle=True)

    return llm_for


def quiet(_line: str) -> None:
    return None


def trajectory(run_dir: Path) -> list[tuple[Any, ...]]:
    return [
        (e["id"], json.dumps(e["params"], sort_keys=True), e["val_bpb"], e["status"], e["changes"])
        for e in experiments(Ledger(run_dir))
    ]


def test_smoke_ablation_of_every_group_with_report(tmp_path) -> None:
    spec = AblationSpec(
        groups=list(GROUP_NAMES),
        repeats=2,
        iterations=4,
        segment=2,
        budget_s=1.0,
        noise_repeats=3,
        confirm=1,
        generate_mode="compose",
    )
    start = time.monotonic()
    ablation = Ablation.open(tmp_path / "abl", spec)
    assert ablation.run(llm_for=scripted(), executor=SyntheticExecutor(), log=quiet)
    report = write_ablation_report(ablation.root)
    elapsed = time.monotonic() - start
    runs = ablation.manifest["runs"]
    assert sorted(runs) == sorted(f"{g}-r{r:02d}" for g in GROUP_NAMES for r in range(2))
    assert all(e["status"] == "done" and e["seed"] == e["repeat"] for e in runs.values())  # paired seeds
    for rid in runs:
        summary = json.loads((ablation.root / "runs" / rid / "summary.json").read_text())
        assert summary["experiments"] == 5 and summary["baseline_bpb"] is not None
        assert (ablation.root / "runs" / rid / "confirm" / "c00" / "outcome.json").exists()
    figures = json.loads((report.parent / "figures.json").read_text())["analysis"]
    assert sorted(figures["groups"]) == sorted(GROUP_NAMES) and figures["noise"]["n"] == 3
    assert all("vs_A" in figures["groups"][g] for g in GROUP_NAMES if g != "A")
    assert all(figures["groups"][g]["vs_A_confirmed"]["n"] == 2 for g in GROUP_NAMES if g != "A")
    assert figures["groups"]["C"]["mechanisms"]["tabu"]["calls"] > 0  # the composed mechanism ran
    assert figures["groups"]["B"]["llm"]["L1.5"]["calls"] > 0 and figures["groups"]["A"]["llm"]["L1.5"]["calls"] == 0
    assert figures["groups"]["tpe"]["llm"]["L1"]["calls"] == 0
    tpe_sources, a_sources = figures["groups"]["tpe"]["sources"], figures["groups"]["A"]["sources"]
    assert list(tpe_sources) == ["mechanism"] and tpe_sources["mechanism"]["per_run"] == 4.0
    assert set(a_sources) <= {"llm", "fallback"} and sum(s["per_run"] for s in a_sources.values()) == 4.0
    assert sum(s["kept"] for s in a_sources.values()) == figures["groups"]["A"]["kept_improvements"]
    assert tpe_sources["mechanism"]["total"] == 8  # 4 proposals in each of 2 runs
    for source in a_sources.values():
        assert source["kept_rate"] == pytest.approx(source["kept"] / source["total"])
    if {"llm", "fallback"} <= set(a_sources):
        assert 0.0 <= a_sources["llm"]["vs_fallback_p"] <= 1.0
    for png in ("running_best", "progress", "deltas", "mechanisms"):
        assert (report.parent / f"{png}.png").stat().st_size > 10_000
    text = report.read_text()
    assert "| random | 2 |" in text and "Noise floor" in text and "Where the proposals came from" in text
    assert "Confirmed Δ, paired against A" in text
    pairs = {(r["group"], r["baseline"]) for r in figures["vs_baselines"]}
    baselines = [b for b in PAIRED_BASELINES if b in GROUP_NAMES]
    assert pairs == {(g, b) for b in baselines for g in GROUP_NAMES if g not in PAIRED_BASELINES}
    assert all(r["n"] == 2 and r["holm_p"] >= r["permutation_p"] for r in figures["vs_baselines"])
    assert "Against the model-free baselines" in text
    assert elapsed < 120, elapsed


def test_every_level_goes_through_the_same_code_path(tmp_path) -> None:
    """B whose Level-1.5 answers are all invalid, and C and D whose outer loop yields no valid mechanism, make
    exactly the experiments A makes with the same seed: only the level differs, nothing else."""
    spec = AblationSpec(
        groups=["A", "B", "C", "D"],
        repeats=1,
        iterations=6,
        segment=2,
        budget_s=1.0,
        noise_repeats=0,
        generate_mode="generate",
    )
    ablation = Ablation.open(tmp_path / "abl", spec)
    ablation.run(llm_for=scripted(adjust=INVALID_ADJUST), executor=SyntheticExecutor(), log=quiet)
    runs = {g: ablation.root / "runs" / f"{g}-r00" for g in spec.groups}
    reference = trajectory(runs["A"])
    assert len(reference) == 7 and any(status == "keep" for *_, status, _ in reference[1:])
    for group in ("B", "C", "D"):
        assert trajectory(runs[group]) == reference, group
    adjust = list(Ledger(runs["B"]).events("adjust"))
    assert adjust and not any(e["applied"] for e in adjust)  # Level 1.5 acted, and changed nothing
    refused = [e for e in Ledger(runs["C"]).events("validate") if not e["ok"]]
    assert refused and not [e for e in Ledger(runs["C"]).events("inject") if e.get("injected")]


def start_runner(root: Path, delay_s: float) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(
        [sys.executable, __file__, str(root), str(delay_s)],
        env=env,
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def statuses(root: Path) -> dict[str, str]:
    path = root / "ablation.json"
    if not path.exists():
        return {}
    return {rid: e["status"] for rid, e in json.loads(path.read_text())["runs"].items()}


def test_kill_9_mid_ablation_then_resume_never_reruns_a_finished_repeat(tmp_path) -> None:
    root = tmp_path / "abl"
    proc = start_runner(root, 0.1)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        s = statuses(root)
        if list(s.values()).count("done") >= 2 and "running" in s.values():
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = statuses(root)
    finished = [rid for rid, status in before.items() if status == "done"]
    interrupted = [rid for rid, status in before.items() if status == "running"]
    assert len(finished) >= 2 and len(interrupted) <= 1, before  # (0 only if killed between two manifest writes)
    traces = {rid: (root / "runs" / rid / "trace.jsonl").read_bytes() for rid in finished}
    noise = {p: p.read_bytes() for p in (root / "noise").glob("*/outcome.json")}
    resumed = start_runner(root, 0.0)
    _, err = resumed.communicate(timeout=180)
    assert resumed.returncode == 0, err.decode()[-3000:]
    after = statuses(root)
    assert len(after) == 6 and set(after.values()) == {"done"}
    for rid in finished:  # not run again: not one event added to a finished run's ledger
        assert (root / "runs" / rid / "trace.jsonl").read_bytes() == traces[rid], rid
    assert {p: p.read_bytes() for p in (root / "noise").glob("*/outcome.json")} == noise
    for rid in interrupted:  # every experiment of the interrupted run exactly once
        assert sorted(e["id"] for e in Ledger(root / "runs" / rid).events("experiment")) == [
            f"e{i:04d}" for i in range(5)
        ]


def test_a_finished_ablation_grows_by_repeats_and_never_shrinks(tmp_path) -> None:
    spec = AblationSpec(groups=["A", "tpe"], repeats=1, iterations=3, segment=2, budget_s=1.0, noise_repeats=2)
    ablation = Ablation.open(tmp_path / "abl", spec)
    assert ablation.run(llm_for=scripted(), executor=SyntheticExecutor(), log=quiet)
    first = {rid: (ablation.root / "runs" / rid / "trace.jsonl").read_bytes() for rid in ("A-r00", "tpe-r00")}
    grown = Ablation.open(tmp_path / "abl")
    grown.extend(3)
    with pytest.raises(ValueError, match="only grows"):
        grown.extend(2)
    reopened = Ablation.open(tmp_path / "abl")  # the new plan is the recorded one
    assert reopened.spec.repeats == 3 and reopened.manifest["extended"][0]["from"] == 1
    assert reopened.run(llm_for=scripted(), executor=SyntheticExecutor(), log=quiet)
    runs = reopened.manifest["runs"]
    assert sorted(runs) == ["A-r00", "A-r01", "A-r02", "tpe-r00", "tpe-r01", "tpe-r02"]
    assert [runs[f"A-r{r:02d}"]["seed"] for r in range(3)] == [0, 1, 2]
    for rid, trace in first.items():  # the first repeat was not run again
        assert (ablation.root / "runs" / rid / "trace.jsonl").read_bytes() == trace
    text = write_ablation_report(reopened.root).read_text()
    assert "3 repeats planned, 6/6 runs finished" in text and "grown from 1 to 3 repeats" in text


def test_the_noise_floor_grows_without_retraining_what_it_has(tmp_path) -> None:
    spec = AblationSpec(groups=["tpe"], repeats=1, iterations=2, segment=2, budget_s=1.0, noise_repeats=2)
    ablation = Ablation.open(tmp_path / "abl", spec)
    assert ablation.run(llm_for=scripted(), executor=SyntheticExecutor(), log=quiet)
    noise = ablation.root / "noise"
    before = {p.parent.name: p.read_bytes() for p in noise.glob("n*/outcome.json")}
    grown = Ablation.open(ablation.root)
    with pytest.raises(ValueError, match="only grows"):
        grown.extend(noise_repeats=1)
    grown.extend(noise_repeats=4)
    assert Ablation.open(ablation.root).spec.noise_repeats == 4
    assert grown.run(llm_for=scripted(), executor=SyntheticExecutor(), log=quiet)
    after = {p.parent.name: p.read_bytes() for p in noise.glob("n*/outcome.json")}
    assert sorted(after) == ["n00", "n01", "n02", "n03"]
    assert all(after[k] == v for k, v in before.items())  # the first two were not trained again
    seeds = [json.loads(after[k])["seed"] for k in sorted(after)]
    assert seeds == sorted(set(seeds))  # four different seeds, in order
    text = write_ablation_report(grown.root).read_text()
    assert "grown the noise floor from 2 to 4 trainings" in text


def test_a_run_stopped_and_resumed_is_timed_without_its_downtime(tmp_path) -> None:
    events = [("run_start", 100.0), ("train_end", 130.0), ("experiment", 160.0), ("run_start", 5000.0)]
    events += [("train_end", 5030.0), ("run_end", 5040.0)]
    lines = [{"event_id": str(i), "kind": kind, "time": t, "wall_seconds": 25.0} for i, (kind, t) in enumerate(events)]
    (tmp_path / "trace.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    assert time_use(Ledger(tmp_path)) == {"wall_s": 60.0 + 40.0, "training_s": 50.0}


def test_the_first_segment_is_credited_from_the_baseline(tmp_path) -> None:
    # the graph records 0 progress for the segment that holds the baseline (no best before it); the report
    # measures it from the baseline, so the mechanism that starts every run is not shown as having done nothing
    first = {"mechanism": "llm_greedy@1", "best_before": None, "best_after": 2.0, "progress": 0.0}
    second = {"mechanism": "tabu@2", "best_before": 2.0, "best_after": 1.9, "progress": 0.1}
    third = {"mechanism": "tabu@2", "best_before": 1.9, "best_after": 1.9, "progress": 0.0}
    summary = {"baseline_bpb": 2.5, "segments": [first, second, third], "history": []}
    use = mechanism_use(Ledger(tmp_path), summary)
    assert use["llm_greedy@1"]["progress"] == [pytest.approx(0.5)]
    assert use["tabu@2"]["progress"] == [pytest.approx(0.1), 0.0]
    assert mechanism_use(Ledger(tmp_path), {**summary, "baseline_bpb": None})["llm_greedy@1"]["progress"] == [0.0]


class LoadRecordingExecutor(SyntheticExecutor):
    """Records the machine's other CPU use as the local executor does: 40 % during one noise training and one
    experiment of A-r01, 2 % during every other training."""

    def run(self, trial: Trial, settings: TrainerSettings) -> dict[str, Any]:
        loaded = trial.experiment_id == "noise-00" or trial.folder.parts[-3:] == ("A-r01", "experiments", "e0002")
        return {**super().run(trial, settings), "other_cpu_share": 0.4 if loaded else 0.02}


def test_the_report_regenerates_from_the_ledger_alone(tmp_path) -> None:
    spec = AblationSpec(groups=["A", "tpe"], repeats=2, iterations=3, segment=2, budget_s=1.0, noise_repeats=2)
    ablation = Ablation.open(tmp_path / "abl", spec)
    ablation.run(llm_for=scripted(), executor=LoadRecordingExecutor(), log=quiet)
    first = write_ablation_report(ablation.root).read_text()
    # every training recorded the machine's load: 2 noise + 4 runs x (baseline + 3 experiments); no confirmations
    assert "Machine load: 18 of 18 trainings" in first and "2 above 15%" in first
    assert "- noise/n00: 40.0%" in first and "- A-r01/e0002: 40.0%" in first
    for path in (ablation.root / "report").iterdir():
        path.unlink()
    done = subprocess.run(
        [sys.executable, "-m", "graphs.bilevel", "ablation", "report", str(ablation.root)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert (ablation.root / "report" / "report.md").read_text() == first
    assert (ablation.root / "report" / "running_best.png").exists()
    # the packed evidence alone (no checkpoints, no experiment folders) gives the same report
    files = pack(ablation.root, tmp_path / "abl.tar.gz")
    assert not any("checkpoints" in str(f) or "experiments" in str(f) for f in files)
    with tarfile.open(tmp_path / "abl.tar.gz") as tar:
        tar.extractall(tmp_path / "unpacked", filter="data")
    assert write_ablation_report(tmp_path / "unpacked" / "abl").read_text() == first


def test_trainings_wait_while_another_benchmark_runs(tmp_path, monkeypatch) -> None:
    """`--pause-while PATTERN`: before each training the executor waits until no other process matches."""
    busy = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3)  # fake-gpt-bench-marker"])
    try:
        assert cli.matching("fake-gpt-bench-marker") == [busy.pid]
        assert cli.matching(f"{os.getpid()}-never-running") == []  # this process's own command line never counts
        waited: list[str] = []
        with monkeypatch.context() as patch:
            patch.setattr(cli, "wait_while", waited.append)
            executor = cli.PausingExecutor(SyntheticExecutor(), "fake-gpt-bench-marker")
            folder = tmp_path / "e0000"
            folder.mkdir()
            (folder / "train.py").write_text(TRAIN_PATH.read_text())
            outcome = executor.run(Trial("e0000", folder), TrainerSettings(budget_s=1.0))
        assert outcome["ok"] and waited == ["fake-gpt-bench-marker"]
    finally:
        busy.kill()
        busy.wait()
    start = time.monotonic()
    cli.wait_while("fake-gpt-bench-marker", poll_s=0.1)  # the process is gone: no wait
    assert time.monotonic() - start < 1.0


@pytest.mark.slow
def test_the_embedded_model_on_a_one_thread_server(tmp_path) -> None:
    with embedded_model(1, tmp_path) as (llm, description):
        assert description.endswith("n_threads 1") and "smollm2" in description
        server = llm.callbacks[0].server  # type: ignore[index, union-attr]
        assert server.n_threads == 1 and "--n_threads" in server.command()
        seeded = with_seed(llm, 7)
        assert seeded.seed == 7 and seeded.extra_body == {"max_tokens": EMBEDDED_MAX_TOKENS}
        reply = seeded.invoke("Say hello.")
    assert reply.content and reply.usage_metadata and reply.usage_metadata["output_tokens"] > 0


def main() -> None:
    root, delay = Path(sys.argv[1]), float(sys.argv[2])
    spec = AblationSpec(groups=["A", "random"], repeats=3, iterations=4, segment=2, budget_s=1.0, noise_repeats=2)
    ablation = Ablation.open(root, None if (root / "ablation.json").exists() else spec)
    ablation.run(llm_for=scripted(), executor=SyntheticExecutor(delay), log=quiet)


if __name__ == "__main__":
    main()
