"""ask_structured and LLMBudget through the scripted model: validation, re-asks, fallback, accounting."""

from __future__ import annotations

import json
from typing import Any, Literal

import httpx
import openai
import pytest
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage
from pydantic import BaseModel, Field

from llm.scripted import ScriptedChatModel, ScriptExhausted
from llm.structured import LLMBudget, LLMBudgetExhausted, StructuredAnswer, ask_structured

USAGE = {"input_tokens": 40, "output_tokens": 12, "total_tokens": 52}
VALID = {
    "changes": [{"name": "MATRIX_LR", "value": "0.04"}],
    "hypothesis": "a higher lr",
    "expected_direction": "lower",
}
EVENT_KEYS = set("event node level model prompt_tokens completion_tokens latency_s attempt ok error".split())
MESSAGES = [SystemMessage("You tune a GPT training run."), HumanMessage("Propose one change.")]


class Change(BaseModel):
    name: Literal["DEPTH", "MATRIX_LR"]
    value: str


class Proposal(BaseModel):
    """A hyperparameter proposal."""

    changes: list[Change] = Field(min_length=1, max_length=3)
    hypothesis: str
    expected_direction: Literal["lower", "higher"]


def ask(model: ScriptedChatModel, events: list[dict[str, Any]], **kwargs: Any) -> StructuredAnswer[Proposal]:
    options: dict[str, Any] = {"budget": LLMBudget(), "max_attempts": 3, **kwargs}
    return ask_structured(model, Proposal, MESSAGES, node="propose", level="L1", record=events.append, **options)


def scripted(*items: Any) -> ScriptedChatModel:
    return ScriptedChatModel(script=list(items), usage=USAGE)


def test_valid_answer_first_time() -> None:
    events: list[dict[str, Any]] = []
    answer = ask(scripted(VALID), events)
    assert answer.value == Proposal.model_validate(VALID)
    assert (answer.attempts, answer.errors, answer.fallback) == (1, [], False)
    assert [event["ok"] for event in events] == [True]


def test_garbage_then_valid_re_asks_with_the_error() -> None:
    model, events = scripted("Sure! I suggest raising the learning rate.", VALID), []
    answer = ask(model, events)
    assert answer.value is not None and answer.attempts == 2 and not answer.fallback
    assert len(answer.errors) == 1 and "did not call the tool `Proposal`" in answer.errors[0]
    second_call = model.calls[1]
    assert second_call[: len(MESSAGES)] == MESSAGES
    reask = second_call[-1].content
    assert reask.startswith("Your previous answer was rejected:") and "raising the learning rate" in reask


def test_wrong_schema_is_rejected_with_the_validation_problem() -> None:
    wrong = {"changes": [{"name": "BATCH", "value": "8"}], "hypothesis": "x", "expected_direction": "down"}
    model, events = scripted(wrong, VALID), []
    answer = ask(model, events)
    assert answer.attempts == 2 and answer.value is not None
    assert "changes.0.name" in answer.errors[0] and "expected_direction" in answer.errors[0]
    assert "errors.pydantic.dev" not in answer.errors[0]


def test_a_call_to_another_tool_is_rejected() -> None:
    other = AIMessage("", tool_calls=[{"name": "Other", "args": VALID, "id": "c1", "type": "tool_call"}])
    answer = ask(scripted(other, VALID), [])
    assert answer.attempts == 2
    assert answer.errors == [
        "your `Proposal` call could not be read: Unknown tool type: 'Other'. Available tools: Proposal"
    ]


def test_check_rejection_re_asks_with_the_check_message() -> None:
    noop = {**VALID, "changes": [{"name": "MATRIX_LR", "value": "0.02"}]}
    model = scripted(noop, VALID)

    def check(proposal: Proposal) -> str | None:
        return "MATRIX_LR=0.02 is the current value (a no-op)" if proposal.changes[0].value == "0.02" else None

    answer = ask(model, [], check=check)
    assert answer.value is not None and answer.value.changes[0].value == "0.04"
    assert answer.errors == ["MATRIX_LR=0.02 is the current value (a no-op)"]
    assert "a no-op" in model.calls[1][-1].content and '"0.02"' in model.calls[1][-1].content


