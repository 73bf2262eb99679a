"""A run: its settings (run.json), its folder, and the runtime context built from them — the same for a new run
and for a resumed one, so a resume rebuilds exactly what was running."""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from checkpoints.run_folder import Ledger, write_atomic, write_json_atomic
from llm.structured import LLMBudget
from mechanisms.space import SearchSpace
from nodes.context import InnerContext
from nodes.state import InnerState, MechanismRecord
from trials.launcher import TRAIN_PATH, Executor, LocalExecutor, TrainerSettings

TRAINING = TrainerSettings()  # the training settings' defaults, declared once (trials/launcher.py)


@dataclass
class RunConfig:
    """Everything that defines a run; saved as run.json, read back by `resume`. The one declaration of a run's
    settings and their defaults (the training ones taken from TrainerSettings): the command lines, the ablation's spec
    and the graphs' contexts derive theirs from it (`run_defaults`)."""

    run_dir: str
    level: str = "2"  # "1" | "1.5" | "2" | "1+2" — or a group A/B/C/D, mapped by `level_of_group`
    iterations: int = 12  # experiments after the baseline
    segment: int = 4  # inner iterations per outer cycle
    budget_s: float = TRAINING.budget_s
    device: str = TRAINING.device
    corpus: str = TRAINING.corpus
    vocab_size: int | None = TRAINING.vocab_size
    eval_tokens: int | None = TRAINING.eval_tokens
    seed: int = TRAINING.seed
    mode: str = "params"
    batch: int = 1  # proposals per inner iteration, trained in parallel by the executor
    executor: str = "local"  # "local" (child processes here) | "ray" (a Ray cluster: docs/ray.md) | "surrogate:PATH"
    ray_address: str | None = None  # for "ray": "auto" (default), "host:6379", "ray://host:10001"
    parallel: int | None = None  # trials in flight at once; None: 1 locally, as many as the cluster admits on Ray
    warm_worker: bool = True  # local parameter-mode trials fork from a warm worker (torch and data loaded once)
    overlap: str = "auto"  # "on" | "off" | "auto": trials start as they are proposed (runner.resolve_overlap)
    model: str | None = None
    base_url: str | None = None
    max_llm_calls: int | None = None
    max_llm_tokens: int | None = None
    llm_attempts: int = 3  # answers asked for per structured call before its recorded fallback
    llm_max_tokens: int | None = None  # the longest answer asked for (None: the embedded cap, the provider's default)
    proposal_style: str = "auto"  # "values" | "free" | "moves" | "auto" (values for the embedded model)
    noise_margin: float = 0.0
    mechanism: str | None = None  # a built-in name or a path: the inner loop starts with it
    generate_mode: str = "auto"  # "compose" | "generate" | "auto" (compose for the embedded model)
    time_limit_s: float | None = None
    kill_after_s: float | None = TRAINING.kill_after_s
    unsafe_no_sandbox: bool = False  # LLM-written code runs without the OS sandbox (--unsafe-no-sandbox)
    started: float = 0.0

    def save(self) -> None:
        write_json_atomic(Path(self.run_dir) / "run.json", dataclasses.asdict(self))

    @classmethod
    def load(cls, run_dir: Path) -> RunConfig:
        path = Path(run_dir) / "run.json"
        if not path.exists():
            raise FileNotFoundError(f"{run_dir} is not a run folder (no run.json)")
        data = json.loads(path.read_text())
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def trainer(self) -> TrainerSettings:
        return TrainerSettings(
            budget_s=self.budget_s,
            device=self.device,
            corpus=self.corpus,
            vocab_size=self.vocab_size,
            eval_tokens=self.eval_tokens,
            seed=self.seed,
            kill_after_s=self.kill_after_s,
            sandbox=self.mode == "code" and not self.unsafe_no_sandbox,  # an LLM-edited train.py
        )


def run_defaults() -> dict[str, Any]:
    """Each setting's default, as RunConfig declares it."""
    return {f.name: f.default for f in dataclasses.fields(RunConfig) if f.default is not dataclasses.MISSING}


def new_run_dir(root: Path, label: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = Path(root) / f"{stamp}-{label}"
    n = 1
    while path.exists():
        n += 1
        path = Path(root) / f"{stamp}-{label}-{n}"
    return path


def base_source(run_dir: Path) -> str:
    """The run's own copy of train.py, taken when the run started: editing gpt/train.py later changes nothing here."""
    path = Path(run_dir) / "base_train.py"
    if not path.exists():
        write_atomic(path, TRAIN_PATH.read_text())
    return path.read_text()


def restore_budget(config: RunConfig, ledger: Ledger) -> LLMBudget:
    """The LLM budget with what the trace says was already spent (a resumed run does not get a fresh budget)."""
    budget = LLMBudget(max_calls=config.max_llm_calls, max_tokens=config.max_llm_tokens)
    for event in ledger.events("llm_call"):
        budget.calls += 1
        budget.charge(int(event.get("prompt_tokens") or 0), int(event.get("completion_tokens") or 0))
    return budget


def make_context(
    config: RunConfig, ledger: Ledger, llm: Any, budget: LLMBudget, executor: Executor | None = None
) -> InnerContext:
    source = base_source(Path(config.run_dir))
    deadline = config.started + config.time_limit_s if config.time_limit_s else None
    return InnerContext(
        ledger=ledger,
        space=SearchSpace.from_train_source(source),
        base_source=source,
        trainer=config.trainer(),
        llm=llm,
        budget=budget,
        executor=executor or LocalExecutor(),
        mode=config.mode,
        batch=config.batch,
        noise_margin=config.noise_margin,
        seed=config.seed,
        deadline=deadline,
        llm_attempts=config.llm_attempts,
    )


def initial_inner_state(space: SearchSpace, stop_at: int, decide: MechanismRecord | None = None) -> InnerState:
    return InnerState(
        iteration=0,
        stop_at=stop_at,
        experiments=[],
        incumbent=space.defaults(),
        incumbent_id=None,
        best_bpb=None,
        best_id=None,
        batch=[],
        outcomes=[],
        settings={"strategy": "explore", "frozen": [], "guidance": ""},
        mechanisms={"decide": decide} if decide else {},
        stop_reason=None,
    )
