"""The search space: parsed from the constants block of gpt/train.py, the single declaration of what may change.

Each line of the block is ``NAME = literal  # kind [bounds or choices] [log] [frozen] [; what it means]`` with kinds
``int``, ``float``, ``choice`` and ``bool``; the text after the first ``;`` is a short human comment (the prompts reuse
it). The grammar is gpt/constants.py, the one the training process and the candidate builder read too. Every name a
mechanism or the LLM uses is checked against this space, so keys always match the real parameter names.
"""

from __future__ import annotations

import difflib
import math
import random
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from gpt import constants
from gpt.constants import KINDS

MAX_CHANGES = 3
LOG_FACTORS = (0.5, 0.7, 1.4, 2.0)  # one-parameter steps of a log-scale numeric (see SearchSpace.steps)
GRID_STEPS = (-2, -1, 1, 2)  # ... and of a linear one, in grid steps
GROUP_ORDER = ("architecture", "optimisation", "schedule", "batch", "other")
# First matching rule wins; a name matches a rule when one of its "_"-separated tokens is in the rule's set.
_GROUP_RULES: tuple[tuple[str, frozenset[str]], ...] = (
    ("schedule", frozenset({"WARMUP", "WARMDOWN", "COOLDOWN", "FINAL", "SCHEDULE", "ANNEAL", "DECAY_STEPS"})),
    (
        "optimisation",
        frozenset(
            {
                "LR",
                "OPTIMIZER",
                "OPTIMISER",
                "WEIGHT",
                "DECAY",
                "BETA",
                "BETA1",
                "BETA2",
                "BETAS",
                "MOMENTUM",
                "EPS",
                "ADAM",
                "ADAMW",
                "MUON",
                "CLIP",
                "GRAD",
                "NS",
                "NESTEROV",
            }
        ),
    ),
    ("batch", frozenset({"BATCH", "TOKENS", "SEQ", "ACCUM", "MICRO", "CONTEXT"})),
    (
        "architecture",
        frozenset(
            {
                "DEPTH",
                "ASPECT",
                "HEAD",
                "HEADS",
                "EMBD",
                "EMBED",
                "EMBEDDING",
                "DIM",
                "WIDTH",
                "LAYER",
                "LAYERS",
                "WINDOW",
                "VOCAB",
                "MLP",
                "SOFTCAP",
                "KV",
                "ROPE",
                "VALUE",
                "DROPOUT",
                "NORM",
            }
        ),
    ),
)


class SpaceError(ValueError):
    """A malformed constants block, an unknown name or a value that cannot be read as its parameter's kind."""


def group_of(name: str) -> str:
    """The parameter group of a name, derived deterministically from its tokens (see ``_GROUP_RULES``)."""
    tokens = set(name.upper().split("_"))
    for group, keys in _GROUP_RULES:
        if tokens & keys:
            return group
    return "other"


def eval_expression(text: str) -> Any:
    """Evaluate a literal or a simple arithmetic expression (``2**14``, ``1 << 13``, ``3e-4``, ``-1``, ``"muon"``,
    ``True``) by the grammar of the constants block."""
    try:
        return constants.evaluate(text)
    except constants.BlockError as exc:
        raise SpaceError(str(exc)) from None


_is_number = constants.is_number
_same = constants.same


