"""Running, resuming and finishing a run: the wiring of checkpointer, LLM, context and graph."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_core.runnables import RunnableConfig

from checkpoints.run_folder import Ledger, write_json_atomic
from checkpoints.sqlite import DURABILITY, open_checkpointer
from graphs.inner import build_inner_graph, inner_graph_for
from graphs.outer import (
    RECURSION_LIMIT,
    build_outer_graph,
    finished,
    initial_outer_state,
    pending,
)
from graphs.run_config import RunConfig, initial_inner_state, make_context, restore_budget
from llm.client import LLMSettings, open_chat_model
from llm.local_server import MODEL_ALIAS
from llm.structured import model_name
from mechanisms import jail
from nodes.context import OuterContext
from nodes.mechanism_loader import builtin_mechanism, builtin_record
from nodes.state import MechanismRecord
from trials.launcher import REPO_ROOT, Executor, LocalExecutor
from trials.pipeline import TrialPipeline

GROUPS = {"A": "1", "B": "1.5", "C": "2", "D": "1+2"}


def start_mechanisms(config: RunConfig) -> tuple[MechanismRecord, MechanismRecord | None]:
    """The mechanisms the run starts with as (propose, decide): --mechanism takes the slot its TARGET names; the
    other keeps its default (llm_greedy proposes; None decides by the greedy rule)."""
    record = start_mechanism(config)
    if record["target"] == "decide":
        return builtin_record("llm_greedy"), record
    return record, None


def start_mechanism(config: RunConfig) -> MechanismRecord:
    """The mechanism --mechanism names (a built-in or a file, for either slot); llm_greedy without it."""
    if not config.mechanism:
        return builtin_record("llm_greedy")
    path = Path(config.mechanism)
    if path.suffix == ".py" and path.exists():
        from checkpoints.run_folder import write_atomic
        from mechanisms.base import MechanismSpec
        from nodes.mechanism_calls import mechanism_record

        spec = MechanismSpec.from_source(path.read_text(), origin="generated")
        record = mechanism_record(spec.name, "generated", spec.source, target=spec.target)
        folder = Ledger(Path(config.run_dir)).mechanism_dir(record["id"].replace("@", "-"))
        write_atomic(folder / "source.py", spec.source)
        record["path"] = str((folder / "source.py").relative_to(config.run_dir))
        return record
    if path.suffix == ".json" and path.exists():  # a run's mechanisms/<id>/record.json: a kept built-in or composed one
        return recorded_builtin(path)
    return builtin_record(config.mechanism)


def recorded_builtin(path: Path) -> MechanismRecord:
    """A built-in or composed mechanism as a run recorded it (its name and parameters); a generated one starts from
    the source.py beside its record instead (a module path: it runs in the sandbox)."""
    import json

    data = json.loads(path.read_text())
    if data.get("origin") not in ("builtin", "composed"):
        raise ValueError(f"{path} records a {data.get('origin')} mechanism: start it from its source.py")
    return builtin_record(data["name"], data.get("params") or None)


def llm_settings(config: RunConfig) -> LLMSettings:
    return LLMSettings.resolve(
        model=config.model, base_url=config.base_url, seed=config.seed, max_tokens=config.llm_max_tokens
    )


def execute(
    config: RunConfig, *, llm: BaseChatModel | None = None, executor: Executor | None = None, inner_only: bool = False
) -> dict[str, Any]:
    """Run (or resume) the run that `config` describes until it ends; return the final state."""
    check_sandbox(config, inner_only)
    run_dir = Path(config.run_dir)
    ledger = Ledger(run_dir)
    if not (run_dir / "run.json").exists():
        config.started = config.started or time.time()
        config.save()
    with ExitStack() as stack:
        saver = stack.enter_context(open_checkpointer(run_dir))
        if llm is None:
            llm, description = stack.enter_context(
                open_chat_model(llm_settings(config), server_log=run_dir / "llm_server.log")
            )
        else:
            description = getattr(llm, "description", None) or type(llm).__name__
        ledger.event("run_start", level=config.level, llm=description, inner_only=inner_only, executor=config.executor)
        if config.unsafe_no_sandbox:
            ledger.event("unsafe_no_sandbox", needs=sandbox_needs(config, inner_only), sandbox=jail.unavailable())
        ctx = make_context(config, ledger, llm, restore_budget(config, ledger), executor or executor_for(config))
        ctx.proposal_style = resolve_proposal_style(config, llm)
        if resolve_overlap(config):
            ctx.pipeline = TrialPipeline(ctx.executor, config.parallel or (None if config.executor == "ray" else 1))
            stack.callback(ctx.pipeline.close)
        if executor is None and not is_surrogate(config):  # the real trainer: build the data before the first trial
            ctx.split_sha256 = prepare_data(config)
        total = config.iterations + 1
        if inner_only:
            propose, decide = start_mechanisms(config)
            graph = inner_graph_for(propose, decide, run_dir).compile(checkpointer=saver)
            run_config: RunnableConfig = {"configurable": {"thread_id": "inner"}, "recursion_limit": RECURSION_LIMIT}
            snapshot = graph.get_state(run_config)
            fresh = not (pending(snapshot) or snapshot.values)
            inner_start = initial_inner_state(ctx.space, total, decide=decide) if fresh else None
            if finished(snapshot):
                return dict(snapshot.values)
            final = graph.invoke(inner_start, run_config, context=ctx, durability=DURABILITY)
        else:
            outer_ctx = OuterContext(
                inner=ctx,
                level=config.level,
                segment=config.segment,
                generate_mode=resolve_generate_mode(config),
                checkpointer=saver,
            )
            outer_ctx.inner_graph_mermaid = (
                build_inner_graph(builtin_mechanism("llm_greedy")).compile().get_graph().draw_mermaid()
            )
            outer_graph = build_outer_graph().compile(checkpointer=saver, name="bilevel")
            run_config = {"configurable": {"thread_id": "outer"}, "recursion_limit": RECURSION_LIMIT}
            snapshot = outer_graph.get_state(run_config)
            if finished(snapshot):
                return dict(snapshot.values)
            outer_start = (
                None
                if pending(snapshot)
                else initial_outer_state(
                    initial_inner_state(ctx.space, 0, decide=start_mechanisms(config)[1]),
                    start_mechanisms(config)[0],
                    config.level,
                    total,
                )
            )
            final = outer_graph.invoke(outer_start, run_config, context=outer_ctx, durability=DURABILITY)
        ledger.event("run_end", llm_budget=ctx.budget.summary(), stop_reason=final.get("stop_reason"))
        write_json_atomic(run_dir / "summary.json", summary(final, ctx.budget.summary(), inner_only, config.executor))
        return dict(final)


class DataError(RuntimeError):
    """The corpus could not be prepared; the message is the preparer's own."""


