"""Proposals valid by construction: the enumerated schema (every answer a grammar-constrained decoder can write maps
to a valid, untried proposal), the nodes' compact calls with a scripted model, configurations never trained twice,
the `local` ablation group, call time limits, and what `make run` prints."""

from __future__ import annotations

import json
import random
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import openai
import pytest
from langchain_core.utils.function_calling import convert_to_openai_tool
from support import SyntheticExecutor, change, config

from ablation.harness import Ablation, AblationSpec
from checkpoints.run_folder import Ledger
from graphs import cli
from graphs.run_config import initial_inner_state, make_context
from graphs.runner import execute
from llm.client import CLIENT_MAX_RETRIES, CallTimer, LLMSettings, ServerWatchdog, _client
from llm.scripted import ScriptedChatModel
from llm.structured import LLMBudget
from mechanisms.builtin.local_search import config_key, tried_configs
from mechanisms.space import SearchSpace
from nodes.adjust import adjust
from nodes.analyze import IDEAS, analyze, findings, trace_summary
from nodes.context import InnerContext, OuterContext
from nodes.generate import composition_options, generate
from nodes.llm_proposer import ask_llm, enumerated_schema, map_enumerated, step_options
from trials.launcher import TRAIN_PATH

SPACE = SearchSpace.from_train_source(TRAIN_PATH.read_text())


def enum_of(schema: Any) -> list[str]:
    """The values a constrained decoder may write for the schema's one field (its JSON-schema enum)."""
    params = convert_to_openai_tool(schema)["function"]["parameters"]
    (prop,) = params["properties"].values()
    return list(prop["enum"])


def incumbents() -> list[dict[str, Any]]:
    rng = random.Random(7)
    return [SPACE.defaults(), *(SPACE.sample(rng) for _ in range(25))]


# ---- the schema ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["values", "moves"])
def test_every_answer_the_grammar_allows_is_a_valid_untried_proposal(style: str) -> None:
    for incumbent in incumbents():
        frozen = ["MATRIX_LR", "SEQ_LEN"]
        tried = {config_key(SPACE, {**incumbent, "DEPTH": d}) for d in range(1, 25)}  # every DEPTH step tried
        names = list(SPACE.free_names(frozen))
        options = step_options(SPACE, incumbent, names, frozen, tried, style)
        schema = enumerated_schema(options, style)
        labels = enum_of(schema)
        assert labels and len(labels) == len(set(labels))
        for label in labels:
            changes = map_enumerated(schema.model_validate({"step": label}), options, style)
            assert not SPACE.check_changes(changes, incumbent, frozen), (label, changes)
            assert not SPACE.constraint_errors({**incumbent, **changes})  # multiple_of kept
            assert config_key(SPACE, {**incumbent, **changes}) not in tried
            assert "DEPTH" not in changes and not set(frozen) & set(changes)


def test_steps_keep_the_batch_rule_and_the_parameter_scales() -> None:
    defaults = SPACE.defaults()
    assert [s["MATRIX_LR"] for s in SPACE.steps(defaults, "MATRIX_LR")] == [0.02, 0.028, 0.056, 0.08]  # x.5 .7 1.4 2
    assert [s["DEPTH"] for s in SPACE.steps(defaults, "DEPTH")] == [2, 3, 5, 6]  # -2 .. +2 grid steps
    assert [s["HEAD_DIM"] for s in SPACE.steps(defaults, "HEAD_DIM")] == [32, 128]  # the other choices
    assert [s["OPTIMIZER"] for s in SPACE.steps(defaults, "OPTIMIZER")] == ["adamw"]
    # 16 x 256 divides 8192; 11 x 256 and 22 x 256 do not: only the steps that keep the rule are offered
    assert [s["DEVICE_BATCH_SIZE"] for s in SPACE.steps(defaults, "DEVICE_BATCH_SIZE")] == [8, 32]
    for step in SPACE.steps(defaults, "TOTAL_BATCH_TOKENS"):
        assert step["TOTAL_BATCH_TOKENS"] % (16 * 256) == 0
    assert SPACE.steps(defaults, "MATRIX_LR", frozen=["MATRIX_LR"]) == []


