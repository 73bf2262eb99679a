"""The runtime context of the inner graph: live objects that never go into state (chat model, executor, mechanisms)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from langchain_core.messages import HumanMessage, SystemMessage
from pydantic import BaseModel
from rich.console import Console

from checkpoints.run_folder import Ledger
from llm.structured import LLMBudget, StructuredAnswer, ask_structured
from mechanisms.space import SearchSpace
from nodes.prompts import GPT_TASK
from trials.launcher import EVALUATOR_PATH, Executor, LocalExecutor, TrainerSettings, file_sha256
from trials.pipeline import TrialPipeline

T = TypeVar("T", bound=BaseModel)


@dataclass
class InnerContext:
    ledger: Ledger
    space: SearchSpace
    base_source: str  # the train.py every experiment starts from (a copy kept in the run folder)
    trainer: TrainerSettings
    llm: Any = None  # a LangChain chat model; None only for mechanisms that never ask it
    budget: LLMBudget = field(default_factory=LLMBudget)
    executor: Executor = field(default_factory=LocalExecutor)
    # The run's settings come from its RunConfig (graphs/run_config.py make_context), which declares their defaults:
    # none here, so the two cannot disagree.
    mode: str = field(kw_only=True)  # "params" | "code"
    batch: int = field(kw_only=True)  # proposals trained together per iteration (in parallel where allowed)
    noise_margin: float = field(kw_only=True)  # a candidate must beat the best by more than this to be kept
    seed: int = field(kw_only=True)
    llm_attempts: int = field(kw_only=True)  # answers asked for per structured call before a fallback
    pipeline: TrialPipeline | None = None  # set: each proposal starts training as soon as it is made
    deadline: float | None = None  # time.time() after which no new experiment starts
    evaluator_sha256: str = field(default_factory=lambda: file_sha256(EVALUATOR_PATH))
    split_sha256: str | None = None  # None: the baseline's split is the reference
    console: Console = field(default_factory=lambda: Console(stderr=True))
    llm_level: str = "L1"
    # "values": enumerated steps, every answer valid (the embedded model); "free": any value, checked and re-asked
    # (capable endpoints); "moves": enumerated increase/decrease x small/large (measured, not a default)
    proposal_style: str = "free"
    task: str = GPT_TASK  # what the compact prompt says the experiments are (another task: `ablation bbob`)

    @property
    def compact(self) -> bool:
        """Whether the LLM gets the short, enumerated prompts and schemas (the embedded model)."""
        return self.proposal_style in ("values", "moves")

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.time() >= self.deadline

    def ask(
        self,
        schema: type[T],
        system: str,
        prompt: str,
        *,
        node: str,
        level: str | None = None,
        check: Callable[[T], str | None] | None = None,
        by_construction: bool = False,
        **trace_fields: Any,
    ) -> StructuredAnswer[T]:
        """A validated structured answer of this run's LLM, every attempt recorded in the trace (with
        `trace_fields`) and charged to the run's budget. `by_construction`: every answer the schema admits is valid,
        so an answer is never re-asked (only an endpoint failure is)."""

        def record(entry: dict[str, Any]) -> None:
            self.ledger.event(entry.pop("event", "llm_call"), **trace_fields, **entry)

        return ask_structured(
            self.llm,
            schema,
            [SystemMessage(system), HumanMessage(prompt)],
            node=node,
            level=level or self.llm_level,
            budget=self.budget,
            record=record,
            check=check,
            max_attempts=min(self.llm_attempts, 2) if by_construction else self.llm_attempts,
            max_answers=1 if by_construction else None,
        )


@dataclass
class OuterContext:
    """Live objects of the outer graph. The inner context (ledger, LLM, budget, space) is shared: both loops use
    the same LLM with the same client settings."""

    inner: InnerContext
    # from the run's RunConfig, which declares their defaults (generate_mode resolved: never "auto")
    level: str = field(kw_only=True)
    segment: int = field(kw_only=True)  # inner iterations per outer cycle
    generate_mode: str = field(kw_only=True)  # "compose": pick and parametrise a built-in; "generate": write a module
    max_repairs: int = 2  # repair rounds fed by the validator's errors before a candidate is dropped
    max_new_freezes: int = 5  # Level 1.5 caps
    min_active: int = 4
    checkpointer: Any = None  # the run's SqliteSaver; `run_inner` gives each segment its own thread on it
    inner_graph_mermaid: str = ""  # the inner graph as the analyst reads it (drawn by the builders in graphs/)

    def acts(self, step: str) -> bool:
        """Whether an outer step acts at this level (inactive steps still run, and only pass)."""
        levels = {"adjust": {"1.5", "2"}, "mechanism": {"2", "1+2"}}
        return self.level in levels[step]
