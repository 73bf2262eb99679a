"""`ablation pack` / `ablation unpack`: an unfinished ablation carried to a new folder by its pack alone, resumed
there to the same results, nothing finished re-run; a file that is not a pack is refused with a clear error."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

from ablation.harness import Ablation, AblationSpec, sitting
from ablation.pack import PackError, pack, unpack
from ablation.report import write_ablation_report
from tests.support import SyntheticExecutor
from tests.test_ablation_harness import quiet, scripted, trajectory
from trials.launcher import TrainerSettings, Trial

SPEC = AblationSpec(
    groups=["A", "C"],
    repeats=2,
    iterations=4,
    segment=2,
    budget_s=1.0,
    noise_repeats=2,
    confirm=1,
    generate_mode="compose",
)


class StopsAt(SyntheticExecutor):
    """The synthetic trainer, interrupted (as by Ctrl-C or the end of a session) at one experiment of one run."""

    def __init__(self, run: str, experiment: str) -> None:
        super().__init__()
        self.at = (run, "experiments", experiment)

    def run(self, trial: Trial, settings: TrainerSettings) -> dict[str, Any]:
        if trial.folder.parts[-3:] == self.at:
            raise KeyboardInterrupt
        return super().run(trial, settings)


def reference_and_interrupted(tmp_path: Path) -> tuple[Ablation, Ablation]:
    """The whole ablation, and the same one interrupted in C-r01 (A-r01 finished, repeat 1 unfinished)."""
    reference = Ablation.open(tmp_path / "reference", SPEC)
    assert reference.run(llm_for=scripted(), executor=SyntheticExecutor(), log=quiet)
    first = Ablation.open(tmp_path / "first", SPEC)
    with pytest.raises(KeyboardInterrupt):
        first.run(llm_for=scripted(), executor=StopsAt("C-r01", "e0002"), log=quiet)
    assert first.status("C-r01") == "running" and first.status("A-r01") == "done"
    return reference, first


def test_an_unfinished_ablation_travels_in_its_pack_and_resumes_to_the_same_results(tmp_path) -> None:
    reference, first = reference_and_interrupted(tmp_path)
    files = [str(f) for f in pack(first.root, tmp_path / "first.tar.gz")]
    assert not any("checkpoints" in f or "experiments" in f for f in files)
    assert any(f.startswith("runs/C-r00/mechanisms/") and f.endswith("record.json") for f in files)

    runs = unpack(tmp_path / "first.tar.gz", tmp_path / "moved" / "abl", boot="another-boot")
    # repeat 1 is unfinished (C-r01 was running): both its runs train again, together, on the new machine
    assert runs == {"kept": ["A-r00", "C-r00"], "reset": ["A-r01", "C-r01"]}
    moved = Ablation.open(tmp_path / "moved" / "abl")
    assert moved.status("A-r01") == moved.status("C-r01") == "pending"
    assert not (moved.root / "runs" / "A-r01").exists() and not (moved.root / "runs" / "C-r01").exists()
    kept_traces = {rid: (moved.root / "runs" / rid / "trace.jsonl").read_bytes() for rid in runs["kept"]}

    trainer = SyntheticExecutor()
    assert moved.run(llm_for=scripted(), executor=trainer, log=quiet)
    # only the reset runs trained (each its baseline, four experiments, one confirmation); the finished untouched
    assert len(trainer.runs) == 12
    assert {rid: (moved.root / "runs" / rid / "trace.jsonl").read_bytes() for rid in runs["kept"]} == kept_traces
    for rid in ("A-r00", "A-r01", "C-r00", "C-r01"):
        assert trajectory(moved.root / "runs" / rid) == trajectory(reference.root / "runs" / rid)
    report = write_ablation_report(moved.root).read_text()
    assert "4/4 runs finished" in report and "trained in 1 sitting (a machine, from one boot)" in report
    assert "span two sittings" not in report


def test_unpacked_in_the_same_sitting_a_finished_run_of_an_unfinished_repeat_is_kept(tmp_path) -> None:
    reference, first = reference_and_interrupted(tmp_path)
    pack(first.root, tmp_path / "first.tar.gz")

    # the folder is lost (a workspace reset) but the machine has not rebooted: A-r01 trained in this sitting
    runs = unpack(tmp_path / "first.tar.gz", tmp_path / "again", boot=sitting()["boot"])
    assert runs == {"kept": ["A-r00", "A-r01", "C-r00"], "reset": ["C-r01"]}
    again = Ablation.open(tmp_path / "again")
    trainer = SyntheticExecutor()
    assert again.run(llm_for=scripted(), executor=trainer, log=quiet)
    assert len(trainer.runs) == 6  # C-r01 alone: its baseline, four experiments, one confirmation
    for rid in ("A-r00", "A-r01", "C-r00", "C-r01"):
        assert trajectory(again.root / "runs" / rid) == trajectory(reference.root / "runs" / rid)
    report = write_ablation_report(again.root).read_text()
    assert "4/4 runs finished" in report and "span two sittings" not in report


def test_the_report_names_a_repeat_whose_runs_trained_in_two_sittings(tmp_path) -> None:
    ablation = Ablation.open(tmp_path / "abl", SPEC)
    assert ablation.run(llm_for=scripted(), executor=SyntheticExecutor(), log=quiet)
    assert {run["sitting"]["boot"] for run in ablation.manifest["runs"].values()} == {sitting()["boot"]}
    ablation.mark("C-r01", sitting={"boot": "another-boot", "cpu": "Another CPU, 2 CPUs"})
    report = write_ablation_report(ablation.root).read_text()
    assert "trained in 2 sittings" in report and "Another CPU, 2 CPUs: repeats 1" in report
    assert "**repeats 1 span two sittings**" in report


def test_unpack_refuses_what_is_not_a_pack_and_an_existing_folder(tmp_path) -> None:
    def archive(name: str, members: dict[str, bytes]) -> Path:
        path = tmp_path / name
        with tarfile.open(path, "w:gz") as tar:
            for member, data in members.items():
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        return path

    manifest = json.dumps({"spec": {}, "runs": {}}).encode()
    with pytest.raises(PackError, match="not an ablation's pack"):
        unpack(archive("none.tar.gz", {"abl/other.txt": b"x"}), tmp_path / "a")
    with pytest.raises(PackError, match="not an ablation's pack"):
        unpack(archive("two.tar.gz", {"abl/ablation.json": manifest, "other/x": b"x"}), tmp_path / "b")
    with pytest.raises(tarfile.TarError):  # a member that climbs out of the folder: the data filter refuses it
        unpack(archive("climb.tar.gz", {"abl/ablation.json": manifest, "abl/../../escaped": b"x"}), tmp_path / "c")
    assert not (tmp_path / "escaped").exists() and not (tmp_path.parent / "escaped").exists()
    (tmp_path / "d").mkdir()
    with pytest.raises(PackError, match="exists"):
        unpack(archive("ok.tar.gz", {"abl/ablation.json": manifest}), tmp_path / "d")