def test_a_step_that_needs_a_repair_is_offered_only_when_nothing_else_is() -> None:
    source = TRAIN_PATH.read_text().replace("SEQ_LEN = 256  # choice [64, 128, 256, 512, 1024, 2048]",
                                            "SEQ_LEN = 256  # choice [256, 1024]")  # fmt: skip
    space = SearchSpace.from_train_source(source)
    (step,) = space.steps(space.defaults(), "SEQ_LEN")
    assert step == {"SEQ_LEN": 1024, "TOTAL_BATCH_TOKENS": 16384}  # the batch moved to the nearest multiple
    assert not space.check_changes(step, space.defaults())
    assert space.steps(space.defaults(), "SEQ_LEN", frozen=["TOTAL_BATCH_TOKENS"]) == []


def test_declared_frozen_parameters_are_never_offered() -> None:
    source = TRAIN_PATH.read_text().replace("DEPTH = 4  # int [1, 24];", "DEPTH = 4  # int [1, 24] frozen;")
    space = SearchSpace.from_train_source(source)
    options = step_options(space, space.defaults(), list(space.free_names()), [], set())
    assert "DEPTH" not in options and space["DEPTH"].doc.startswith("transformer blocks")


def test_the_schema_compiles_to_a_llama_cpp_grammar() -> None:
    llama_grammar = pytest.importorskip("llama_cpp.llama_grammar")
    options = step_options(SPACE, SPACE.defaults(), list(SPACE.names), [], set())
    params = convert_to_openai_tool(enumerated_schema(options))["function"]["parameters"]
    grammar = llama_grammar.json_schema_to_gbnf(json.dumps(params))
    assert '"\\"MATRIX_LR=0.056\\""' in grammar  # the enum itself, not the generic JSON grammar


def test_parameter_meanings_come_from_train_py_and_the_runtime_still_reads_the_block() -> None:
    from gpt import runtime

    assert all(p.doc for p in SPACE.params)
    assert SPACE["WARMDOWN_FRAC"].doc == "share of the budget, at the end, decaying the learning rate"
    parsed = {p.name: p for p in runtime.parse_block(TRAIN_PATH.read_text())}
    assert parsed["TOTAL_BATCH_TOKENS"].multiple_of == ("DEVICE_BATCH_SIZE", "SEQ_LEN")
    assert parsed["MATRIX_LR"].log and parsed["DEPTH"].domain == (1, 24)
    quoted = SearchSpace.from_train_source(
        "# ---- hyperparameters: the inner loop edits this block ----\n"
        'SEP = "a;b"  # choice ["a;b", "c"]; a separator\n'
        "# ---- end of hyperparameters ----\n"
    )
    assert quoted["SEP"].choices == ("a;b", "c") and quoted["SEP"].doc == "a separator"


# ---- the proposer with a scripted model ------------------------------------------------------------------------------


def values_context(tmp_path: Path, script: list[Any]) -> tuple[InnerContext, Ledger, ScriptedChatModel]:
    cfg = config(tmp_path)
    cfg.save()
    ledger = Ledger(tmp_path / "run")
    llm = ScriptedChatModel(script=script)
    ctx = make_context(cfg, ledger, llm, LLMBudget())
    ctx.proposal_style = "values"
    return ctx, ledger, llm


def state_with(experiments: list[dict[str, Any]]) -> dict[str, Any]:
    return {**initial_inner_state(SPACE, 10), "iteration": len(experiments), "experiments": experiments}


def test_one_call_one_valid_proposal_with_a_short_prompt(tmp_path: Path) -> None:
    ctx, ledger, llm = values_context(tmp_path, [{"step": "MATRIX_LR=0.056"}])
    proposal = ask_llm(state_with([]), ctx)  # type: ignore[arg-type]
    assert proposal["changes"] == {"MATRIX_LR": 0.056} and proposal["source"] == "llm"
    assert [c["ok"] for c in ledger.events("llm_call")] == [True]
    system, user = (str(m.content) for m in llm.calls[0])
    assert "learning rate of the block matrices" in system  # train.py's comment, reused
    assert "MATRIX_LR = 0.04: 0.02, 0.028, 0.056, 0.08" in user
    assert len(system) + len(user) < 4_000  # ~1,000 tokens, most of them the cached system text and options


def test_an_endpoint_that_ignores_the_enum_is_not_re_asked_and_the_fallback_is_recorded(tmp_path: Path) -> None:
    ctx, ledger, _ = values_context(tmp_path, [{"step": "MATRIX_LR=7"}])
    proposal = ask_llm(state_with([]), ctx)  # type: ignore[arg-type]
    assert proposal["source"] == "fallback" and not SPACE.check_changes(proposal["changes"], SPACE.defaults())
    assert [c["ok"] for c in ledger.events("llm_call")] == [False]  # one answer: no re-ask
    assert next(ledger.events("proposal_fallback"))["reason"]


