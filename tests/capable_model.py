"""A scripted *capable* model for generate mode: the modules a frontier model writes (CamelCase NAME, classes,
dataclasses, docstrings, helper functions, module constants, type hints) and the ways its answers go wrong (fences of
every kind, prose around the code, a wrong entry name, a name that differs from NAME, a syntax error, deep nesting,
rules of the policy it did not know).

`PLAN` is what the model answers to each generate call, cycle by cycle; `capable_model(run_dir)` answers every call of
the outer and inner loops of a run, as a pure function of the run's own state, so a run killed with SIGKILL and resumed
in a new process goes on with the same plan.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from support import change

TABU_UCB = '''"""Tabu search with an upper-confidence choice of the parameter to move.

Every configuration already in the trace is tabu; the parameter to move is chosen by UCB1 over the improvements each
parameter brought when it was changed.
"""

import math
from dataclasses import dataclass
from typing import Any

NAME = "TabuUCB"
TARGET = "propose"

EXPLORATION = 1.4
TABU_RADIUS = 0.02
TRIES = 12


@dataclass
class Arm:
    """What the trace says about changing one parameter."""

    pulls: int = 0
    reward: float = 0.0

    def score(self, total: int) -> float:
        if self.pulls == 0:
            return float("inf")
        return self.reward / self.pulls + EXPLORATION * math.sqrt(math.log(max(total, 1)) / self.pulls)


def arms(view: Any) -> dict[str, Arm]:
    table = {name: Arm() for name in view.free_names}
    best = None
    for record in view.trace:
        bpb = record["val_bpb"]
        for name in record["changes"]:
            if name in table:
                table[name].pulls += 1
                if best is not None and bpb is not None and bpb < best:
                    table[name].reward += 1.0
        if record["status"] != "crash" and bpb is not None and (best is None or bpb < best):
            best = bpb
    return table


def is_tabu(view: Any, config: dict[str, Any]) -> bool:
    return any(view.space.distance(config, record["params"]) < TABU_RADIUS for record in view.trace)


def propose(view: Any) -> dict[str, Any]:
    table = arms(view)
    total = sum(arm.pulls for arm in table.values())
    ranked = sorted(table, key=lambda name: (-table[name].score(total), name))
    for attempt in range(TRIES):
        name = ranked[attempt % len(ranked)]
        changes = view.space.neighbour(view.incumbent, view.rng, [name], 0.1 + 0.05 * attempt)
        if not changes or view.check_changes(changes):
            continue
        if not is_tabu(view, view.space.apply(view.incumbent, changes)):
            return {
                "changes": changes,
                "hypothesis": f"UCB picks {name}; the step leaves every tried configuration",
                "expected_direction": "lower",
            }
    return view.ask_llm("every UCB step landed on a tabu configuration", {"only": ranked[:3]})
'''

MULTI_SCALE_BANDIT = '''"""A bandit over step sizes: small, medium and large moves compete on their improvements."""

import math
from typing import Any

NAME = "MultiScaleBandit"
TARGET = "propose"
SCALES = (0.03, 0.1, 0.3)
PREFIX = "multi-scale step of width "


def scale_of(record: Any) -> float | None:
    """The step width a record of this mechanism was made with, read back from its hypothesis."""
    text = record["hypothesis"]
    if not text.startswith(PREFIX):
        return None
    try:
        return float(text[len(PREFIX):].split(" ")[0])
    except ValueError:
        return None


def gains_by_scale(view: Any) -> dict[float, list[float]]:
    gains: dict[float, list[float]] = {s: [] for s in SCALES}
    best = None
    for record in view.trace:
        scale, bpb = scale_of(record), record["val_bpb"]
        if scale in gains and best is not None:
            gains[scale].append(0.0 if bpb is None else max(0.0, best - bpb))
        if bpb is not None and record["status"] == "keep" and (best is None or bpb < best):
            best = bpb
    return gains


def pick_scale(view: Any) -> float:
    gains = gains_by_scale(view)
    untried = [s for s in SCALES if not gains[s]]
    if untried:
        return untried[view.rng.randrange(len(untried))]
    total = sum(len(g) for g in gains.values())

    def ucb(scale: float) -> float:
        pulls = len(gains[scale])
        return sum(gains[scale]) / pulls + 0.01 * math.sqrt(2 * math.log(total) / pulls)

    return max(SCALES, key=ucb)


def propose(view: Any) -> dict[str, Any]:
    scale = pick_scale(view)
    names = list(view.free_names)
    for _ in range(20):
        chosen = view.rng.sample(names, 1 if scale < 0.2 else 2)
        changes = view.space.neighbour(view.incumbent, view.rng, chosen, scale)
        if changes and not view.check_changes(changes):
            return {
                "changes": changes,
                "hypothesis": f"{PREFIX}{scale} on {', '.join(sorted(changes))}",
                "expected_direction": "lower",
            }
    return view.ask_llm(f"a step of width {scale} gave no admissible change")
'''

TRUST_REGION = '''"""A trust region around the incumbent whose radius follows the recent successes and failures."""

from dataclasses import dataclass
from typing import Any

NAME = "AdaptiveTrustRegion"
TARGET = "propose"
MIN_RADIUS = 0.02
MAX_RADIUS = 0.5
PATIENCE = 3


@dataclass(frozen=True)
class Region:
    radius: float
    successes: int
    failures: int

    @classmethod
    def from_trace(cls, trace: Any) -> "Region":
        """Replay the trace: two keeps in a row double the radius, PATIENCE failures halve it."""
        radius, successes, failures = 0.15, 0, 0
        for record in trace[1:]:
            if record["status"] == "keep":
                successes, failures = successes + 1, 0
            elif record["status"] in ("discard", "crash"):
                successes, failures = 0, failures + 1
            else:
                continue
            if successes >= 2:
                radius, successes = min(MAX_RADIUS, radius * 2.0), 0
            elif failures >= PATIENCE:
                radius, failures = max(MIN_RADIUS, radius / 2.0), 0
        return cls(radius, successes, failures)


def propose(view: Any) -> dict[str, Any]:
    region = Region.from_trace(view.trace)
    free = list(view.free_names)
    for attempt in range(16):
        names = view.rng.sample(free, min(len(free), 1 + attempt % 3))
        changes = view.space.neighbour(view.incumbent, view.rng, names, region.radius)
        if changes and not view.check_changes(changes):
            return {
                "changes": changes,
                "hypothesis": f"a step inside the trust region of radius {region.radius:.3f}",
                "expected_direction": "lower",
            }
    return view.ask_llm(f"no admissible step inside radius {region.radius:.3f}")
'''

GROUP_UCB = '''"""UCB1 over the groups of the search space (architecture, optimisation, ...), rewarded by keeps."""

import math
from collections import defaultdict
from typing import Any

NAME = "GroupUCB"
TARGET = "propose"
C = 0.8
SCALES = (0.1, 0.2, 0.35)


def group_stats(view: Any) -> tuple[dict[str, int], dict[str, int]]:
    owner = {name: group for group, names in view.space.groups(view.frozen).items() for name in names}
    pulls: dict[str, int] = defaultdict(int)
    wins: dict[str, int] = defaultdict(int)
    for record in view.trace:
        for group in {owner[name] for name in record["changes"] if name in owner}:
            pulls[group] += 1
            wins[group] += record["status"] == "keep"
    return pulls, wins


def choose_group(view: Any) -> str:
    groups = sorted(view.space.groups(view.frozen))
    pulls, wins = group_stats(view)
    total = max(1, sum(pulls.values()))

    def ucb(group: str) -> float:
        if pulls[group] == 0:
            return 1e9 - groups.index(group)
        return wins[group] / pulls[group] + C * math.sqrt(math.log(total + 1) / pulls[group])

    return max(groups, key=ucb)


def propose(view: Any) -> dict[str, Any]:
    group = choose_group(view)
    names = list(view.space.groups(view.frozen)[group])
    for scale in SCALES:
        name = names[view.rng.randrange(len(names))]
        changes = view.space.neighbour(view.incumbent, view.rng, [name], scale)
        if changes and not view.check_changes(changes):
            return {
                "changes": changes,
                "hypothesis": f"UCB1 explores the {group} group through {name}",
                "expected_direction": "lower",
            }
    return view.ask_llm(f"explore the {group} group", {"only": names})
'''

ONE_FACTOR_DESIGN = '''"""A one-factor-at-a-time design: each free factor at three levels around the incumbent."""

from typing import Any

NAME = "OneFactorDesign"
TARGET = "propose"
LEVELS = 3
STEP = 0.2


def plan(view: Any) -> list[tuple[str, Any]]:
    """Every (factor, level) of the design that differs from the incumbent."""
    runs = []
    for name in view.free_names:
        center = view.incumbent[name]
        runs += [(name, value) for value in view.space.levels(name, LEVELS, center, STEP) if value != center]
    return runs


def already_run(view: Any, name: str, value: Any) -> bool:
    return any(record["changes"].get(name) == value for record in view.trace)


def propose(view: Any) -> dict[str, Any]:
    runs = plan(view)
    start = view.iteration % max(1, len(runs))
    for offset in range(len(runs)):
        name, value = runs[(start + offset) % len(runs)]
        if already_run(view, name, value):
            continue
        config = view.space.repair({**view.incumbent, name: value})
        changes = {k: v for k, v in config.items() if v != view.incumbent[k]}
        if not view.check_changes(changes):
            return {"changes": changes, "hypothesis": f"design point {name}={value}", "expected_direction": "lower"}
    return view.ask_llm("the one-factor design around the incumbent is complete")
'''

ANNEALED_WALK = '''"""Simulated annealing as a proposal rule: a walk whose step width cools with the iteration."""

import math
from typing import Any

NAME = "AnnealedWalk"
TARGET = "propose"
T0 = 0.3
COOLING = 0.85


class Schedule:
    """Temperature and step width at an iteration."""

    def __init__(self, iteration: int) -> None:
        self.iteration = iteration
        self._temperature = T0 * COOLING ** max(0, iteration - 1)

    def width(self) -> float:
        return max(0.03, self._temperature)

    def how_many(self, draw: float) -> int:
        """More parameters at once while it is hot."""
        return 2 if draw < math.tanh(self._temperature * 3) else 1


def propose(view: Any) -> dict[str, Any]:
    schedule = Schedule(view.iteration)
    free = list(view.free_names)
    for _ in range(12):
        names = view.rng.sample(free, schedule.how_many(view.rng.random()))
        changes = view.space.neighbour(view.incumbent, view.rng, names, schedule.width())
        if changes and not view.check_changes(changes):
            return {
                "changes": changes,
                "hypothesis": f"annealed step of width {schedule.width():.3f} on {', '.join(sorted(changes))}",
                "expected_direction": "lower",
            }
    return view.ask_llm("the annealed walk found no admissible step")
'''

MOMENTUM_COORDINATE = '''"""Coordinate descent with momentum: repeat the move between the last two kept
configurations, else step the least-tried parameter."""

from typing import Any

NAME = "CoordinateDescentWithMomentumAndRandomRestarts"
TARGET = "propose"
STEP = 0.15


def numeric(view: Any, name: str) -> bool:
    return view.space[name].kind in ("int", "float")


def momentum(view: Any) -> dict[str, Any]:
    """The last kept move, applied once more from the incumbent (numeric parameters only)."""
    kept = [record["params"] for record in view.trace if record["status"] == "keep"]
    if len(kept) < 2:
        return {}
    before, after = kept[-2], kept[-1]
    moved = [n for n in view.free_names if numeric(view, n) and before[n] != after[n]][:2]
    changes = {}
    for name in moved:
        p = view.space[name]
        changes[name] = view.space.shift(name, view.incumbent[name], p.to_unit(after[name]) - p.to_unit(before[name]))
    config = view.space.repair(view.space.apply(view.incumbent, changes))
    return {k: v for k, v in config.items() if v != view.incumbent[k]}


def least_tried(view: Any) -> str:
    tried = {name: 0 for name in view.free_names}
    for record in view.trace:
        for name in record["changes"]:
            if name in tried:
                tried[name] += 1
    return min(tried, key=lambda name: (tried[name], name))


def propose(view: Any) -> dict[str, Any]:
    changes = momentum(view)
    if changes and not view.check_changes(changes):
        return {"changes": changes, "hypothesis": "the last kept move once more", "expected_direction": "lower"}
    name = least_tried(view)
    changes = view.space.neighbour(view.incumbent, view.rng, [name], STEP)
    if changes and not view.check_changes(changes):
        return {"changes": changes, "hypothesis": f"coordinate step on {name}", "expected_direction": "lower"}
    return view.ask_llm(f"no admissible step on {name}")
'''

FOCUSED_LLM = '''"""The LLM proposes, restricted to the least-explored parameters; a proposal that repeats a tried
configuration is nudged away from it."""

from typing import Any

NAME = "FocusedLLM"
TARGET = "propose"
FOCUS = 4


def least_tried(view: Any) -> list[str]:
    tried = {name: 0 for name in view.free_names}
    for record in view.trace:
        for name in record["changes"]:
            if name in tried:
                tried[name] += 1
    return sorted(tried, key=lambda name: (tried[name], name))[:FOCUS]


def propose(view: Any) -> dict[str, Any]:
    focus = least_tried(view)
    proposal = view.ask_llm("explore these under-tried parameters: " + ", ".join(focus), {"only": focus})
    config = view.space.apply(view.incumbent, proposal["changes"])
    if any(view.space.distance(config, record["params"]) == 0 for record in view.trace):
        name = sorted(proposal["changes"])[0]
        changes = view.space.neighbour(view.incumbent, view.rng, [name], 0.2)
        if changes and not view.check_changes(changes):
            return {"changes": changes, "hypothesis": "nudged off a repeat: " + proposal["hypothesis"],
                    "expected_direction": "lower"}
    return {"changes": dict(proposal["changes"]), "hypothesis": proposal["hypothesis"],
            "expected_direction": proposal["expected_direction"]}
'''

# (module, NAME): the eight realistic modules
GOOD = {
    "TabuUCB": TABU_UCB,
    "MultiScaleBandit": MULTI_SCALE_BANDIT,
    "AdaptiveTrustRegion": TRUST_REGION,
    "GroupUCB": GROUP_UCB,
    "OneFactorDesign": ONE_FACTOR_DESIGN,
    "AnnealedWalk": ANNEALED_WALK,
    "CoordinateDescentWithMomentumAndRandomRestarts": MOMENTUM_COORDINATE,
    "FocusedLLM": FOCUSED_LLM,
}

# ---- broken answers, each with what must happen to it ----

WRONG_ENTRY = TRUST_REGION.replace("def propose(view: Any)", "def suggest(view: Any)")
SYNTAX_ERROR = MULTI_SCALE_BANDIT.replace("def pick_scale(view: Any) -> float:", "def pick_scale(view: Any) -> float")
DEEP_NESTING = (
    'NAME = "Deep"\nTARGET = "propose"\nWEIGHT = ' + "1+" * 9000 + "1\n\n\ndef propose(view):\n    return {}\n"
)
DUNDER_METHOD = ONE_FACTOR_DESIGN.replace(
    "def plan(view: Any)", "class Plan:\n    def __getitem__(self, key):\n        return key\n\n\ndef plan(view: Any)"
)
FUTURE_AND_ANNOTATED = "from __future__ import annotations\n\n" + ANNEALED_WALK.replace(
    'NAME = "AnnealedWalk"', 'NAME: str = "AnnealedWalk"'
)
LONG_NAME = MOMENTUM_COORDINATE.replace(
    'NAME = "CoordinateDescentWithMomentumAndRandomRestarts"', 'NAME = "' + "CoordinateDescent" * 5 + '"'
)
NAMEDTUPLE = MOMENTUM_COORDINATE.replace(
    "from typing import Any\n",
    'from collections import namedtuple\nfrom typing import Any\n\nMove = namedtuple("Move", "name delta")\n',
)


def nested(depth: int) -> dict[str, Any]:
    """Tool arguments nested `depth` levels deep (deeper than json.dumps can quote back)."""
    answer: dict[str, Any] = {"source": "NAME = 'Deep'"}
    for _ in range(depth):
        answer = {"mechanism": answer}
    return answer


def tool(source: str, name: str = "", rationale: str = "addresses the diagnosis") -> dict[str, Any]:
    """The arguments of the GeneratedMechanism tool call (`name`: what older prompts asked for, now ignored)."""
    return (
        {"name": name, "source": source, "rationale": rationale} if name else {"source": source, "rationale": rationale}
    )


def crlf(text: str) -> str:
    return text.replace("\n", "\r\n")


# What the model answers to each generate call, cycle by cycle (a refused answer is followed by a repair in the same
# cycle; max_repairs=2 allows three answers per cycle). Each entry: (answer, what it is, what must happen).
PLAN: list[list[tuple[Any, str, str]]] = [
    [(tool(TABU_UCB, name="tabu_ucb"), "name mismatch: the tool's name is tabu_ucb, NAME is TabuUCB", "TabuUCB")],
    [
        (tool(WRONG_ENTRY), "wrong entry name", "refused"),
        (
            tool(f"Here is the fixed module.\n\n```py\n{MULTI_SCALE_BANDIT}```\n\nIt avoids repeats."),
            "```py fence, prose",
            "MultiScaleBandit",
        ),
    ],
    [
        (tool(SYNTAX_ERROR), "syntax error", "refused"),
        (tool(crlf(f"```Python\n{TRUST_REGION}```\n")), "```Python fence, CRLF line ends", "AdaptiveTrustRegion"),
    ],
    [
        ({"answer": {"mechanism": {"module": {"source": GROUP_UCB}}}}, "the module nested in the output", "re-asked"),
        (nested(3000), "output nested 3000 levels deep", "re-asked"),
        (tool(f"~~~python\n{GROUP_UCB}~~~"), "~~~ fence", "GroupUCB"),
    ],
    [
        (tool(DEEP_NESTING), "an expression nested too deeply to parse", "refused"),
        (tool(DUNDER_METHOD), "a __getitem__ method", "refused"),
        (tool(f"```python3\n{ONE_FACTOR_DESIGN}```"), "```python3 fence", "OneFactorDesign"),
    ],
    [
        (tool(FUTURE_AND_ANNOTATED), "from __future__ and an annotated NAME", "refused"),
        (
            tool(f"Sure! The module:\n\n{ANNEALED_WALK}\nThis cools the step width."),
            "prose around, no fence",
            "AnnealedWalk",
        ),
    ],
    [
        (tool(LONG_NAME), "NAME of 85 characters", "refused"),
        (tool(NAMEDTUPLE), "collections.namedtuple (refused by the sandbox)", "refused"),
        (tool(MOMENTUM_COORDINATE), "NAME of 46 characters", "CoordinateDescentWithMomentumAndRandomRestarts"),
    ],
    [(tool(FOCUSED_LLM, name="x" * 60), "plain", "FocusedLLM")],
]
LR_VALUES = (0.05, 0.06, 0.07, 0.09, 0.1, 0.12, 0.15, 0.02, 0.03, 0.11)


def answer_for(messages: list[Any], generate_answer: Callable[[], Any]) -> Any:
    """Answer a call by the node that asks (read from the system prompt); generate calls take the next planned one."""
    from nodes.prompts import ADJUST_SYSTEM, ANALYZE_SYSTEM, COMPOSE_SYSTEM, GENERATE_SYSTEM

    system = messages[0].content
    if system == ADJUST_SYSTEM:
        return {"strategy": "exploit", "freeze": [], "unfreeze": [], "guidance": "small steps"}
    if system == ANALYZE_SYSTEM:
        return {"finding": "uneven", "ideas": ["tabu search", "a bandit over step sizes", "a trust region"]}
    if system == COMPOSE_SYSTEM:
        return {"family": "tabu", "params": [], "rationale": "avoid repeats"}
    if system == GENERATE_SYSTEM:
        return generate_answer()
    turn = sum(1 for m in messages if m.type == "human")  # a re-ask sees its own rejection
    return change("MATRIX_LR", LR_VALUES[(len(str(messages[-1].content)) + turn) % len(LR_VALUES)])


MAX_REPAIRS = 2  # OuterContext.max_repairs: a cycle's answers are the first one and up to two repairs


def planned(messages: list[Any], cycle: int) -> Any:
    """The planned answer to a generate call of `cycle`: which answer of the cycle is read from the prompt (the repair
    rounds it says remain) and the conversation (a re-ask within the call adds a rejection)."""
    remaining = re.search(r"(\d+) repair round\(s\) remain", str(messages[1].content))
    repair = MAX_REPAIRS - int(remaining.group(1)) if remaining else 0
    reasks = sum(1 for m in messages if m.type == "human") - 1
    answers = [answer for answer, _, _ in PLAN[cycle]] if cycle < len(PLAN) else []
    index = repair + reasks
    return answers[index] if index < len(answers) else tool(FOCUSED_LLM)


def capable_model(run_dir: Path) -> Callable[[list[Any]], Any]:
    """The model for a run in `run_dir`: generate calls answered as PLAN says for the cycle the run is in (segments
    ended so far, read from its trace). A pure function of the run's own state, so a run killed with SIGKILL and
    resumed in a new process, replaying a node, gets the same answer again."""

    def cycle() -> int:
        trace = run_dir / "trace.jsonl"
        ended = 0
        for line in trace.read_text().splitlines() if trace.exists() else []:
            ended += '"kind": "segment_end"' in line
        return ended - 1

    return lambda messages: answer_for(messages, lambda: planned(messages, cycle()))
