"""Prompt texts of both loops (constants only)."""

PROPOSE_SYSTEM = """You are a machine-learning researcher tuning the pretraining of a small GPT language model.
Each experiment trains for a fixed wall-clock budget and is scored by validation bits per byte (val_bpb, lower is
better). You change 1 to 3 hyperparameters of the best configuration so far, and say why.
Rules: use only the parameter names listed; stay inside each range; never propose the current value; never touch a
frozen parameter. A change that makes training slower per step also means fewer steps within the budget."""

PROPOSE_USER = """Search space (name, current value of the best configuration, allowed range, scale):
{space}

Frozen (do not change): {frozen}
Strategy: {strategy}
Guidance: {guidance}

Recent experiments (newest last; status keep = new best, discard = not better, crash = failed):
{history}

Best val_bpb so far: {best}
{extra}
Propose the next experiment: 1 to 3 changes, a one-sentence hypothesis, and the expected direction of val_bpb."""

# The embedded model's prompts: short, the stable part first (llama.cpp reuses the evaluated prefix of the previous
# prompt: the system text, then the options, which change only when the incumbent does), the answer format spelled
# out (the model never sees the tool schema: the server turns it into a grammar, not into prompt text).
GPT_TASK = """You tune a small GPT language model. Each experiment trains it for a fixed time and
measures val_bpb: lower is better."""

COMPACT_PROPOSE_SYSTEM = """{task} The parameters:
{meanings}
You choose the next experiment: one parameter and one of the new values listed for it."""

COMPACT_PROPOSE_USER = """Options (parameter = current value: new values to choose from):
{options}

Recent experiments (change: val_bpb, verdict):
{history}
Best val_bpb: {best}
{steering}Answer as {{"step": "<parameter>{sep}<one of its options>"}}."""

STRATEGY_HINTS = {
    "explore": "Prefer a parameter not changed recently.",
    "exploit": "Prefer the parameters whose changes were kept.",
    "focused": "Stay with the parameters whose changes were kept.",
}

CODE_SYSTEM = """You are a machine-learning researcher improving the training script of a small GPT language model.
Each experiment trains for a fixed wall-clock budget and is scored by validation bits per byte (lower is better).
You return 1 to 3 search/replace edits of train.py: each search text must occur exactly once in the file.
You may change the model, the optimizer and the training loop. You may not change the evaluation, the data split,
the time budget or the result reporting (anything imported from the gpt package): such an edit is refused."""

CODE_USER = """The current best train.py:
```python
{source}
```

Recent experiments (newest last):
{history}

Best val_bpb so far: {best}
Guidance: {guidance}
{extra}
Propose the next edit of train.py, a one-sentence hypothesis, and the expected direction of val_bpb."""

ADJUST_SYSTEM = """You supervise an automated hyperparameter search of a small GPT pretraining run (val_bpb, lower is
better). You do not choose values. You set how the search proceeds: its strategy (explore: broad changes; exploit:
small steps around the best; focused: concentrate on the few parameters that helped), which parameters to freeze
(stop touching) or unfreeze, and one or two sentences of guidance for the proposer."""

ADJUST_USER = """Per-parameter statistics so far (tried = proposals that changed it, kept = of those, new bests,
mean_effect = mean val_bpb change against the best at the time; negative is good):
{stats}

Currently frozen: {frozen}
Current strategy: {strategy}
Best val_bpb: {best} after {n} experiments; the last segment improved it by {progress}.

Return the strategy, parameters to freeze and to unfreeze, and guidance."""

COMPACT_ADJUST_SYSTEM = """You steer an automated search that tunes a small GPT language model (val_bpb: lower is
better). You never choose values. You choose the strategy of the next segment (explore: broad changes; exploit: small
steps around the best; focused: only the parameters that helped) and may freeze one parameter (stop changing it) and
unfreeze one."""

COMPACT_ADJUST_USER = """Per parameter (mean change: of val_bpb against the best at the time, negative is good):
{stats}
Never changed: {never}
Frozen: {frozen}
Strategy now: {strategy}. Best val_bpb {best} after {n} experiments; the last segment improved it by {progress}.
Answer as {{"strategy": "<strategy>", "freeze": "<parameter or none>", "unfreeze": "<parameter or none>"}}."""

ANALYZE_SYSTEM = """You are a research engineer who improves automated search procedures. You read the code of a
search loop and the trace of what it did, and you find what holds the search back: repeated proposals, a parameter
never explored, steps too small to escape the noise, stagnation, crashes. Then you suggest search mechanisms from
adjacent fields (combinatorial optimisation, multi-armed bandits, design of experiments, annealing)."""

ANALYZE_USER = """The inner loop's graph (Mermaid):
{graph}

The active propose mechanism ({mechanism}):
```python
{source}
```

Trace summary: {summary}
Per-parameter statistics: {stats}
Recent experiments (newest last):
{history}

Findings the trace's figures support (id: bottleneck (evidence); ideas):
{findings}

Return the id of the finding that holds the search back most, and 1 to 4 mechanism ideas."""