def test_an_endpoint_failure_is_retried_once_and_counted(tmp_path: Path) -> None:
    ctx, ledger, _ = values_context(tmp_path, [openai.APIConnectionError, {"step": "DEPTH=5"}])
    ctx.llm_attempts = 3
    proposal = ask_llm(state_with([]), ctx)  # type: ignore[arg-type]
    assert proposal["changes"] == {"DEPTH": 5} and proposal["attempts"] == 2
    assert [c["ok"] for c in ledger.events("llm_call")] == [False, True] and ctx.budget.calls == 2


def experiment(eid: str, changes: dict[str, Any], status: str = "discard", bpb: float = 2.0) -> dict[str, Any]:
    return {
        "id": eid,
        "iteration": int(eid[1:]),
        "params": {**SPACE.defaults(), **changes},
        "changes": changes,
        "val_bpb": bpb,
        "status": status,
        "description": ", ".join(f"{k}={v}" for k, v in changes.items()) or "baseline",
        "proposal_source": "llm",
    }


def test_a_tried_configuration_is_never_offered_again(tmp_path: Path) -> None:
    history = [experiment("e0000", {}, "keep"), experiment("e0001", {"MATRIX_LR": 0.056})]
    ctx, _, llm = values_context(tmp_path, [{"step": "MATRIX_LR=0.08"}])
    ask_llm(state_with(history), ctx)  # type: ignore[arg-type]
    schema_labels = enum_of(enumerated_schema(step_options(SPACE, SPACE.defaults(), list(SPACE.names), [],
                                                           tried_configs(SPACE, history))))  # fmt: skip
    assert "MATRIX_LR=0.056" not in schema_labels and "MATRIX_LR=0.08" in schema_labels
    assert "0.056" in str(llm.calls[0][1].content)  # the prompt still lists it (stable prefix); the enum does not


def test_free_values_landing_on_a_tried_configuration_are_re_asked(tmp_path: Path) -> None:
    history = [experiment("e0000", {}, "keep"), experiment("e0001", {"MATRIX_LR": 0.08})]
    cfg = config(tmp_path)
    cfg.save()
    ledger = Ledger(tmp_path / "run")
    ctx = make_context(cfg, ledger, ScriptedChatModel(script=[change("MATRIX_LR", 0.08), change("MATRIX_LR", 0.07)]),
                       LLMBudget())  # fmt: skip
    proposal = ask_llm(state_with(history), ctx)  # type: ignore[arg-type]
    calls = list(ledger.events("llm_call"))
    assert proposal["changes"] == {"MATRIX_LR": 0.07} and "already trained" in calls[0]["error"]


REPEATER = """
NAME = "repeater"
TARGET = "propose"


def propose(view):
    value = 0.08 if view.incumbent["MATRIX_LR"] == 0.04 else 0.04  # back to the baseline's value once it moved
    return {"changes": {"MATRIX_LR": value}, "hypothesis": "the same again", "expected_direction": "lower"}
"""


def test_a_mechanism_that_repeats_itself_never_trains_a_configuration_twice(tmp_path: Path) -> None:
    path = tmp_path / "repeater.py"
    path.write_text(REPEATER)
    cfg = config(tmp_path, iterations=4, mechanism=str(path))
    final = execute(cfg, llm=ScriptedChatModel(script=[]), executor=SyntheticExecutor(), inner_only=True)
    keys = [config_key(SPACE, e["params"]) for e in final["experiments"]]
    assert len(keys) == len(set(keys)) == 5
    sources = [e["proposal_source"] for e in final["experiments"][1:]]
    assert sources[:2] == ["mechanism", "fallback"]  # e0002 would have been the baseline again
    reasons = [e["reason"] for e in Ledger(tmp_path / "run").events("proposal_fallback")]
    assert len(reasons) == sources.count("fallback") and all("already trained" in r for r in reasons)


# ---- the outer nodes' compact calls ----------------------------------------------------------------------------------


