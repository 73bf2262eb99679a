"""imp@k: every mechanism an ablation kept, frozen, run k steps from the baseline on held-out seeds on the surrogate,
against llm_greedy and local_search at the same seeds; resumable, and the report written to the ablation's report/."""

from __future__ import annotations

import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from support import change
from test_ablation_surrogate import NoisyTrainer

from ablation import cli
from ablation.harness import Ablation, AblationSpec
from ablation.imp import HELD_OUT_SEED, PROJECT_ROOT, ImpSettings, kept_mechanisms, measure, surrogate_shown
from ablation.sampling import collect_samples
from checkpoints.run_folder import Ledger
from llm.scripted import ScriptedChatModel
from nodes.prompts import ADJUST_SYSTEM, ANALYZE_SYSTEM, COMPOSE_SYSTEM, GENERATE_SYSTEM
from trials.surrogate import SurrogateExecutor

# the model's first proposals make things worse, its later ones better: the mechanism composed after the first
# segment makes more progress than the segment before it, and is kept
PROPOSALS = [change("MATRIX_LR", v) for v in (0.01, 0.012, 0.08, 0.07, 0.09, 0.075, 0.085, 0.065)]
ADJUST = {"strategy": "exploit", "freeze": [], "unfreeze": [], "guidance": "small steps"}
DIAGNOSIS = {"finding": "uneven", "ideas": ["tabu search"]}
COMPOSITION = {"family": "tabu", "params": [{"name": "radius", "value": "0.05"}], "rationale": "r"}


def scripted(_config: Any) -> ScriptedChatModel:
    proposals = itertools.cycle(PROPOSALS)

    def answer(messages: list) -> Any:
        system = messages[0].content
        return {ADJUST_SYSTEM: ADJUST, ANALYZE_SYSTEM: DIAGNOSIS, COMPOSE_SYSTEM: COMPOSITION}.get(system) or (
            {"name": "x", "rationale": "r", "source": ""} if system == GENERATE_SYSTEM else next(proposals)
        )

    return ScriptedChatModel(script=[answer], cycle=True)