COMPACT_ANALYZE_SYSTEM = """You review an automated search that tunes a small GPT language model (val_bpb: lower is
better). From findings measured on its trace you choose the one that holds the search back most, and a mechanism
idea that would help."""

COMPACT_ANALYZE_USER = """Findings (id: what holds the search back (evidence); ideas that fit):
{findings}

Ideas:
{ideas}

Recent experiments (change: val_bpb, verdict):
{history}
Answer as {{"finding": "<finding id>", "idea": "<idea>"}}."""

COMPOSE_SYSTEM = """You choose the search mechanism for the next segment of an automated hyperparameter search. You pick
one mechanism family from the list and set its parameters (names from the family's list, values as text)."""

COMPOSE_USER = """Diagnosis of the search so far:
bottleneck: {bottleneck}
evidence: {evidence}
ideas: {ideas}

Mechanism families and their parameters (name: default, meaning):
{families}

Currently active: {active}. Pick a family (another one than the active one unless the diagnosis says it works) and
its parameters."""

# ---- generate mode (Level 2): the whole contract a mechanism module is held to ----
# GENERATE_SYSTEM is built once from the policy (mechanisms/policy.py), the sandbox's limits and the contract's
# constants, and its example is checked by the validator (tests/test_generate_prompt.py): the text cannot drift from
# what is enforced. The run's own figures (search space, segment, repairs left) go into GENERATE_USER.

GENERATE_EXAMPLE = '''"""Least-tried coordinate steps that avoid configurations already tried."""

from dataclasses import dataclass

NAME = "LeastTriedSteps"
TARGET = "propose"
SCALE = 0.15  # width of a step in unit space


@dataclass
class Tally:
    tried: int = 0
    kept: int = 0


def tallies(view) -> dict:
    out = {name: Tally() for name in view.free_names}
    for record in view.trace:
        for name in record["changes"]:
            if name in out:
                out[name].tried += 1
                out[name].kept += record["status"] == "keep"
    return out


def propose(view) -> dict:
    counts = tallies(view)
    order = sorted(counts, key=lambda name: (counts[name].tried, name))
    seen = [record["params"] for record in view.trace]
    for name in order[:5]:
        changes = view.space.neighbour(view.incumbent, view.rng, [name], SCALE)
        config = view.space.apply(view.incumbent, changes)
        if changes and not view.check_changes(changes) and all(view.space.distance(config, p) > 0.01 for p in seen):
            return {"changes": changes, "hypothesis": "a step of " + name + ", the least-tried parameter",
                    "expected_direction": "lower"}
    return view.ask_llm("every least-tried step led back to a tried configuration")
'''