def outer_state(experiments: list[dict[str, Any]]) -> dict[str, Any]:
    active = {"id": "llm_greedy@x", "name": "llm_greedy", "origin": "builtin", "target": "propose"}
    inner = {**state_with(experiments), "stop_reason": None}
    return {"inner": inner, "active": active, "cycle": 1, "segments": [], "diagnosis": None}


def outer_call(tmp_path: Path, node: Any, state: dict[str, Any], script: list[Any]) -> tuple[dict[str, Any], Ledger]:
    ctx, ledger, _ = values_context(tmp_path, script)
    outer = OuterContext(inner=ctx, level="2", segment=4, generate_mode="compose", inner_graph_mermaid="graph")
    return node(state, SimpleNamespace(context=outer)), ledger


HISTORY = [
    experiment("e0000", {}, "keep", 2.1),
    experiment("e0001", {"MATRIX_LR": 0.056}, "keep", 2.0),
    experiment("e0002", {"MATRIX_LR": 0.056, "DEPTH": 5}, "crash"),
    experiment("e0003", {"MATRIX_LR": 0.056, "DEPTH": 3}),
    experiment("e0004", {"MATRIX_LR": 0.056, "WARMDOWN_FRAC": 0.6}),
    experiment("e0005", {"MATRIX_LR": 0.056, "WARMDOWN_FRAC": 0.6}),
]


def test_findings_are_the_ones_the_figures_support_with_evidence_from_them() -> None:
    supported = {f.id: f for f in findings(trace_summary(HISTORY, SPACE.free_names()), HISTORY, SPACE)}
    assert set(supported) == {"repeats", "crashes", "stagnation", "untouched", "small_steps", "uneven"}
    assert supported["small_steps"].evidence == "median step 6% of a parameter's range over 5 proposals"
    assert supported["repeats"].evidence == "1 of 6 experiments repeated an earlier configuration"
    assert supported["stagnation"].evidence == "no new best in the last 4 of 6 experiments"
    assert "DEPTH" in supported["crashes"].evidence


def test_analyze_records_a_chosen_finding_with_evidence_written_by_code(tmp_path: Path) -> None:
    result, ledger = outer_call(tmp_path, analyze, outer_state(HISTORY), [{"finding": "stagnation", "idea": "anneal"}])
    diagnosis = result["diagnosis"]
    assert diagnosis["source"] == "llm" and diagnosis["finding"] == "stagnation"
    assert diagnosis["evidence"] == "no new best in the last 4 of 6 experiments"
    assert diagnosis["ideas"] == [IDEAS["anneal"]]


def test_an_answer_not_about_the_run_is_never_recorded_as_the_models_diagnosis(tmp_path: Path) -> None:
    result, ledger = outer_call(tmp_path, analyze, outer_state(HISTORY[:2]), [{"finding": "][", "idea": "EVERYBODY"}])
    assert result["diagnosis"]["source"] == "fallback" and "][" not in json.dumps(result["diagnosis"])
    assert [c["ok"] for c in ledger.events("llm_call")] == [False]  # not re-asked: the schema admits no such answer


def test_adjust_and_compose_take_enumerated_answers(tmp_path: Path) -> None:
    answer = {"strategy": "exploit", "freeze": "LOGIT_SOFTCAP", "unfreeze": "none"}
    result, _ = outer_call(tmp_path / "a", adjust, outer_state(HISTORY), [answer])
    assert result["inner"]["settings"] == {"strategy": "exploit", "frozen": ["LOGIT_SOFTCAP"], "guidance": ""}
    state = {**outer_state(HISTORY), "diagnosis": {"bottleneck": "b", "evidence": "e", "ideas": []}}
    result, ledger = outer_call(tmp_path / "c", generate, state, [{"mechanism": "tabu tenure=12"}])
    candidate = result["candidate"]
    assert candidate["name"] == "tabu" and candidate["params"]["tenure"] == 12
    assert next(ledger.events("generate"))["source"] == "llm"


def test_compose_never_offers_the_mechanism_already_running() -> None:
    from nodes.mechanism_loader import builtin_record

    active = builtin_record("tabu", {"tenure": 12})
    labels = composition_options(active["id"])
    assert "tabu tenure=12" not in labels and "tabu" in labels and "bandit policy=thompson" in labels
    assert "llm_greedy" not in composition_options(builtin_record("llm_greedy")["id"])


# ---- the local ablation group ----------------------------------------------------------------------------------------