@pytest.fixture(scope="module")
def ablation_root(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("imp")
    collect_samples(root / "samples.csv", root / "work", 36, 4, 20.0, executor=NoisyTrainer(), log=lambda _: None)
    executor = f"surrogate:{root / 'samples.csv'}"
    spec = AblationSpec(
        groups=["C"], repeats=1, iterations=6, segment=2, executor=executor, noise_repeats=0, generate_mode="compose"
    )
    ablation = Ablation.open(root / "abl", spec)
    trainer = SurrogateExecutor.load(root / "samples.csv")
    assert ablation.run(llm_for=scripted, executor=trainer, log=lambda _: None)
    return ablation.root, executor


def test_kept_mechanisms_are_read_from_the_runs(ablation_root: tuple[Path, str]) -> None:
    root, _ = ablation_root
    kept = kept_mechanisms(root)
    compares = list(Ledger(root / "runs" / "C-r00").events("compare"))
    assert [c.mechanism_id for c in kept] == [e["mechanism"] for e in compares if e["event"] == "kept"]
    assert kept and kept[0].origin == "composed" and kept[0].kept_in == ["C-r00"]
    assert json.loads(Path(kept[0].start).read_text())["params"]["radius"] == 0.05


def test_imp_runs_each_kept_mechanism_frozen_against_the_references(ablation_root: tuple[Path, str]) -> None:
    root, executor = ablation_root
    settings = ImpSettings(k=3, seeds=3, executor=executor, extra=["cma_es"])
    figures = measure(root, settings, llm_for=scripted, log=lambda _: None)
    rows = figures["mechanisms"]
    names = [r["mechanism_id"].split("@")[0] for r in rows.values()]
    assert names[:3] == ["llm_greedy", "local_search", "cma_es"] and "tabu" in names[3:]
    assert figures["seeds"] == [HELD_OUT_SEED, HELD_OUT_SEED + 1, HELD_OUT_SEED + 2]
    starts = {}
    for key, row in rows.items():
        assert row["summary"]["n"] == 3 and all(v is not None and v <= 0 for v in row["imp"])  # best <= start
        for seed in figures["seeds"]:
            run = root / "imp" / key / f"s{seed}"
            summary = json.loads((run / "summary.json").read_text())
            assert summary["experiments"] == 4 and summary["surrogate"]
            starts.setdefault(seed, set()).add(summary["baseline_bpb"])
            assert not list(Ledger(run).events("compare"))  # frozen: the outer loop never ran
    assert all(len(s) == 1 for s in starts.values())  # the same start for every mechanism at a seed
    tabu = next(r for r in rows.values() if r["mechanism_id"].startswith("tabu"))
    assert tabu["vs_llm_greedy"]["n"] == 3 and "holm_p" in tabu["vs_local_search"]
    assert "vs_llm_greedy" not in rows[next(iter(rows))]  # the reference itself
    # the figures name where things are relative to the ablation folder, and the surrogate by its content
    assert tabu["start"].startswith("runs/C-r00/mechanisms/") and rows[next(iter(rows))]["start"] == "llm_greedy"
    samples = Path(executor.split(":", 1)[1])
    assert figures["surrogate_sha256"] == hashlib.sha256(samples.read_bytes()).hexdigest()[:16]
    assert surrogate_shown(f"surrogate:{PROJECT_ROOT / 'ablation/data/x.csv'}") == "surrogate:ablation/data/x.csv"
    text = (root / "report" / "imp.md").read_text()
    assert "imp@3" in text and "| reference |" in text and "SURROGATE" in text
    assert json.loads((root / "report" / "imp.json").read_text()) == figures
    # a second call resumes: nothing is run again
    before = {p: p.stat().st_mtime_ns for p in (root / "imp").glob("*/s*/summary.json")}
    assert cli.main_imp([str(root), "--k", "3", "--seeds", "3", "--executor", executor, "--extra", "cma_es"]) == 0
    assert {p: p.stat().st_mtime_ns for p in (root / "imp").glob("*/s*/summary.json")} == before


def test_the_frozen_runs_travel_in_the_pack_and_are_not_run_again(ablation_root: tuple[Path, str], tmp_path) -> None:
    from ablation.pack import pack, unpack

    root, executor = ablation_root
    settings = ImpSettings(k=2, seeds=2, executor=executor)
    figures = measure(root, settings, llm_for=scripted, log=lambda _: None)
    files = [str(f) for f in pack(root, tmp_path / "abl.tar.gz")]
    assert "report/imp.json" in files and any(f.startswith("imp/") and f.endswith("/summary.json") for f in files)
    # surrogate runs: kept whatever machine unpacks them
    unpack(tmp_path / "abl.tar.gz", tmp_path / "moved", boot="another-boot")

    def no_model(_config: Any) -> ScriptedChatModel:
        raise AssertionError("a finished frozen run was run again")

    moved = measure(tmp_path / "moved", settings, llm_for=no_model, log=lambda _: None)
    imps = [{key: row["imp"] for key, row in f["mechanisms"].items()} for f in (moved, figures)]
    assert imps[0] == imps[1]
    # an unfinished frozen run (no summary) is not packed: it runs again from its start
    unfinished = next((root / "imp").glob("*/s*/summary.json"))
    unfinished.rename(unfinished.with_suffix(".json.away"))
    try:
        assert str(unfinished.parent.relative_to(root) / "run.json") not in [str(f) for f in pack(root, tmp_path / "b")]
    finally:
        unfinished.with_suffix(".json.away").rename(unfinished)


def test_a_recorded_mechanism_starts_a_run_by_its_record(tmp_path: Path) -> None:
    from graphs.run_config import RunConfig
    from graphs.runner import start_mechanism
    from nodes.mechanism_loader import builtin_record

    composed = builtin_record("tabu", {"radius": 0.2})
    (tmp_path / "record.json").write_text(json.dumps({**composed, "status": "injected", "cycle": 1}))
    config = RunConfig(run_dir=str(tmp_path / "run"), mechanism=str(tmp_path / "record.json"))
    assert start_mechanism(config) == composed  # the same id: the same source and parameters
    (tmp_path / "generated.json").write_text(json.dumps({**composed, "origin": "generated"}))
    with pytest.raises(ValueError, match="source.py"):
        start_mechanism(RunConfig(run_dir=str(tmp_path / "run"), mechanism=str(tmp_path / "generated.json")))