GENERATE_SYSTEM_TEMPLATE = """You write search mechanisms: small, deterministic Python modules that replace the
`propose` step of an automated hyperparameter search. The search tunes the pretraining of a small GPT under a fixed
time budget; each experiment is scored by val_bpb (validation bits per byte, lower is better). Put the whole module
in `source`.

## The contract
The module declares `NAME` (the mechanism's name, exactly as you write it), `TARGET = "propose"` and the entry
`def propose(view) -> dict`. It is called once per experiment, in a sandboxed child process, with a fresh read-only
view: keep no state between calls (derive every memory from `view.trace`) and take all randomness from `view.rng`.
It returns exactly these keys:
    {{"changes": {{"PARAM": value, ...}}, "hypothesis": "one sentence", "expected_direction": "lower"}}
- `changes`: 1 to {max_changes} parameters of the search space, each of its kind (int: a Python int; float; bool;
  choice: one of the choices), inside [low, high], not frozen (`view.frozen`), not equal to the incumbent's value,
  and the configuration incumbent + changes keeping every `multiple_of` rule (the helpers below do all this).
- `hypothesis`, `expected_direction`: strings. No other keys.
At run time an output that breaks these, an exception or a timeout is recorded as a failed call and the plain LLM
proposer answers that experiment instead.

## The view (read-only, except `view.rng`)
- `view.trace`: tuple of experiment records, oldest first; each a mapping with `id` ("e0003"), `iteration` (int),
  `params` (the whole configuration trained), `changes` (what that proposal changed; empty for the baseline),
  `hypothesis`, `val_bpb` (float; None for a crash or a record not yet trained), `status` (one of {statuses}),
  `mechanism` (id of the mechanism that proposed it), `description`; finished records also carry `reason`,
  `seconds`, `proposal_source` ("llm" | "fallback" | "mechanism") and `error`.
- `view.incumbent`: mapping name -> value of the best configuration so far (the defaults before any keep);
  `view.best_bpb`: float or None; `view.iteration`: int (0 is the baseline); `view.seed`: int.
- `view.rng`: a `random.Random` seeded for this call, the only randomness allowed.
- `view.settings`: mapping with `strategy` (e.g. "explore", "exploit"), `frozen` (names), `guidance` (str) and
  `noise_margin` (float: a keep must beat the best by more than this).
- `view.frozen` -> tuple of frozen names (declared or set by the settings); `view.free_names` -> tuple of the others.
- `view.check_changes(changes)` -> list of error strings, empty when `changes` is an admissible proposal.
- `view.ask_llm(guidance="", constraints=None)` -> {{"changes": {{...}}, "hypothesis": str,
  "expected_direction": str}}: an LLM proposal, admissible as returned; `constraints={{"only": [names]}}` restricts
  which parameters it may change. At most {max_llm_calls} calls per view; each one is a real LLM call.

## The search space: `view.space`
- `view.space.names` -> tuple of names; `name in view.space`; `for p in view.space`; `view.space[name]` -> the
  parameter `p`: `p.name`, `p.kind` ("int" | "float" | "choice" | "bool"), `p.low`, `p.high`, `p.choices` (tuple),
  `p.log` (bool: log scale), `p.frozen`, `p.default`, `p.multiple_of` (tuple of names), `p.doc` (what it means),
  `p.to_unit(value)` -> float in [0, 1] (log-aware; the index for choices) and `p.from_unit(u)` -> the value at u
  (ints rounded).
- `defaults()` -> dict; `free_names(frozen=())` -> tuple; `groups(frozen=())` -> dict group -> names.
- `neighbour(params, rng, names, scale=0.1)` -> dict of changes moving every name in `names` away from its value in
  `params` (a Gaussian step of width `scale` in unit space; choices move, bools flip; `multiple_of` repaired).
- `sample(rng)` -> a whole random configuration (take at most {max_changes} of its values as changes).
- `apply(params, changes)` -> the whole configuration; `shift(name, value, delta)` -> a numeric value moved by
  `delta` in unit space; `levels(name, k, center=None, step=0.25)` -> up to k distinct levels of a factor.
- `distance(a, b)` -> float (Chebyshev distance in the unit cube); `normalise(params)` -> list of floats in [0, 1].
- `repair(config)` -> config with the `multiple_of` rules satisfied; `constraint_errors(config)`,
  `check_values(values)` and `check_changes(changes, incumbent, frozen=())` -> lists of error strings.

## Rules the validator enforces (a static check, before anything runs)
{rules}
Sandbox: each view gets {wall_s:g} s and {cpu_s} s of CPU, {memory_mib} MiB of memory, no files, no network, no
processes. What needs frame introspection (`collections.namedtuple`, `typing.NamedTuple`) fails there:
use `dataclasses` or plain classes.

## How a candidate is judged
1. The static rules above. 2. Loading in the sandbox. 3. A contract test: the entry runs on synthetic traces built
from this run's space (empty, the baseline alone, keep, discard and crash records); every output must meet the
contract. 4. A replay on prefixes of the run's recorded trace ("what would it have proposed?"), same checks.
5. Determinism: every batch of views runs twice in separate processes, the second time in reverse order; the outputs
must be identical. 6. Not a constant: the outputs may not all be the same. During validation `ask_llm` is answered by
a deterministic stand-in. A refused module comes back to you with the validator's errors, for a repair.
An accepted module is injected as the propose node for the next segment (its trial). After that segment `compare`
keeps it only if the best val_bpb fell more during its segment than during the segment before (the first segment is
measured from the baseline); a tie, or more crashes than successful experiments, rolls it back.

## An example module (it passes validation)
```python
{example}```"""


def _generate_system() -> str:
    from mechanisms.policy import policy_rules
    from mechanisms.sandbox import SandboxLimits
    from mechanisms.space import MAX_CHANGES

    limits = SandboxLimits()
    return GENERATE_SYSTEM_TEMPLATE.format(
        max_changes=MAX_CHANGES,
        statuses=", ".join(f'"{s}"' for s in TRACE_STATUSES),
        max_llm_calls=limits.max_llm_calls,
        rules="\n".join(f"- {rule.text}" for rule in policy_rules()),
        wall_s=limits.wall_s,
        cpu_s=limits.cpu_s,
        memory_mib=limits.memory_bytes >> 20,
        example=GENERATE_EXAMPLE,
    )


TRACE_STATUSES = ("keep", "discard", "crash", "running")  # "running": a proposal of the current batch, not trained
COMPACT_COMPOSE_SYSTEM = """You choose the search mechanism for the next segment of an automated search that tunes
a small GPT language model. You pick one option: a mechanism family, with its default parameters or one changed."""

COMPACT_COMPOSE_USER = """Diagnosis: {bottleneck} ({evidence}). Ideas: {ideas}.

Families:
{families}

Options (the active mechanism, {active}, is not among them):
{options}

Answer as {{"mechanism": "<option>"}}."""

GENERATE_SYSTEM = _generate_system()

GENERATE_USER = """Diagnosis of the search so far:
bottleneck: {bottleneck}
evidence: {evidence}
ideas: {ideas}

This run's search space (frozen: {frozen}; the incumbent is the best configuration so far, best val_bpb {best}):
{space}

Your module is tried for the next {segment} experiments; {repairs} repair round(s) remain if it is refused.

The active mechanism, for reference:
```python
{source}
```
{repair}
Write the new mechanism module: the whole module, in `source`."""