def test_all_attempts_bad_gives_a_recorded_fallback() -> None:
    events: list[dict[str, Any]] = []
    answer = ask(scripted("no", {"hypothesis": 1}, "still no"), events)
    assert answer.fallback and answer.value is None and answer.attempts == 3 and len(answer.errors) == 3
    assert [event["ok"] for event in events] == [False, False, False]
    assert [event["error"] for event in events] == answer.errors
    summary = answer.summary()
    assert json.loads(json.dumps(summary)) == summary
    assert summary["fallback"] is True and summary["value"] is None and summary["prompt_tokens"] == 120


@pytest.mark.parametrize(
    "failure",
    [
        TimeoutError,
        ConnectionRefusedError("[Errno 111] Connection refused"),
        openai.InternalServerError(
            "boom",
            response=httpx.Response(500, request=httpx.Request("POST", "http://x/v1/chat/completions")),
            body=None,
        ),
    ],
)
def test_endpoint_failure_is_retried_without_telling_the_model(failure: Any) -> None:
    model, events = scripted(failure, VALID), []
    answer = ask(model, events)
    assert answer.value is not None and answer.attempts == 2
    assert answer.errors[0].startswith("endpoint error:")
    assert model.calls[1] == MESSAGES  # the same conversation again: the model never saw the failure
    assert (events[0]["prompt_tokens"], events[0]["completion_tokens"], events[0]["ok"]) == (0, 0, False)


def test_configuration_errors_and_fatal_errors_propagate() -> None:
    response = httpx.Response(401, request=httpx.Request("POST", "http://x/v1/chat/completions"))
    with pytest.raises(openai.AuthenticationError):
        ask(scripted(openai.AuthenticationError("bad key", response=response, body=None)), [])
    with pytest.raises(ScriptExhausted, match="script has only 0 answers"):
        ask(ScriptedChatModel(script=[]), [])


def test_enormous_string_is_rejected_as_malformed() -> None:
    huge = {**VALID, "hypothesis": "x" * 20_001}
    answer = ask(scripted(huge, VALID), [])
    assert answer.attempts == 2 and "answer.hypothesis has 20001 characters" in answer.errors[0]
    assert "(truncated)" in ask_reask_text(scripted(huge, VALID))


def ask_reask_text(model: ScriptedChatModel) -> str:
    ask(model, [])
    return str(model.calls[1][-1].content)


def test_every_attempt_is_recorded_with_tokens_and_latency() -> None:
    events: list[dict[str, Any]] = []
    model = ScriptedChatModel(script=["junk", VALID], usage=USAGE, sleep=0.02)
    answer = ask(model, events)
    assert [event["attempt"] for event in events] == [1, 2]
    for event in events:
        assert set(event) == EVENT_KEYS
        assert (event["event"], event["node"], event["level"], event["model"]) == (
            "llm_call",
            "propose",
            "L1",
            "scripted",
        )
        assert (event["prompt_tokens"], event["completion_tokens"]) == (40, 12)
        assert event["latency_s"] >= 0.02
    assert (answer.prompt_tokens, answer.completion_tokens) == (80, 24) and answer.latency_s >= 0.04


def test_missing_usage_counts_zero_tokens() -> None:
    events: list[dict[str, Any]] = []
    budget = LLMBudget()
    ask(ScriptedChatModel(script=[VALID]), events, budget=budget)
    assert (events[0]["prompt_tokens"], events[0]["completion_tokens"]) == (0, 0)
    assert budget.summary() == {
        "max_calls": None, "max_tokens": None, "calls": 1, "prompt_tokens": 0, "completion_tokens": 0
    }  # fmt: skip


def test_budget_of_calls_is_enforced_across_attempts() -> None:
    budget = LLMBudget(max_calls=2)
    events: list[dict[str, Any]] = []
    with pytest.raises(LLMBudgetExhausted, match=r"node 'propose' \(level L1\): 2 of 2 calls used"):
        ask(scripted("junk", "junk", VALID), events, budget=budget)
    assert len(events) == 2 and budget.exhausted and budget.calls == 2


def test_budget_of_tokens_is_enforced() -> None:
    budget = LLMBudget(max_tokens=100)
    ask(scripted(VALID, VALID, VALID), [], budget=budget)
    ask(scripted(VALID), [], budget=budget)
    assert budget.tokens == 104 and budget.exhausted
    with pytest.raises(LLMBudgetExhausted, match="104 of 100 tokens used"):
        ask(scripted(VALID), [], budget=budget)
    assert budget.calls == 2


def test_max_attempts_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_attempts"):
        ask(scripted(VALID), [], max_attempts=0)