@dataclass(frozen=True)
class Param:
    """One tunable constant. ``low``/``high`` for int and float, ``choices`` for choice; ``log`` scales numerics."""

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()
    log: bool = False
    frozen: bool = False
    default: Any = None
    multiple_of: tuple[str, ...] = ()  # int only: the value is a multiple of these (integer) parameters' product
    doc: str = ""  # what the parameter means, in a few words (the human part of its declaration)
    declared_group: str = ""  # a group named by the space's author; empty: the group its name implies (group_of)

    def __post_init__(self) -> None:
        errors = _param_errors(self)
        if errors:
            raise SpaceError(f"{self.name}: " + "; ".join(errors))

    @property
    def group(self) -> str:
        return self.declared_group or group_of(self.name)

    def type_error(self, value: Any) -> str | None:
        """Why ``value`` is not of this parameter's kind, or None."""
        return constants.type_problem(self.name, self.kind, value)

    def range_error(self, value: Any) -> str | None:
        """Why a value of the right kind lies outside this parameter's bounds or choices, or None."""
        domain = (self.low, self.high) if self.kind in ("int", "float") else self.choices
        return constants.range_problem(self.name, self.kind, domain, value)

    def to_unit(self, value: Any) -> float:
        """Position of ``value`` in [0, 1]: log-aware for numerics, index for choices, 0/1 for bools."""
        if self.kind == "bool":
            return 1.0 if value else 0.0
        if self.kind == "choice":
            index = next((i for i, c in enumerate(self.choices) if _same(value, c)), 0)
            return index / (len(self.choices) - 1) if len(self.choices) > 1 else 0.0
        low, high, v = float(self.low), float(self.high), float(value)  # type: ignore[arg-type]
        if high == low:
            return 0.0
        if self.log:
            low, high, v = math.log(low), math.log(high), math.log(max(v, float(self.low)))  # type: ignore[arg-type]
        return min(1.0, max(0.0, (v - low) / (high - low)))

    def from_unit(self, unit: float) -> Any:
        """The numeric value at position ``unit`` in [0, 1] (ints rounded); the inverse of ``to_unit``."""
        unit = min(1.0, max(0.0, unit))
        low, high = float(self.low), float(self.high)  # type: ignore[arg-type]
        if self.log:
            value = math.exp(math.log(low) + unit * (math.log(high) - math.log(low)))
        else:
            value = low + unit * (high - low)
        if self.kind == "int":
            return int(min(high, max(low, round(value))))
        return min(high, max(low, float(f"{value:.12g}")))


def _tuples(p: Mapping[str, Any]) -> dict[str, Any]:
    """A parameter's dict (from `to_dict`) with its sequences as the tuples `Param` holds."""
    return {**p, "choices": tuple(p.get("choices", ())), "multiple_of": tuple(p.get("multiple_of", ()))}


def _integral(p: Param) -> bool:
    """An int parameter, or a choice among ints."""
    return p.kind == "int" or (p.kind == "choice" and all(type(c) is int for c in p.choices))


def _param_errors(p: Param) -> list[str]:
    if not p.name.isidentifier():
        return [f"not an identifier: {p.name!r}"]
    if p.kind not in KINDS:
        return [f"unknown kind {p.kind!r} (one of {', '.join(KINDS)})"]
    errors: list[str] = []
    if p.multiple_of and p.kind != "int":
        errors.append("multiple_of applies to int parameters only")
    if p.kind in ("int", "float"):
        if not (_is_number(p.low) and _is_number(p.high)):
            return ["needs numeric bounds [low, high]"]
        if p.kind == "int" and not (isinstance(p.low, int) and isinstance(p.high, int)):
            errors.append("int bounds must be ints")
        if p.low > p.high:  # type: ignore[operator]
            errors.append(f"low {p.low} > high {p.high}")
        if p.log and p.low <= 0:  # type: ignore[operator]
            errors.append("log scale needs low > 0")
        if p.choices:
            errors.append("numeric parameters take bounds, not choices")
    else:
        if p.low is not None or p.high is not None:
            errors.append(f"{p.kind} parameters take no numeric bounds")
        if p.log:
            errors.append("log applies to int and float only")
    if p.kind == "choice":
        if not p.choices:
            errors.append("choice needs a non-empty list of choices")
        elif len(set(map(repr, p.choices))) != len(p.choices):
            errors.append("duplicate choices")
        if not all(isinstance(c, int | float | str | bool) for c in p.choices):
            errors.append("choices must be str, int, float or bool literals")
    if p.kind == "bool" and p.choices:
        errors.append("bool takes no choices")
    if errors:
        return errors
    wrong = p.type_error(p.default) or p.range_error(p.default)
    return [f"default: {wrong}"] if wrong else []