def test_the_local_group_runs_through_the_harness_without_a_model(tmp_path: Path) -> None:
    spec = AblationSpec(groups=["A", "local"], repeats=2, iterations=4, segment=2, budget_s=1.0, noise_repeats=1)
    ablation = Ablation.open(tmp_path / "abl", spec)

    def llm_for(cfg: Any) -> ScriptedChatModel:
        if cfg.mechanism == "local_search":
            return ScriptedChatModel(script=[])  # asking would fail the run
        return ScriptedChatModel(script=[change("MATRIX_LR", 0.05 + 0.01 * i) for i in range(8)], cycle=True)

    assert ablation.run(llm_for=llm_for, executor=SyntheticExecutor(), log=lambda _: None)
    for repeat in range(2):
        local = json.loads((tmp_path / "abl" / "runs" / f"local-r{repeat:02d}" / "summary.json").read_text())
        paired = json.loads((tmp_path / "abl" / "runs" / f"A-r{repeat:02d}" / "summary.json").read_text())
        assert local["proposal_sources"] == {"mechanism": 4} and local["llm"]["calls"] == 0
        assert local["baseline_bpb"] == paired["baseline_bpb"]
        assert ablation.manifest["runs"][f"local-r{repeat:02d}"]["seed"] == repeat  # paired with A's seed


# ---- time limits, retries, and what the command line prints ----------------------------------------------------------


def test_the_client_never_retries_on_its_own() -> None:
    assert CLIENT_MAX_RETRIES == 0
    llm = _client(LLMSettings.resolve(), "http://127.0.0.1:9/v1", "local", 64, [])
    assert llm.max_retries == 0


class FakeServer:
    def __init__(self) -> None:
        self.restarts = 0

    def ensure_alive(self) -> bool:
        return False

    def restart(self) -> None:
        self.restarts += 1


def test_a_call_limit_follows_the_measured_speed_and_an_abandoned_call_restarts_the_server() -> None:
    timer = CallTimer(prompt_tps=100.0, decode_tps=50.0, max_tokens=100)
    short, long = timer.limit_s(100), timer.limit_s(3000)
    assert long > short and long == pytest.approx(3 * (0.2 + 30 + 2))
    timer.observe(1000, 10, 3 * timer.expected_s(1000, 10))  # a machine three times slower than measured
    assert timer.slowdown == pytest.approx(2.0) and timer.limit_s(3000) == pytest.approx(2 * long)
    server = FakeServer()
    watchdog = ServerWatchdog(server, timer)  # type: ignore[arg-type]
    limited = watchdog.call_limits(_client(LLMSettings.resolve(), "http://127.0.0.1:9/v1", "x", 64, []), ["x" * 300])
    assert limited.model_kwargs["timeout"] == pytest.approx(round(timer.limit_s(300 / 3 + 16), 1))
    from uuid import uuid4

    request = httpx.Request("POST", "http://127.0.0.1:9/v1/chat/completions")
    watchdog.on_llm_error(openai.APITimeoutError(request=request), run_id=uuid4())
    watchdog.on_llm_error(ValueError("not a timeout"), run_id=uuid4())
    assert server.restarts == 1 and watchdog.abandoned == 1


def test_the_run_prints_its_time_and_where_proposals_came_from(tmp_path: Path, capsys: Any) -> None:
    script = [change("MATRIX_LR", 0.05 + 0.01 * i) for i in range(4)]
    cfg = config(tmp_path, iterations=4)
    execute(cfg, llm=ScriptedChatModel(script=script), executor=SyntheticExecutor(), inner_only=True)
    cli.print_summary(Path(cfg.run_dir), 12.3)
    out = capsys.readouterr().out
    assert "proposals from the model: 4 of 4 (100%" in out and "total time: 0.2 min (12 s)" in out


def test_ctrl_c_prints_the_resume_command_with_the_real_folder(tmp_path: Path, monkeypatch: Any, capsys: Any) -> None:
    import graphs.runner

    def interrupted(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(graphs.runner, "execute", interrupted)
    run_dir = tmp_path / "my-run"
    assert cli.main(["--run-dir", str(run_dir), "--iterations", "1"]) == 130
    out = capsys.readouterr().out
    assert f"python -m graphs.bilevel resume {run_dir.resolve()}" in out.replace("\n", "") and "RUN_DIR" not in out
    assert cli.main_inner(["--run-dir", str(run_dir), "--iterations", "1"]) == 130
