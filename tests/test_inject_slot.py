"""What inject checks before a candidate becomes the inner graph's propose node: the slot its mechanism was written for
(a decide mechanism would run as the propose node), and that it loads from its record as `run_inner` will load it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from checkpoints.run_folder import Ledger
from nodes.inject import inject
from nodes.mechanism_loader import builtin_record


def injected(tmp_path: Path, record: dict[str, Any], source: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    ledger = Ledger(tmp_path / "run")
    context = SimpleNamespace(inner=SimpleNamespace(ledger=ledger))
    active = builtin_record("llm_greedy")
    state = {"candidate": record, "candidate_source": source, "validation": {"ok": True}, "cycle": 1,
             "active": active, "history": []}  # fmt: skip
    update = inject(state, SimpleNamespace(context=context))  # type: ignore[arg-type]
    return update, next(ledger.events("inject"))


def test_a_decide_mechanism_is_refused_as_the_propose_node(tmp_path: Path) -> None:
    record = builtin_record("annealing", {"t0": 0.01})  # composed, validated: but it decides, it does not propose
    assert record["target"] == "decide"
    update, event = injected(tmp_path, dict(record))
    assert update["candidate"] is None and update["history"][-1]["event"] == "refused"
    assert not event["injected"] and "'decide' mechanism" in event["reason"] and "propose node" in event["reason"]
    folder = tmp_path / "run" / "mechanisms" / record["id"].replace("@", "-")
    assert json.loads((folder / "record.json").read_text())["status"] == "refused"


def test_a_propose_mechanism_is_injected(tmp_path: Path) -> None:
    record = builtin_record("tabu")
    update, event = injected(tmp_path, dict(record))
    assert update["active"]["id"] == record["id"] and event["injected"]


def test_a_candidate_that_does_not_load_from_its_record_is_refused(tmp_path: Path) -> None:
    record = {**builtin_record("tabu"), "sha256": "0" * 64}  # the built-in's source is not the recorded one
    update, event = injected(tmp_path, record)
    assert "active" not in update and not event["injected"] and "could not be built" in event["reason"]