@dataclass(frozen=True)
class SearchSpace:
    """An ordered tuple of parameters with the checks and geometry the mechanisms need."""

    params: tuple[Param, ...]
    _index: Mapping[str, Param] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        index: dict[str, Param] = {}
        for p in self.params:
            if p.name in index:
                raise SpaceError(f"duplicate parameter {p.name}")
            index[p.name] = p
        if not index:
            raise SpaceError("empty search space")
        for p in self.params:
            bad = [n for n in p.multiple_of if n not in index or not _integral(index[n])]
            if bad:
                raise SpaceError(f"{p.name}: multiple_of names {bad}, which are not integer parameters of the space")
        object.__setattr__(self, "_index", index)

    # ---- construction and serialisation ----

    @classmethod
    def from_train_source(cls, text: str) -> SearchSpace:
        """Parse the hyperparameter block of a train.py source text."""
        try:
            declared = constants.parse_block(text)
        except constants.BlockError as exc:
            raise SpaceError(str(exc)) from None
        return cls(tuple(_param(c) for c in declared))

    def to_dict(self) -> dict[str, Any]:
        return {
            "params": [
                {
                    "name": p.name,
                    "kind": p.kind,
                    "low": p.low,
                    "high": p.high,
                    "choices": list(p.choices),
                    "log": p.log,
                    "frozen": p.frozen,
                    "default": p.default,
                    "multiple_of": list(p.multiple_of),
                    "doc": p.doc,
                    "declared_group": p.declared_group,
                }
                for p in self.params
            ]
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchSpace:
        try:
            return cls(tuple(Param(**_tuples(p)) for p in data["params"]))
        except (KeyError, TypeError) as exc:
            raise SpaceError(f"malformed search-space dict: {exc}") from exc

    # ---- lookup ----

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params)

    def __getitem__(self, name: str) -> Param:
        try:
            return self._index[name]
        except KeyError:
            raise SpaceError(self._unknown(name)) from None

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def __iter__(self) -> Iterator[Param]:
        return iter(self.params)

    def __len__(self) -> int:
        return len(self.params)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def free_names(self, frozen: Iterable[str] = ()) -> tuple[str, ...]:
        """Names neither declared frozen nor frozen by the settings, in declaration order."""
        extra = set(frozen)
        return tuple(p.name for p in self.params if not p.frozen and p.name not in extra)

    def groups(self, frozen: Iterable[str] = ()) -> dict[str, tuple[str, ...]]:
        """Free parameter names by group: the groups of ``GROUP_ORDER``, then declared ones in declaration order;
        empty groups left out."""
        free = [self[n] for n in self.free_names(frozen)]
        order = dict.fromkeys([*GROUP_ORDER, *(p.group for p in free)])
        out = {g: tuple(p.name for p in free if p.group == g) for g in order}
        return {g: names for g, names in out.items() if names}

    def _unknown(self, name: Any) -> str:
        lowered = {n.lower(): n for n in self.names}
        guess = lowered.get(str(name).lower()) or next(iter(difflib.get_close_matches(str(name), self.names, 1)), None)
        hint = f" (did you mean {guess}?)" if guess else ""
        return f"unknown parameter {name!r}{hint}; known: {', '.join(self.names)}"

    # ---- checks ----

    def check_values(self, values: Mapping[str, Any]) -> list[str]:
        """Errors for unknown names, wrong kinds and out-of-range values (no rules about how many change)."""
        errors = []
        for name, value in values.items():
            if name not in self:
                errors.append(self._unknown(name))
                continue
            p = self._index[name]
            wrong = p.type_error(value) or p.range_error(value)
            if wrong:
                errors.append(wrong)
        return errors

    def constraint_errors(self, config: Mapping[str, Any]) -> list[str]:
        """Errors of the rules between parameters (``multiple_of``) in a whole configuration."""
        found = (constants.multiple_problem(p.name, p.multiple_of, config) for p in self.params)
        return [f"{problem} (train.py refuses it)" for problem in found if problem]

    def repair(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """``config`` with each ``multiple_of`` parameter moved to the nearest (in log scale) multiple in its bounds;
        unchanged where there is nothing to repair or no multiple in bounds."""
        out = dict(config)
        for p in self.params:
            if not p.multiple_of or not all(n in out for n in (p.name, *p.multiple_of)):
                continue
            product = math.prod(out[n] for n in p.multiple_of)
            if not product or out[p.name] % product == 0:
                continue
            low, high = math.ceil(p.low / product), math.floor(p.high / product)
            if low > high:
                continue
            ratio = out[p.name] / product
            q = min(
                (max(low, min(high, c)) for c in (max(1, math.floor(ratio)), math.ceil(ratio))),
                key=lambda c: abs(math.log(c / ratio)),
            )
            out[p.name] = q * product
        return out

    def check_changes(
        self,
        changes: Any,
        incumbent: Mapping[str, Any],
        frozen: Iterable[str] = (),
        max_changes: int | None = MAX_CHANGES,
    ) -> list[str]:
        """Errors of a proposal's changes against the incumbent: empty list when the changes are admissible.
        ``max_changes`` caps how many parameters one proposal changes (None: no cap, a whole configuration)."""
        if not isinstance(changes, Mapping):
            return [f"changes must be a mapping of parameter name to value, got {type(changes).__name__}"]
        if not changes:
            return [f"no changes: propose 1 to {max_changes or len(self)} parameter changes"]
        errors = []
        if max_changes is not None and len(changes) > max_changes:
            errors.append(f"{len(changes)} changes: at most {max_changes} per proposal")
        extra = set(frozen)
        for name, value in changes.items():
            if name not in self:
                errors.append(self._unknown(name))
                continue
            p = self._index[name]
            wrong = p.type_error(value) or p.range_error(value)
            if wrong:
                errors.append(wrong)
            elif p.frozen or name in extra:
                errors.append(f"{name} is frozen")
            elif name in incumbent and _same(incumbent[name], value):
                errors.append(f"{name}={value!r} is the incumbent value (a no-op)")
        if not errors:
            errors = self.constraint_errors({**incumbent, **changes})
        return errors

    def coerce(self, name: str, value: Any) -> Any:
        """Read ``value`` (often a string from an LLM) as ``name``'s kind; raises SpaceError. Does not clamp."""
        p = self[name]
        if p.kind == "bool":
            return _coerce_bool(name, value)
        if p.kind == "choice":
            return _coerce_choice(p, value)
        number = eval_expression(value) if isinstance(value, str) else value
        if not _is_number(number):
            raise SpaceError(f"{name} takes a {p.kind}, got {value!r}")
        if p.kind == "int":
            if isinstance(number, float) and not number.is_integer():
                raise SpaceError(f"{name} takes an int, got {value!r}")
            return int(number)
        if not math.isfinite(number):
            raise SpaceError(f"{name} takes a finite float, got {value!r}")
        return float(number)

    # ---- geometry ----

    def normalise(self, params: Mapping[str, Any]) -> list[float]:
        """Each parameter's position in [0, 1] in declaration order (missing names read as the default)."""
        return [p.to_unit(params.get(p.name, p.default)) for p in self.params]

    def distance(self, a: Mapping[str, Any], b: Mapping[str, Any]) -> float:
        """Chebyshev distance in the unit cube: numerics by normalised difference, choice/bool 0 or 1 if different."""
        worst = 0.0
        for p in self.params:
            va, vb = a.get(p.name, p.default), b.get(p.name, p.default)
            if p.kind in ("int", "float"):
                worst = max(worst, abs(p.to_unit(va) - p.to_unit(vb)))
            elif not _same(va, vb):
                worst = 1.0
        return worst

    def apply(self, params: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
        """A full configuration: ``params`` (defaults filling gaps) with ``changes`` applied."""
        return {**self.defaults(), **params, **changes}

    def shift(self, name: str, value: Any, delta: float) -> Any:
        """Move a numeric value by ``delta`` in unit space (log-aware), clipped to the bounds."""
        p = self[name]
        if p.kind not in ("int", "float"):
            raise SpaceError(f"{name} is a {p.kind}: shift applies to int and float")
        return p.from_unit(p.to_unit(value) + delta)

    def sample(self, rng: random.Random) -> dict[str, Any]:
        """A random configuration (uniform in unit space), repaired to satisfy the rules between parameters;
        declared-frozen parameters keep their default."""
        out = {}
        for p in self.params:
            if p.frozen:
                out[p.name] = p.default
            elif p.kind == "bool":
                out[p.name] = rng.random() < 0.5
            elif p.kind == "choice":
                out[p.name] = rng.choice(p.choices)
            else:
                out[p.name] = p.from_unit(rng.random())
        return self.repair(out)

    def neighbour(
        self, params: Mapping[str, Any], rng: random.Random, names: Sequence[str], scale: float = 0.1
    ) -> dict[str, Any]:
        """Changes that move every name in ``names`` away from its value in ``params``.

        Numerics take a Gaussian step of width ``scale`` in unit space (at least one int step, reflected at the
        bounds); choices move to another choice; bools flip. A name that cannot move (a one-point range) is left out.
        When the move breaks a rule between parameters (``multiple_of``), the ruled parameter is repaired and its new
        value is one of the changes too; a move that the repair undoes is left out.
        """
        changes = {}
        for name in names:
            p = self[name]
            current = params.get(name, p.default)
            if p.kind == "bool":
                changes[name] = not current
            elif p.kind == "choice":
                others = [c for c in p.choices if not _same(c, current)]
                if others:
                    changes[name] = rng.choice(others)
            else:
                moved = self._step(p, current, rng, scale)
                if moved is not None:
                    changes[name] = moved
        repaired = self.repair({**params, **changes})
        return {k: v for k, v in repaired.items() if not _same(v, params.get(k, self[k].default))}

    def _step(self, p: Param, current: Any, rng: random.Random, scale: float) -> Any:
        if p.low == p.high:
            return None
        unit = p.to_unit(current)
        delta = rng.gauss(0.0, max(scale, 1e-6))
        for _ in range(64):
            target = unit + delta
            if target < 0.0 or target > 1.0:
                target = unit - delta
            value = p.from_unit(target)
            if not _same(value, current):
                return value
            delta = delta * 2 if delta else 1e-3
        return p.from_unit(0.0 if unit > 0.5 else 1.0)

    def levels(self, name: str, k: int, center: Any = None, step: float = 0.25) -> list[Any]:
        """Up to ``k`` distinct levels of a factor for a design of experiments.

        Without ``center``: evenly spread over the whole range (log-aware), or the first ``k`` choices / both bools.
        With ``center``: numerics at ``center + (i - (k - 1) / 2) * step`` in unit space (so an odd ``k`` contains the
        centre); choices and bools start with the centre, then the other values in declaration order.
        """
        if k < 1:
            raise SpaceError("levels needs k >= 1")
        p = self[name]
        if p.kind in ("bool", "choice"):
            values = [False, True] if p.kind == "bool" else list(p.choices)
            if center is not None:
                values = [center] + [v for v in values if not _same(v, center)]
            return values[:k]
        if center is None:
            units = [i / (k - 1) if k > 1 else 0.5 for i in range(k)]
        else:
            units = [p.to_unit(center) + (i - (k - 1) / 2) * step for i in range(k)]
        out: list[Any] = []
        for unit in units:
            value = p.from_unit(unit)
            if not any(_same(value, seen) for seen in out):
                out.append(value)
        return out

    def grid_step(self, name: str) -> float:
        """The step of a linear numeric parameter: a round number near a tenth of its range (a twentieth, at least
        1, for ints)."""
        p = self[name]
        if p.kind not in ("int", "float"):
            raise SpaceError(f"{name} is a {p.kind}: grid steps apply to int and float")
        span = float(p.high - p.low)  # type: ignore[operator]
        if p.kind == "int":
            return max(1, int(_round_number(span / 20))) if span else 1
        return _round_number(span / 10) if span else 0.0

    def steps(self, config: Mapping[str, Any], name: str, frozen: Iterable[str] = ()) -> list[dict[str, Any]]:
        """The one-parameter steps of ``name`` from ``config``, as admissible changes, ordered by the new value.

        On the parameter's own scale: x0.5, x0.7, x1.4, x2 for log-scale numerics (3 significant digits), -2, -1,
        +1, +2 grid steps for linear ones (``grid_step``), the other choices of a choice, the other value of a bool.
        Each step is in range, differs from the current value and keeps every ``multiple_of`` rule with the rest of
        ``config`` unchanged; only when no step does are steps that need a rule's repair kept (the repaired
        parameter is then one of the changes). Empty when ``name`` (or what a repair would move) is frozen."""
        p = self[name]
        current = config.get(name, p.default)
        if p.kind == "bool":
            raw: list[Any] = [not current]
        elif p.kind == "choice":
            raw = [c for c in p.choices if not _same(c, current)]
        elif p.log:
            raw = [current * f for f in LOG_FACTORS]
        else:
            raw = [current + k * self.grid_step(name) for k in GRID_STEPS]
        alone: list[dict[str, Any]] = []
        repaired: list[dict[str, Any]] = []
        for value in raw:
            if p.kind == "int":
                value = int(round(value))
            elif p.kind == "float":
                value = float(f"{value:.3g}") if p.log else float(f"{value:.10g}")
            full = self.repair({**config, name: value})
            changes = {k: v for k, v in full.items() if k in self and not _same(v, config.get(k, self[k].default))}
            if name not in changes or self.check_changes(changes, config, frozen, max_changes=None):
                continue
            if any(_same(changes[name], c[name]) for c in (*alone, *repaired)):
                continue
            (alone if len(changes) == 1 else repaired).append({name: changes.pop(name), **changes})
        found = alone or repaired
        if p.kind in ("int", "float"):
            found.sort(key=lambda c: c[name])
        return found


def _round_number(x: float) -> float:
    """The number of the 1-2-5 series nearest ``x`` in log scale."""
    if x <= 0:
        return 0.0
    exponent = math.floor(math.log10(x))
    candidates = [m * 10.0**e for e in (exponent - 1, exponent, exponent + 1) for m in (1, 2, 5)]
    best = min(candidates, key=lambda c: abs(math.log(c / x)))
    return float(f"{best:.12g}")


def _coerce_bool(name: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
        return value.strip().lower() in ("true", "yes", "on", "1")
    raise SpaceError(f"{name} takes a bool, got {value!r}")


def _coerce_choice(p: Param, value: Any) -> Any:
    for choice in p.choices:
        if _same(value, choice):
            return choice
    if isinstance(value, str):
        text = value.strip().strip("'\"")
        for choice in p.choices:
            if isinstance(choice, str) and choice.lower() == text.lower():
                return choice
        try:
            number = eval_expression(text)
        except SpaceError:
            number = None
        for choice in p.choices:
            if number is not None and _same(number, choice):
                return choice
    raise SpaceError(f"{p.name}={value!r} is not one of {list(p.choices)}")


def _param(c: constants.Constant) -> Param:
    """The search-space parameter of a constant of the block (a float's default and bounds as floats)."""
    try:
        if c.kind in ("int", "float"):
            low, high, default = c.domain[0], c.domain[1], c.value
            if c.kind == "float":
                low, high, default = (float(v) if _is_number(v) else v for v in (low, high, default))
            return Param(c.name, c.kind, low, high, (), c.log, c.frozen, default, c.multiple_of, c.doc)
        return Param(c.name, c.kind, choices=c.domain, log=c.log, frozen=c.frozen, default=c.value, doc=c.doc)
    except SpaceError as exc:
        raise SpaceError(f"line {c.line}: {exc}") from None