def prepare_data(config: RunConfig) -> str:
    """Tokenize the corpus (cached after the first time) and return the split's sha256, the run's reference."""
    cmd = [sys.executable, "-m", "gpt.prepare", "--corpus", config.corpus]
    if config.vocab_size is not None:
        cmd += ["--vocab-size", str(config.vocab_size)]
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    match = re.search(r"^split_sha256: ([0-9a-f]{64})$", done.stdout, re.M)
    if done.returncode != 0 or not match:
        raise DataError(f"preparing corpus {config.corpus!r} failed: {done.stderr.strip() or done.stdout.strip()}")
    return match.group(1)


def is_surrogate(config: RunConfig) -> bool:
    return config.executor.startswith("surrogate:")


def executor_for(config: RunConfig) -> Executor:
    """The executor that `--executor` names: where the train node's trials run. "surrogate:PATH" serves val_bpb
    from a model fitted on the real samples at PATH (the ablation's stand-in trainer, labelled as such)."""
    if is_surrogate(config):
        from trials.surrogate import SurrogateExecutor

        surrogate = SurrogateExecutor.load(Path(config.executor.split(":", 1)[1]))
        if abs(surrogate.model.budget_s - config.budget_s) > 1e-9:
            raise ValueError(
                f"{surrogate.label} models trainings of {surrogate.model.budget_s:g} s: "
                f"run it with --budget-s {surrogate.model.budget_s:g}"
            )
        return surrogate
    if config.executor == "ray":
        from trials.ray_executor import RayExecutor

        return RayExecutor(config.ray_address or "auto", parallel=config.parallel, warm=config.warm_worker)
    return LocalExecutor(parallel=config.parallel or 1, warm=config.warm_worker)


