"""Generate mode as a capable model meets it: the prompt states the whole contract (and cannot drift from the
policy), realistic modules are injected and run, broken answers are repaired or refused with their reasons kept, and
no answer crashes the run."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
from capable_model import GOOD, PLAN, capable_model
from rich.console import Console
from support import SyntheticExecutor, config

import graphs.mechanism_list as store
from checkpoints.run_folder import Ledger
from graphs.run_config import RunConfig
from graphs.runner import execute
from llm.scripted import ScriptedChatModel
from mechanisms import policy
from mechanisms.sandbox import SandboxLimits
from mechanisms.space import SearchSpace
from mechanisms.validation import synthetic_trace, validate_mechanism
from nodes.compare import judge
from nodes.generate import extract_module, record_name, space_table
from nodes.inject import inject
from nodes.prompts import GENERATE_EXAMPLE, GENERATE_SYSTEM

ROOT = Path(__file__).resolve().parents[1]
SPACE = SearchSpace.from_train_source((ROOT / "gpt" / "train.py").read_text())

BASE = """NAME = "Probe"
TARGET = "propose"


def propose(view):
    return view.ask_llm("probe")
"""
# One module per rule of the policy that breaks that rule and nothing else: every rule the prompt states is enforced.
VIOLATIONS = {
    "size": BASE + "\n" + "# padding\n" * 2_500,
    "header": BASE.replace('NAME = "Probe"', 'NAME: str = "Probe"'),
    "imports": "from __future__ import annotations\n" + BASE,
    "global": BASE + "\n\ndef helper():\n    global COUNT\n    return 1\n",
    "calls": BASE + "\n\ndef helper(view):\n    return getattr(view, NAME)\n",
    "dunder": BASE + "\n\ndef helper(view):\n    return view.rng.__class__\n",
    "attributes": BASE + "\n\ndef helper(view):\n    return view.mro\n",
    "private": BASE + "\n\ndef helper(view):\n    return view.space._index\n",
    "strings": '"""A docstring with a double__underscore."""\n' + BASE,
    "async": BASE + "\n\nasync def helper():\n    return 1\n",
    "methods": BASE + "\n\nclass Table:\n    def __call__(self):\n        return 1\n",
    "class_keywords": BASE + "\n\nclass Table(metaclass=type):\n    pass\n",
}


def rules_section(prompt: str) -> list[str]:
    section = prompt.split("## Rules the validator enforces", 1)[1].split("\nSandbox:", 1)[0]
    return [line[2:] for line in section.splitlines() if line.startswith("- ")]


def test_the_prompt_states_exactly_the_policys_rules_and_each_is_enforced():
    rules = policy.policy_rules()
    assert rules_section(GENERATE_SYSTEM) == [rule.text for rule in rules]
    text = " ".join(rule.text for rule in rules)
    names = (
        policy.ALLOWED_IMPORTS
        | policy.FORBIDDEN_MODULES
        | policy.FORBIDDEN_CALLS
        | policy.FORBIDDEN_ATTRIBUTES
        | policy.DUNDER_METHODS
    )
    assert not [n for n in names if f"`{n}`" not in text]
    assert f"{policy.MAX_SOURCE_CHARS:,} characters" in text and f"{policy.MAX_NAME_CHARS} characters" in text
    assert set(VIOLATIONS) == {rule.key for rule in rules}, "a rule without a module that breaks it"
    assert policy.check_source(BASE).ok
    for key, source in VIOLATIONS.items():
        assert not policy.check_source(source).ok, f"rule {key!r} is stated but not enforced"


def test_the_prompt_is_formatted_and_states_the_api_the_limits_and_the_judging():
    assert "{{" not in GENERATE_SYSTEM and "}}" not in GENERATE_SYSTEM
    assert not re.search(r"\{[a-z_]+\}", GENERATE_SYSTEM.split("## An example module")[0])
    limits = SandboxLimits()
    for fact in (
        "view.check_changes(changes)",
        'view.ask_llm(guidance="", constraints=None)',
        "neighbour(params, rng, names, scale=0.1)",
        "p.to_unit(value)",
        '"keep", "discard", "crash", "running"',
        f"{limits.wall_s:g} s",
        f"At most {limits.max_llm_calls} calls per view",
        "collections.namedtuple",
        "A contract test",
        "Determinism",
        "measured from the baseline",
    ):
        assert fact in GENERATE_SYSTEM, fact
    assert GENERATE_EXAMPLE in GENERATE_SYSTEM


def test_the_example_module_in_the_prompt_passes_validation():
    report = validate_mechanism(GENERATE_EXAMPLE, SPACE, synthetic_trace(SPACE, 1), seed=0)
    assert report.ok, report.errors
    assert report.name == "LeastTriedSteps"


MODULE = 'NAME = "TabuUCB"\nTARGET = "propose"\n\n\ndef propose(view):\n    return view.ask_llm("x")\n'


@pytest.mark.parametrize(
    "answer",
    [
        MODULE,
        f"```python\n{MODULE}```",
        f"```py\n{MODULE}```",
        f"```Python\n{MODULE}```",
        f"```python3\n{MODULE}```",
        f"``` python\n{MODULE}```\n",
        f"```\n{MODULE}```",
        f"~~~python\n{MODULE}~~~",
        f"~~~\n{MODULE}~~~",
        f"Here is the module:\r\n\r\n```python\r\n{MODULE}```\r\nIt avoids repeats.".replace("\n", "\r\n").replace(
            "\r\r\n", "\r\n"
        ),
        f"Here is the module:\n\n{MODULE}\nIt avoids repeats.",
        f"```python\n{MODULE}",  # an answer cut off before its closing fence
        f"First the idea:\n```text\nstep, then check\n```\nThen the module:\n```python\n{MODULE}```",
    ],
)
def test_code_is_extracted_from_every_kind_of_answer(answer):
    assert extract_module(answer).strip() == MODULE.strip()
    assert record_name(extract_module(answer)) == "TabuUCB"


def test_the_record_name_is_the_modules_own_name():
    assert record_name('NAME = "TabuUCB"\n') == "TabuUCB"
    assert record_name("NAME = '" + "A" * 50 + "'\n") == "A" * 50
    assert record_name("NAME = '" + "A" * 65 + "'\n") == "unnamed"  # refused by the policy; the folder still keeps it
    assert record_name("NAME = '../../etc'\n") == "unnamed"
    assert record_name("no name at all") == "unnamed"


def test_the_search_space_table_gives_ranges_scales_rules_and_frozen_names():
    table = space_table(SPACE, SPACE.defaults(), ["DEPTH"])
    assert "| DEPTH | int | [1, 24] | linear | - | 4 | yes |" in table
    assert "| TOTAL_BATCH_TOKENS | int | [1024, 1048576] | log | DEVICE_BATCH_SIZE*SEQ_LEN | 8192 | no |" in table
    assert "| OPTIMIZER | choice | 'muon', 'adamw' | - | - | 'muon' | no |" in table
    assert len(table.splitlines()) == len(SPACE) + 2


def test_frozen_parameters_are_checked_in_validation():
    always_lr = BASE.replace(
        'return view.ask_llm("probe")',
        'value = 0.05 if view.incumbent["MATRIX_LR"] != 0.05 else 0.06\n'
        '    return {"changes": {"MATRIX_LR": value}, "hypothesis": "lr " + str(view.iteration), '
        '"expected_direction": "lower"}',
    )
    trace = synthetic_trace(SPACE, 1)
    assert validate_mechanism(always_lr, SPACE, trace, seed=0).ok
    report = validate_mechanism(always_lr, SPACE, trace, seed=0, settings={"frozen": ["MATRIX_LR"]})
    assert not report.ok and "MATRIX_LR is frozen" in " ".join(report.errors)


def test_changed_vs_llm_counts_changes_not_reworded_hypotheses():
    passthrough = BASE.replace(
        'return view.ask_llm("probe")',
        'proposal = view.ask_llm("probe")\n'
        '    return {"changes": dict(proposal["changes"]), "hypothesis": "reworded: " + proposal["hypothesis"], '
        '"expected_direction": "lower"}',
    )
    report = validate_mechanism(passthrough, SPACE, synthetic_trace(SPACE, 1), seed=0)
    assert report.ok and report.replay["n"] > 0 and report.replay["changed_vs_llm"] == 0


def segment(index: int, first: int, last: int, before: float | None, after: float) -> dict:
    progress = round(before - after, 6) if before is not None else 0.0
    return {"index": index, "mechanism": "m", "first": first, "last": last, "best_before": before,
            "best_after": after, "progress": progress, "kept": 1, "crashes": 0}  # fmt: skip


def test_the_first_segments_progress_is_measured_from_the_baseline():
    first = segment(0, 0, 3, None, 1.80)  # the baseline trained at 2.00 inside it
    trial = segment(1, 3, 6, 1.80, 1.75)
    keep, evidence = judge(trial, first, baseline_bpb=2.00)
    assert not keep and "0.200000 before" in evidence
    keep, _ = judge(segment(1, 3, 6, 1.80, 1.55), first, baseline_bpb=2.00)
    assert keep


def test_a_candidate_whose_graph_cannot_be_built_is_refused_not_raised(tmp_path):
    ledger = Ledger(tmp_path / "run")
    context = SimpleNamespace(inner=SimpleNamespace(ledger=ledger))
    record = {"id": "TabuUCB@12345678", "name": "TabuUCB", "origin": "generated", "target": "propose",
              "sha256": "0" * 64, "params": {}}  # fmt: skip  # not the sha256 of its source: it does not load
    state = {"candidate": record, "candidate_source": MODULE, "validation": {"ok": True}, "cycle": 2,
             "active": {"id": "llm_greedy@0"}, "history": []}  # fmt: skip
    update = inject(state, SimpleNamespace(context=context))  # type: ignore[arg-type]
    assert update["candidate"] is None and update["history"][-1]["event"] == "refused"
    event = next(ledger.events("inject"))
    assert not event["injected"] and "could not be built" in event["reason"]
    saved = json.loads((tmp_path / "run" / "mechanisms" / "TabuUCB-12345678" / "record.json").read_text())
    assert saved["status"] == "refused"


def listing(argv: list[str], monkeypatch) -> tuple[int, str]:
    out = io.StringIO()
    monkeypatch.setattr(store, "console", Console(file=out, width=80, color_system=None))
    return store.main_mechanisms(argv), out.getvalue()


@pytest.fixture(scope="module")
def capable_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, ScriptedChatModel]:
    """A Level-2 generate-mode run of 18 experiments in segments of 2 against the scripted capable model: eight
    cycles, each answered as PLAN says."""
    tmp_path = tmp_path_factory.mktemp("capable")
    run_dir = tmp_path / "run"
    llm = ScriptedChatModel(script=[capable_model(run_dir)], cycle=True)
    settings = config(tmp_path, level="2", iterations=17, segment=2, generate_mode="generate")
    final = execute(settings, llm=llm, executor=SyntheticExecutor())
    return final, run_dir, llm


def test_every_realistic_module_is_injected_and_runs_as_the_propose_node(capable_run):
    final, run_dir, _ = capable_run
    ledger = Ledger(run_dir)
    assert final["stop_reason"] == "all iterations done" and len(final["inner"]["experiments"]) == 18
    injected = [e for e in ledger.events("inject") if e["injected"]]
    assert [e["mechanism"].split("@")[0] for e in injected] == list(GOOD)
    calls = list(ledger.events("mechanism_call"))
    for event in injected:
        ran = [c for c in calls if c["mechanism"] == event["mechanism"]]
        assert len(ran) == 2 and all(c["ok"] for c in ran), (event["mechanism"], ran)
        made = [e for e in final["inner"]["experiments"] if e["mechanism"] == event["mechanism"]]
        assert len(made) == 2
        folder = run_dir / "mechanisms" / event["mechanism"].replace("@", "-")
        assert record_name((folder / "source.py").read_text()) == event["mechanism"].split("@")[0]
        assert json.loads((folder / "record.json").read_text())["status"] in ("injected", "kept", "rolled_back")
    # each judged after its segment, but the last: the run ends with its segment
    assert [e["mechanism"] for e in ledger.events("compare")] == [e["mechanism"] for e in injected[:-1]]


def test_every_broken_answer_is_repaired_or_refused_with_its_reason_kept(capable_run):
    _, run_dir, _ = capable_run
    ledger = Ledger(run_dir)
    refused = [e for e in ledger.events("validate") if not e["ok"]]
    reasons = [" ".join(e["errors"]) for e in refused]
    expected = [
        "def propose(view):",  # wrong entry name
        "syntax error",
        "nests expressions too deeply",
        "defining '__getitem__' is not allowed",
        "import of '__future__' is not allowed",
        "NAME has 85 characters",
        "sys._getframe",  # collections.namedtuple, refused by the sandbox when it loads
    ]
    assert len(reasons) == len(expected)
    for reason, fragment in zip(reasons, expected, strict=True):
        assert fragment in reason, (fragment, reason)
    nested = [e for e in ledger.events("llm_call") if e.get("node") == "generate" and not e["ok"]]
    assert len(nested) == 2 and all("did not validate" in e["error"] for e in nested)  # nested outputs: re-asked
    for event in refused:  # each refused candidate keeps its source, diagnosis and report
        folder = run_dir / "mechanisms" / event["mechanism"].replace("@", "-")
        assert (folder / "source.py").exists() and json.loads((folder / "diagnosis.json").read_text())["bottleneck"]
        assert json.loads((folder / "validation.json").read_text())["errors"] == event["errors"]
        assert json.loads((folder / "record.json").read_text())["status"] == "refused"
    assert sum(len(cycle) for cycle in PLAN) == len(GOOD) + len(expected) + len(nested)


def test_the_prompt_the_model_read_gave_this_runs_space_and_its_repairs(capable_run):
    _, _, llm = capable_run
    generate_calls = [m for m in llm.calls if m[0].content == GENERATE_SYSTEM]
    first = generate_calls[0][1].content
    assert "| TOTAL_BATCH_TOKENS | int | [1024, 1048576] | log | DEVICE_BATCH_SIZE*SEQ_LEN |" in first
    assert "2 repair round(s) remain" in first and "next 2 experiments" in first
    repair = next(m[1].content for m in generate_calls if "refused by the validator" in m[1].content)
    assert "def propose(view):" in repair and "1 repair round(s) remain" in repair


def test_mechanisms_listing_and_show_work_for_every_id(capable_run, monkeypatch):
    _, run_dir, _ = capable_run
    code, text = listing([str(run_dir)], monkeypatch)
    assert code == 0
    ids = [json.loads(p.read_text())["id"] for p in (run_dir / "mechanisms").glob("*/record.json")]
    assert len(ids) == 15  # 8 injected + 7 refused (the nested answer never became a candidate)
    assert max(len(line) for line in text.splitlines()) <= 80
    for mechanism_id in ids:
        assert mechanism_id in text, f"{mechanism_id} is not whole in the 80-column listing"
        code, shown = listing([str(run_dir), "--show", mechanism_id], monkeypatch)
        assert code == 0 and "NAME" in shown and mechanism_id in shown
    assert listing([str(run_dir), "--show", "NoSuch@00000000"], monkeypatch)[0] == 1
    assert listing([str(run_dir / "nothing-here"), "--show", ids[0]], monkeypatch)[0] == 2
    assert listing(["--show", "tabu"], monkeypatch)[0] == 0
    assert listing(["--show", "no_such_builtin"], monkeypatch)[0] == 1


def test_a_finished_capable_run_resumes_to_the_same_end(capable_run):
    final, run_dir, _ = capable_run
    llm = ScriptedChatModel(script=[capable_model(run_dir)], cycle=True)
    again = execute(RunConfig.load(run_dir), llm=llm, executor=SyntheticExecutor())
    assert again["inner"]["experiments"] == final["inner"]["experiments"] and not llm.calls


OUTER_NODES = ("segment_start", "adjust", "analyze", "generate", "validate", "inject", "compare")  # their events


def kinds(run_dir: Path) -> list[str]:
    trace = run_dir / "trace.jsonl"
    found = []
    for line in trace.read_text().splitlines() if trace.exists() else []:
        try:
            found.append(json.loads(line)["kind"])
        except (json.JSONDecodeError, KeyError):
            continue
    return found


@pytest.mark.slow
def test_a_kill_at_every_outer_node_then_resume_finishes_the_capable_run(tmp_path):
    """kill -9 once right after each outer node writes its event (so the kill lands in it or the node after it),
    each time resuming in a new process; the run still ends with every experiment once and the planned modules."""
    import signal
    import subprocess
    import sys
    import time

    sys.path.insert(0, str(ROOT / "scripts"))
    import soak

    run_dir, iterations = tmp_path / "run", 9
    command = [sys.executable, str(ROOT / "tests" / "capable_run.py"), str(run_dir), str(iterations), "0.2"]
    landed = []
    for node in OUTER_NODES:
        seen = kinds(run_dir).count(node)
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 180
        while proc.poll() is None and kinds(run_dir).count(node) == seen and time.monotonic() < deadline:
            time.sleep(0.02)
        assert proc.poll() is None, f"the run ended or failed before a {node} event: {proc.stderr.read()[-2000:]!r}"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()  # type: ignore[union-attr]
        landed.append(kinds(run_dir)[-1])
    assert len(landed) == len(OUTER_NODES)
    final = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr[-3000:]
    report = soak.check(run_dir, iterations + 1, synthetic=True)
    assert report["ok"], report["problems"]
    assert report["stop_reason"] == "all iterations done"
    ledger = Ledger(run_dir)
    injected = [e["mechanism"].split("@")[0] for e in ledger.events("inject") if e["injected"]]
    assert injected == list(GOOD)[:4]  # four cycles: the plan's first four modules, each injected once
    refused = [" ".join(e["errors"]) for e in ledger.events("validate") if not e["ok"]]
    assert len(refused) == 2 and "def propose(view):" in refused[0] and "syntax error" in refused[1]
    for mechanism_id in {e["mechanism"] for e in ledger.events("inject") if e["injected"]}:
        assert any(c["mechanism"] == mechanism_id and c["ok"] for c in ledger.events("mechanism_call"))


def test_the_docs_state_the_policys_rules_and_their_example_passes_validation():
    docs = (ROOT / "docs" / "mechanisms.md").read_text()
    block = re.search(r"<!-- policy rules:[^\n]*-->\n(.*?)<!-- end of policy rules -->", docs, re.S)
    expected = "".join(f"- {rule.text}\n" for rule in policy.policy_rules())
    assert block is not None and block.group(1) == expected, (
        "docs/mechanisms.md states other rules than mechanisms/policy.py enforces; its block should read:\n" + expected
    )
    example = re.search(r"## A worked example.*?```python\n(.*?)```", docs, re.S)
    assert example is not None
    report = validate_mechanism(example.group(1), SPACE, synthetic_trace(SPACE, 2), seed=0)
    assert report.ok, report.errors


def test_the_main_commands_take_a_surrogate_executor_and_label_its_results(tmp_path, monkeypatch):
    import argparse

    from support import change

    from graphs.cli import add_run_flags, config_from
    from graphs.report import write_report
    from trials.surrogate import SurrogateExecutor

    samples = ROOT / "ablation" / "data" / "surrogate_samples.csv"
    for bilevel in (True, False):  # python -m graphs.bilevel and python -m graphs.inner
        ap = argparse.ArgumentParser()
        add_run_flags(ap, bilevel=bilevel)
        args = ap.parse_args(["--executor", f"surrogate:{samples.relative_to(ROOT)}", "--run-dir", str(tmp_path / "x")])
        monkeypatch.chdir(ROOT)
        assert config_from(args, bilevel=bilevel).executor == f"surrogate:{samples}"
        with pytest.raises(SystemExit):
            ap.parse_args(["--executor", "surrogate:/no/such/samples.csv"])
        with pytest.raises(SystemExit):
            ap.parse_args(["--executor", "cloud"])

    surrogate = SurrogateExecutor.load(samples)  # fitted once for this test
    monkeypatch.setattr(SurrogateExecutor, "load", classmethod(lambda cls, path: surrogate))
    wrong = RunConfig(
        run_dir=str(tmp_path / "wrong"), level="1", iterations=2, budget_s=5.0, executor=f"surrogate:{samples}"
    )
    with pytest.raises(ValueError, match="run it with --budget-s 20"):
        execute(wrong, llm=ScriptedChatModel(script=[change("MATRIX_LR", 0.05)], cycle=True))

    run_dir = tmp_path / "run"
    settings = RunConfig(run_dir=str(run_dir), level="1", iterations=3, segment=4, budget_s=20.0,
                         executor=f"surrogate:{samples}")  # fmt: skip
    llm = ScriptedChatModel(script=[change("MATRIX_LR", v) for v in (0.05, 0.06, 0.07)], cycle=True)
    execute(settings, llm=llm)
    rows = (run_dir / "results.tsv").read_text().splitlines()[1:]
    assert len(rows) == 4 and all(row.split("\t")[4].startswith("[surrogate] ") for row in rows)
    records = list(Ledger(run_dir).events("experiment"))
    assert len(records) == 4 and all(r["surrogate"] == f"surrogate:{samples}" for r in records)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["surrogate"] is True and summary["executor"] == f"surrogate:{samples}"
    report = write_report(run_dir).read_text()
    assert report.startswith(f"# Run report: {run_dir.name} (surrogate)") and "no training happened" in report
