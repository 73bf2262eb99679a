"""ScriptedChatModel: script items, tool-call naming, cycling, usage, and use inside a LangGraph graph."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, TypedDict

import pytest
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage
from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from pydantic import BaseModel

from llm.scripted import ScriptedChatModel, ScriptExhausted
from llm.structured import LLMBudget, ask_structured


class Verdict(BaseModel):
    keep: bool
    reason: str


class Other(BaseModel):
    score: int


def test_dict_becomes_a_call_to_the_bound_tool() -> None:
    model = ScriptedChatModel(script=[{"keep": True, "reason": "better"}, {"score": 3}])
    assert model.with_structured_output(Verdict, method="function_calling").invoke("judge") == Verdict(
        keep=True, reason="better"
    )
    assert model.with_structured_output(Other, method="function_calling").invoke("score") == Other(score=3)


def test_structured_runnables_built_up_front_keep_their_own_tool_names() -> None:
    model = ScriptedChatModel(script=[{"keep": False, "reason": "worse"}, {"score": 1}])
    verdict = model.with_structured_output(Verdict, method="function_calling")
    other = model.with_structured_output(Other, method="function_calling")
    assert verdict.invoke("a") == Verdict(keep=False, reason="worse")
    assert other.invoke("b") == Other(score=1)


def test_plain_invoke_answers_text_and_dicts_as_json() -> None:
    model = ScriptedChatModel(script=["hello", {"a": 1}])
    assert model.invoke("hi").content == "hello"
    assert json.loads(str(model.invoke("hi").content)) == {"a": 1}


def test_callable_items_see_the_conversation() -> None:
    def echo(messages: list[BaseMessage]) -> str:
        return f"you said {messages[-1].content}"

    model = ScriptedChatModel(script=[echo])
    assert model.invoke("ping").content == "you said ping"
    assert model.calls == [[HumanMessage("ping")]]


def test_exceptions_are_raised_and_ai_messages_returned_as_is() -> None:
    message = AIMessage("raw", usage_metadata={"input_tokens": 1, "output_tokens": 2, "total_tokens": 3})
    model = ScriptedChatModel(script=[ValueError("bad gateway"), TimeoutError, message])
    with pytest.raises(ValueError, match="bad gateway"):
        model.invoke("a")
    with pytest.raises(TimeoutError, match="scripted TimeoutError at call 2"):
        model.invoke("b")
    answer = model.invoke("c")
    assert answer.content == "raw" and answer.usage_metadata == message.usage_metadata


def test_usage_is_attached_and_the_script_runs_out_clearly() -> None:
    usage = {"input_tokens": 5, "output_tokens": 7, "total_tokens": 12}
    model = ScriptedChatModel(script=["one"], usage=usage)
    assert model.invoke("a").usage_metadata == usage
    with pytest.raises(ScriptExhausted, match="call 2 but the script has only 1 answers"):
        model.invoke("b")


def test_cycle_replays_the_script() -> None:
    model = ScriptedChatModel(script=["a", "b"], cycle=True)
    assert [model.invoke("x").content for _ in range(5)] == ["a", "b", "a", "b", "a"]


class LoopState(TypedDict):
    kept: list[bool]


@dataclass
class LoopContext:
    llm: Any
    budget: LLMBudget
    events: list[dict[str, Any]]


def decide(state: LoopState, runtime: Runtime[LoopContext]) -> dict[str, Any]:
    ctx = runtime.context
    answer = ask_structured(
        ctx.llm,
        Verdict,
        [HumanMessage("keep?")],
        node="decide",
        level="L1",
        budget=ctx.budget,
        record=ctx.events.append,
    )
    keep = answer.value.keep if answer.value is not None else False  # the recorded fallback: discard
    return {"kept": [*state["kept"], keep]}


def test_usable_in_a_langgraph_graph_through_the_runtime_context() -> None:
    builder = StateGraph(LoopState, context_schema=LoopContext)
    builder.add_node("decide", decide)
    builder.add_edge(START, "decide")
    builder.add_conditional_edges("decide", lambda state: END if len(state["kept"]) >= 3 else "decide")
    graph = builder.compile()
    script = [{"keep": True, "reason": "r"}, "junk", "junk", "junk", {"keep": True, "reason": "r"}]
    context = LoopContext(ScriptedChatModel(script=script), LLMBudget(max_calls=10), [])
    final = graph.invoke({"kept": []}, context=context)
    assert final["kept"] == [True, False, True]
    assert [event["ok"] for event in context.events] == [True, False, False, False, True]
    assert context.budget.calls == 5
