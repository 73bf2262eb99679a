"""The mechanism contract: the read-only view a mechanism sees, the shapes it returns, specs and built-ins.

A mechanism is a module (source text) declaring ``NAME``, ``TARGET`` ("propose" or "decide") and an entry function
named after ``TARGET`` that takes the view. Built-ins may also declare ``PARAMS``: a literal dict
``{name: {"kind", "low", "high", "choices", "log", "default"}}``; the composed values reach the entry as
``view.params``. All randomness comes from ``view.rng``, all memory from ``view.trace``.

View payload (JSON; what the nodes build and what the sandbox child receives)::

    {"trace": [record, ...], "space": SearchSpace.to_dict(), "incumbent": {NAME: value}, "best_bpb": float | None,
     "iteration": int, "seed": int, "settings": {...}, "params": {...}, "result": record | None}
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from mechanisms.space import MAX_CHANGES, Param, SearchSpace, SpaceError

TARGETS = ("propose", "decide")
ORIGINS = ("builtin", "composed", "generated")
# Composable built-ins: offered to the outer loop's compose mode, held to the generated-code policy and the 1-3 rule.
BUILTIN_NAMES = ("llm_greedy", "tabu", "bandit", "doe", "annealing", "stagnation")
# Baselines of the ablation: trusted code in process (TPE uses optuna), started with --mechanism, never offered to the
# outer loop; random search, TPE and CMA-ES propose whole configurations (their modules declare MAX_CHANGES = None);
# centaur is CMA-ES with every third proposal the LLM's.
BASELINE_NAMES = ("random_search", "tpe", "local_search", "cma_es", "centaur")
ALL_BUILTIN_NAMES = BUILTIN_NAMES + BASELINE_NAMES
PROPOSAL_KEYS = frozenset({"changes", "hypothesis", "expected_direction", "edits"})
DECISION_KEYS = frozenset({"keep", "reason"})

AskLLM = Callable[[str, "Mapping[str, Any] | None"], dict[str, Any]]
Entry = Callable[["MechanismView"], dict[str, Any]]


class MechanismError(ValueError):
    """A malformed mechanism source, spec or built-in parameter set."""


def freeze(value: Any) -> Any:
    """A read-only deep copy: mappings become ``MappingProxyType``, lists and tuples become tuples."""
    if isinstance(value, Mapping):
        return MappingProxyType({k: freeze(v) for k, v in value.items()})
    if isinstance(value, list | tuple):
        return tuple(freeze(v) for v in value)
    return value


def thaw(value: Any) -> Any:
    """The JSON-ready inverse of ``freeze``: mappings become dicts, tuples become lists."""
    if isinstance(value, Mapping):
        return {k: thaw(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(v) for v in value]
    return value


def view_seed(run_seed: int, iteration: int, salt: str = "") -> int:
    """The view's RNG seed, derived from the run seed and the iteration (stable across processes)."""
    digest = hashlib.sha256(f"{run_seed}:{iteration}:{salt}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


@dataclass(frozen=True)
class MechanismView:
    """What a mechanism sees. Read-only except ``rng``, the only source of randomness."""

    trace: tuple[Mapping[str, Any], ...]
    space: SearchSpace
    incumbent: Mapping[str, Any]
    best_bpb: float | None
    iteration: int
    rng: random.Random
    settings: Mapping[str, Any]
    ask_llm: Callable[..., dict[str, Any]]
    params: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    result: Mapping[str, Any] | None = None
    seed: int = 0

    @classmethod
    def from_payload(cls, payload: Mapping[str, Any], ask_llm: AskLLM) -> MechanismView:
        """Build a view from a JSON payload; ``ask_llm(guidance, constraints)`` answers the mechanism's requests."""

        def ask(guidance: str = "", constraints: Mapping[str, Any] | None = None) -> dict[str, Any]:
            return ask_llm(str(guidance), None if constraints is None else thaw(constraints))

        space = SearchSpace.from_dict(payload["space"])
        seed = int(payload.get("seed", 0))
        result = payload.get("result")
        return cls(
            trace=tuple(freeze(r) for r in payload.get("trace", ())),
            space=space,
            incumbent=freeze({**space.defaults(), **payload.get("incumbent", {})}),
            best_bpb=payload.get("best_bpb"),
            iteration=int(payload.get("iteration", 0)),
            rng=random.Random(seed),
            settings=freeze(payload.get("settings", {})),
            ask_llm=ask,
            params=freeze(payload.get("params", {})),
            result=None if result is None else freeze(result),
            seed=seed,
        )

    @property
    def frozen(self) -> tuple[str, ...]:
        """Names frozen by the space's declaration or by the Level 1.5 settings."""
        extra = set(self.settings.get("frozen", ()))
        return tuple(p.name for p in self.space if p.frozen or p.name in extra)

    @property
    def free_names(self) -> tuple[str, ...]:
        return self.space.free_names(self.settings.get("frozen", ()))

    def check_changes(self, changes: Any, max_changes: int | None = MAX_CHANGES) -> list[str]:
        """Errors of ``changes`` against the incumbent and the frozen names; empty when admissible."""
        return self.space.check_changes(changes, self.incumbent, self.frozen, max_changes)


def view_payload(
    *,
    trace: list[Mapping[str, Any]],
    space: SearchSpace,
    incumbent: Mapping[str, Any],
    best_bpb: float | None,
    iteration: int,
    seed: int,
    settings: Mapping[str, Any] | None = None,
    params: Mapping[str, Any] | None = None,
    result: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The JSON payload ``MechanismView.from_payload`` and the sandbox child read."""
    return {
        "trace": thaw(list(trace)),
        "space": space.to_dict(),
        "incumbent": thaw(incumbent),
        "best_bpb": best_bpb,
        "iteration": iteration,
        "seed": seed,
        "settings": thaw(settings or {}),
        "params": thaw(params or {}),
        "result": None if result is None else thaw(result),
    }


def check_proposal(proposal: Any, view: MechanismView, max_changes: int | None = MAX_CHANGES) -> list[str]:
    """Errors of a ``propose`` output: its shape, then its changes against the view's space and incumbent."""
    if not isinstance(proposal, Mapping):
        return [f"a proposal is a mapping, got {type(proposal).__name__}"]
    errors = [f"unexpected key {k!r} in proposal" for k in proposal if k not in PROPOSAL_KEYS]
    for key in ("hypothesis", "expected_direction"):
        if not isinstance(proposal.get(key), str):
            errors.append(f"proposal[{key!r}] must be a string")
    if "changes" not in proposal:
        return [*errors, "proposal has no 'changes'"]
    edits = proposal.get("edits")
    if edits:  # code mode: search/replace edits of train.py, checked by the trainer's guard before anything runs
        if not (
            isinstance(edits, list | tuple)
            and all(
                isinstance(e, Mapping)
                and set(e) == {"search", "replace"}
                and all(isinstance(v, str) for v in e.values())
                for e in edits
            )
        ):
            return [*errors, "proposal['edits'] must be a list of {'search': str, 'replace': str}"]
        if not proposal["changes"]:
            return errors
    return errors + view.check_changes(proposal["changes"], max_changes)


def check_decision(decision: Any) -> list[str]:
    """Errors of a ``decide`` output: ``{"keep": bool, "reason": non-empty str}`` and nothing else."""
    if not isinstance(decision, Mapping):
        return [f"a decision is a mapping, got {type(decision).__name__}"]
    errors = [f"unexpected key {k!r} in decision" for k in decision if k not in DECISION_KEYS]
    if not isinstance(decision.get("keep"), bool):
        errors.append("decision['keep'] must be a bool")
    reason = decision.get("reason")
    if not (isinstance(reason, str) and reason.strip()):
        errors.append("decision['reason'] must be a non-empty string")
    return errors


def check_output(output: Any, target: str, view: MechanismView) -> list[str]:
    return check_proposal(output, view) if target == "propose" else check_decision(output)


def declared_header(source: str) -> tuple[str, str]:
    """``(NAME, TARGET)`` of a mechanism source, read from its module-level string assignments."""
    try:
        tree = ast.parse(source)
    except SyntaxError as exc:
        raise MechanismError(f"syntax error at line {exc.lineno}: {exc.msg}") from exc
    found: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            if node.targets[0].id in ("NAME", "TARGET") and isinstance(node.value, ast.Constant):
                found[node.targets[0].id] = node.value.value
    name, target = found.get("NAME"), found.get("TARGET")
    if not (isinstance(name, str) and name.isidentifier()):
        raise MechanismError("the module must declare NAME = '<identifier>'")
    if target not in TARGETS:
        raise MechanismError(f"the module must declare TARGET as one of {TARGETS}")
    return name, target


@dataclass(frozen=True)
class MechanismSpec:
    """A mechanism as recorded in state: the source that runs, its hash, where it came from, its parameters."""

    name: str
    target: str
    source: str
    sha256: str
    origin: str
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.origin not in ORIGINS:
            raise MechanismError(f"origin must be one of {ORIGINS}, got {self.origin!r}")
        if hashlib.sha256(self.source.encode()).hexdigest() != self.sha256:
            raise MechanismError(f"sha256 does not match the source of {self.name}")
        if declared_header(self.source) != (self.name, self.target):
            raise MechanismError("name/target do not match the source's NAME/TARGET")

    @classmethod
    def from_source(
        cls, source: str, origin: str = "generated", params: Mapping[str, Any] | None = None
    ) -> MechanismSpec:
        name, target = declared_header(source)
        digest = hashlib.sha256(source.encode()).hexdigest()
        return cls(name, target, source, digest, origin, dict(params or {}))

    @property
    def id(self) -> str:
        """``name@sha8``: how the trace names the mechanism that made a record."""
        return f"{self.name}@{self.sha256[:8]}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MechanismSpec:
        return cls(
            **{k: data[k] for k in ("name", "target", "source", "sha256", "origin")},
            params=dict(data.get("params", {})),
        )


# ---- built-in registry ----


@dataclass(frozen=True)
class BuiltinInfo:
    name: str
    target: str
    summary: str
    schema: SearchSpace | None

    def to_dict(self) -> dict[str, Any]:
        params = [] if self.schema is None else self.schema.to_dict()["params"]
        return {"name": self.name, "target": self.target, "summary": self.summary, "params": params}


def _builtin_module(name: str) -> Any:
    if name not in ALL_BUILTIN_NAMES:
        raise MechanismError(f"unknown built-in {name!r}; one of {', '.join(ALL_BUILTIN_NAMES)}")
    return importlib.import_module(f"mechanisms.builtin.{name}")


def proposal_cap(name: str, origin: str) -> int | None:
    """How many parameters one proposal may change: a built-in module's ``MAX_CHANGES`` (None: a whole
    configuration), the 1-3 rule for everything else (a generated module cannot lift it)."""
    if origin not in ("builtin", "composed"):
        return MAX_CHANGES
    cap = getattr(_builtin_module(name), "MAX_CHANGES", MAX_CHANGES)
    return None if cap is None else int(cap)


def builtin_info(name: str) -> BuiltinInfo:
    module = _builtin_module(name)
    declared = getattr(module, "PARAMS", {})
    schema = (
        SearchSpace(tuple(Param(name=k, **{**v, "choices": tuple(v.get("choices", ()))}) for k, v in declared.items()))
        if declared
        else None
    )
    summary = (module.__doc__ or "").strip().splitlines()[0] if module.__doc__ else name
    return BuiltinInfo(module.NAME, module.TARGET, summary, schema)


def builtin_catalog() -> list[dict[str, Any]]:
    """Every built-in with its target, one-line summary and parameter schema (for the outer loop's compose mode)."""
    return [builtin_info(name).to_dict() for name in BUILTIN_NAMES]


def resolve_params(name: str, params: Mapping[str, Any]) -> dict[str, Any]:
    """Defaults of a built-in's schema overridden by ``params`` (strings coerced); raises MechanismError."""
    schema = builtin_info(name).schema
    if schema is None:
        if params:
            raise MechanismError(f"{name} takes no parameters, got {sorted(params)}")
        return {}
    try:
        values = {k: schema.coerce(k, v) for k, v in params.items()}
    except SpaceError as exc:
        raise MechanismError(f"{name}: {exc}") from exc
    errors = schema.check_values(values)
    if errors:
        raise MechanismError(f"{name}: " + "; ".join(errors))
    return {**schema.defaults(), **values}


def builtin_source(name: str) -> str:
    return Path(_builtin_module(name).__file__).read_text(encoding="utf-8")


# Module paths of earlier layouts, as a built-in's source named them (now -> then). A run records the sha256 of each
# built-in's source; a source that differs from the recorded one only by a moved module path is the same mechanism.
RENAMED_MODULES = {"mechanisms.builtin.": "mechanisms."}


def builtin_sha256s(name: str) -> set[str]:
    """The sha256 of the built-in's source, and of the same source with the module paths of earlier layouts."""
    source = builtin_source(name)
    variants = {source} | {source.replace(now, then) for now, then in RENAMED_MODULES.items()}
    return {hashlib.sha256(v.encode()).hexdigest() for v in variants}


def builtin_spec(name: str, **params: Any) -> MechanismSpec:
    """The spec of a built-in: origin "builtin" with its defaults, "composed" when parameters are given."""
    resolved = resolve_params(name, params)
    return MechanismSpec.from_source(builtin_source(name), "composed" if params else "builtin", resolved)


def load_builtin(name: str, **params: Any) -> Entry:
    """The built-in's entry function with ``params`` (validated, defaults filled) placed in ``view.params``."""
    module = _builtin_module(name)
    resolved = freeze(resolve_params(name, params))
    entry = getattr(module, module.TARGET)

    def run(view: MechanismView) -> dict[str, Any]:
        return entry(dataclasses.replace(view, params=resolved))

    run.__name__ = f"{name}_{module.TARGET}"
    return run