def sandbox_needs(config: RunConfig, inner_only: bool) -> list[str]:
    """What in this run executes LLM-written code, which runs only inside the OS sandbox (mechanisms/jail.py)."""
    needs = []
    if config.mode == "code" and not is_surrogate(config):
        needs.append("--mode code (the LLM edits train.py)")
    if not inner_only and config.level in ("2", "1+2") and resolve_generate_mode(config) == "generate":
        needs.append("generate mode (the LLM writes mechanisms)")
    if config.mechanism and Path(config.mechanism).suffix == ".py":
        needs.append(f"--mechanism {config.mechanism} (a mechanism module)")
    return needs


def check_sandbox(config: RunConfig, inner_only: bool) -> None:
    """Refuse to start a run that needs the sandbox where none can start, unless --unsafe-no-sandbox (then loudly)."""
    jail.set_unsafe(config.unsafe_no_sandbox)
    needs = sandbox_needs(config, inner_only)
    if config.unsafe_no_sandbox:
        print(
            "WARNING --unsafe-no-sandbox: LLM-written code (" + ("; ".join(needs) or "none in this run") + ") runs "
            "WITHOUT the OS sandbox, as this user, with this user's files and network; recorded in run.json, the "
            "trace and the report",
            file=sys.stderr,
        )
    elif needs:
        jail.require("; ".join(needs))


def resolve_generate_mode(config: RunConfig) -> str:
    if config.generate_mode != "auto":
        return config.generate_mode
    return "compose" if llm_settings(config).embedded else "generate"


def resolve_overlap(config: RunConfig) -> bool:
    """Whether trials start as they are proposed (`trials/pipeline.py`). Auto: with a batch to overlap, where the
    LLM does not share the trainer's cores — a remote endpoint, a GPU trainer, a Ray cluster; never on the
    surrogate (nothing to wait for) or next to the embedded model on a CPU trainer (the budget would measure it)."""
    if config.overlap != "auto":
        return config.overlap == "on"
    if config.batch < 2 or is_surrogate(config):
        return False
    return not llm_settings(config).embedded or config.device == "cuda" or config.executor == "ray"


def resolve_proposal_style(config: RunConfig, llm: BaseChatModel) -> str:
    """The proposal schema: enumerated steps for the embedded model (every answer valid), free values otherwise."""
    if config.proposal_style != "auto":
        return config.proposal_style
    return "values" if model_name(llm) == MODEL_ALIAS else "free"


def summary(final: dict[str, Any], budget: dict[str, Any], inner_only: bool, executor: str = "local") -> dict[str, Any]:
    inner = final if inner_only else final.get("inner", {})
    experiments = inner.get("experiments", [])
    baseline = experiments[0]["val_bpb"] if experiments and experiments[0]["status"] != "crash" else None
    best = inner.get("best_bpb")
    return {
        "executor": executor,
        # val_bpb served by a model fitted on real trainings: nothing of this run was trained
        "surrogate": executor.startswith("surrogate:"),
        "experiments": len(experiments),
        "baseline_bpb": baseline,
        "best_bpb": best,
        "best_id": inner.get("best_id"),
        "delta_bpb": (best - baseline) if best is not None and baseline is not None else None,
        "kept": sum(e["status"] == "keep" for e in experiments[1:]),
        "crashes": sum(e["status"] == "crash" for e in experiments),
        "proposal_sources": dict(Counter(str(e.get("proposal_source") or "unknown") for e in experiments[1:])),
        "llm": budget,
        "stop_reason": final.get("stop_reason"),
        "segments": final.get("segments", []),
        "history": final.get("history", []),
    }
