"""The real embedded model (SmolLM2-135M on llama.cpp) answers every compact call validly at the first attempt: the
proposal (enumerated steps), adjust, analyze and compose. Slow (a model server; trainings on the surrogate), run by
CI all the same."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from checkpoints.run_folder import Ledger
from graphs.run_config import RunConfig, make_context
from graphs.runner import execute
from llm.client import LLMSettings, open_chat_model
from llm.structured import LLMBudget
from mechanisms.builtin.local_search import config_key
from nodes.adjust import adjust
from nodes.analyze import analyze
from nodes.context import OuterContext
from nodes.generate import generate

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]
SURROGATE = "surrogate:ablation/data/surrogate_samples.csv"


def test_every_call_of_the_embedded_model_is_valid_at_the_first_attempt(tmp_path: Path) -> None:
    with open_chat_model(LLMSettings.resolve(), server_log=tmp_path / "llm_server.log") as (llm, _):
        run_dir = tmp_path / "inner"
        config = RunConfig(run_dir=str(run_dir), level="1", iterations=3, segment=4, executor=SURROGATE)
        final = execute(config, llm=llm, inner_only=True)  # proposal style "auto": enumerated for the embedded model
        calls = list(Ledger(run_dir).events("llm_call"))
        assert [c["ok"] for c in calls] == [True] * 3, calls  # one call per proposal, each valid
        experiments = final["experiments"]
        assert [e["proposal_source"] for e in experiments[1:]] == ["llm"] * 3
        space = make_context(config, Ledger(run_dir), llm, LLMBudget()).space
        assert len({config_key(space, e["params"]) for e in experiments}) == 4  # no repeat, no no-op

        outer_dir = tmp_path / "outer"
        outer_config = RunConfig(run_dir=str(outer_dir), level="2", executor=SURROGATE)
        outer_config.save()
        ctx = make_context(outer_config, Ledger(outer_dir), llm, LLMBudget())
        ctx.proposal_style = "values"
        outer = OuterContext(inner=ctx, level="2", segment=4, generate_mode="compose", inner_graph_mermaid="graph")
        active = {"id": "llm_greedy@start", "name": "llm_greedy", "origin": "builtin", "target": "propose"}
        state = {"inner": {**final, "stop_reason": None}, "active": active, "cycle": 1, "segments": []}
        runtime = SimpleNamespace(context=outer)
        state["inner"] = adjust(state, runtime).get("inner", state["inner"])  # type: ignore[arg-type]
        state["diagnosis"] = analyze(state, runtime)["diagnosis"]  # type: ignore[arg-type]
        candidate = generate(state, runtime)["candidate"]  # type: ignore[arg-type]
        calls = list(Ledger(outer_dir).events("llm_call"))
        assert [(c["node"], c["ok"]) for c in calls] == [("adjust", True), ("analyze", True), ("generate", True)]
        diagnosis = state["diagnosis"]
        assert diagnosis["source"] == "llm" and diagnosis["finding"] in diagnosis["supported"]
        assert candidate is not None and candidate["id"] != active["id"]
