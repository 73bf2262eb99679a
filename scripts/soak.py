"""Kill -9 soak: run a bilevel run, kill it with SIGKILL at random moments, resume it each time, then check that no
experiment was lost or duplicated and that results.tsv, trace.jsonl and the checkpoint agree.

    python scripts/soak.py                     # 20 kills; scripted model + synthetic executor (about 2 minutes)
    python scripts/soak.py --kills 8 --iterations 14
    python scripts/soak.py --real --kills 20   # the embedded model + the real trainer (slow: see docs/reliability.md)

The default run is Level 2 in "generate" mode: the scripted model writes a valid mechanism, so kills also land in
validation (sandbox children), injection and the comparison of segments. It prints a JSON report and exits 1 when
a check fails.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from checkpoints import trace  # noqa: E402

# A mechanism as a capable model writes it: a coordinate step on the least-tried free parameter.
MECHANISM = """NAME = "coordinate"
TARGET = "propose"


def propose(view):
    tried = {}
    for record in view.trace:
        for name in record.get("changes", {}):
            tried[name] = tried.get(name, 0) + 1
    free = sorted(view.free_names, key=lambda n: (tried.get(n, 0), n))
    changes = view.space.neighbour(view.incumbent, view.rng, [free[view.iteration % 3]], 0.2)
    return {"changes": changes, "hypothesis": "coordinate step", "expected_direction": "lower"}
"""
LR_VALUES = (0.05, 0.06, 0.07, 0.09, 0.1, 0.12, 0.15, 0.02, 0.03, 0.11)


def scripted_answer(messages: list[Any]) -> Any:
    """The scripted model: answers each structured call by the node that asks (read from the system prompt)."""
    from support import change

    from nodes.prompts import ADJUST_SYSTEM, ANALYZE_SYSTEM, COMPOSE_SYSTEM, GENERATE_SYSTEM

    system = messages[0].content
    if system == ADJUST_SYSTEM:
        return {"strategy": "exploit", "freeze": [], "unfreeze": [], "guidance": "small steps"}
    if system == ANALYZE_SYSTEM:
        return {"finding": "uneven", "ideas": ["coordinate descent"]}
    if system == COMPOSE_SYSTEM:
        return {"family": "tabu", "params": [], "rationale": "avoid repeats"}
    if system == GENERATE_SYSTEM:
        return {"name": "coordinate", "source": MECHANISM, "rationale": "coordinate descent"}
    turn = sum(1 for m in messages if m.type == "human")  # re-asks see their own rejection
    return change("MATRIX_LR", LR_VALUES[(len(str(messages[-1].content)) + turn) % len(LR_VALUES)])


def child(run_dir: Path, iterations: int, segment: int, delay: float, seed: int) -> None:
    """Run (or resume) the soak's run in this process: scripted model, synthetic executor."""
    from support import SyntheticExecutor

    from graphs.run_config import RunConfig
    from graphs.runner import execute
    from llm.scripted import ScriptedChatModel

    if (run_dir / "run.json").exists():
        config = RunConfig.load(run_dir)
    else:
        config = RunConfig(
            run_dir=str(run_dir),
            level="2",
            iterations=iterations,
            segment=segment,
            budget_s=1.0,
            seed=seed,
            generate_mode="generate",
        )
    llm = ScriptedChatModel(script=[scripted_answer], cycle=True)
    execute(config, llm=llm, executor=SyntheticExecutor(delay))


def run_command(args: argparse.Namespace, run_dir: Path) -> list[str]:
    """The command that starts the run, or resumes it once it has started."""
    if not args.real:
        return [
            sys.executable, __file__, "--child", str(run_dir), "--iterations", str(args.iterations),
            "--segment", str(args.segment), "--delay", str(args.delay), "--seed", str(args.seed),
        ]  # fmt: skip
    if (run_dir / "run.json").exists():
        return [sys.executable, "-m", "graphs.bilevel", "resume", str(run_dir)]
    return [
        sys.executable, "-m", "graphs.bilevel", "run", "--run-dir", str(run_dir), "--level", "2",
        "--iterations", str(args.iterations), "--segment", str(args.segment), "--budget-s", str(args.budget_s),
        "--seed", str(args.seed),
    ]  # fmt: skip


def trace_kinds(run_dir: Path) -> list[str]:
    return [str(e["kind"]) for e in trace.read(run_dir).events if "kind" in e]


def wait_started(proc: subprocess.Popen[bytes], run_dir: Path, starts_before: int, timeout_s: float = 120.0) -> None:
    """Until this start has written its run_start event (its imports done, the run open): kills land in the work."""
    deadline = time.monotonic() + timeout_s
    while proc.poll() is None and time.monotonic() < deadline:
        if trace_kinds(run_dir).count("run_start") > starts_before:
            return
        time.sleep(0.05)


def landed(before: list[str], after: list[str]) -> str:
    """Where a kill landed: the kind of the last event this start wrote."""
    return after[-1] if len(after) > len(before) else "(no event yet)"


def ancestors() -> set[int]:
    """This process and the ones above it (a `timeout` wrapper names the run folder too)."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int((Path(f"/proc/{pid}") / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            break
    return pids


def leftovers(run_dir: Path) -> list[str]:
    """Live processes of the run: naming its folder, working in it, or writing to a file in it (the model server
    logs to run_dir/llm_server.log, a trainer works in its experiment's folder)."""
    found, mine, root = [], ancestors(), str(run_dir)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) in mine:
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
            places = [os.readlink(entry / "cwd"), *(os.readlink(entry / "fd" / fd) for fd in ("1", "2"))]
        except (OSError, IndexError):
            continue
        if state not in ("Z", "X") and (root in cmdline or any(p.startswith(root) for p in places)):
            found.append(f"{entry.name}: {cmdline[:120]}")
    return found


def wait_gone(run_dir: Path, timeout_s: float = 15.0) -> list[str]:
    deadline = time.monotonic() + timeout_s
    while (left := leftovers(run_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


def kill_window(args: argparse.Namespace, run_dir: Path, work_s: float, kills_left: int) -> float:
    """The longest wait before the next kill: at most --max-wait, and short enough that the kills left still fit in
    the work left at the pace measured so far — on a fast machine a fixed window would let the run finish first."""
    done = trace_kinds(run_dir).count("experiment")
    per_experiment = work_s / done if done else (args.budget_s * 2 if args.real else args.delay)
    left = max(1, args.iterations + 1 - done)
    return max(0.05, min(args.max_wait, per_experiment * left / (kills_left + 1)))


def soak(args: argparse.Namespace, run_dir: Path) -> dict[str, Any]:
    rng = random.Random(args.seed)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    kills: list[str] = []
    starts = 0
    orphans: list[str] = []
    work_s = 0.0  # seconds the run has been alive and working, over all starts
    started = time.monotonic()
    while len(kills) < args.kills:
        before = trace_kinds(run_dir)
        proc = subprocess.Popen(run_command(args, run_dir), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)  # fmt: skip
        starts += 1
        wait_started(proc, run_dir, before.count("run_start"))
        alive_from = time.monotonic()
        time.sleep(rng.uniform(0.0, kill_window(args, run_dir, work_s, args.kills - len(kills))))
        if proc.poll() is not None:  # the run ended before the kill: nothing left to kill
            _, err = proc.communicate()
            if proc.returncode != 0:
                raise RuntimeError(f"the run failed (exit {proc.returncode}):\n{err.decode()[-3000:]}")
            break
        where = landed(before, trace_kinds(run_dir))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        work_s += time.monotonic() - alive_from
        proc.stderr.close()  # type: ignore[union-attr]
        kills.append(where)
        orphans += wait_gone(run_dir)
    final = subprocess.run(
        run_command(args, run_dir), cwd=ROOT, env=env, capture_output=True, timeout=args.final_timeout_s
    )
    if final.returncode != 0:
        raise RuntimeError(f"the final resume failed (exit {final.returncode}):\n{final.stderr.decode()[-3000:]}")
    orphans += wait_gone(run_dir)
    report = check(run_dir, args.iterations + 1, synthetic=not args.real)
    report.update(
        kills=len(kills),
        kills_by_last_event=dict(Counter(kills).most_common()),
        starts=starts + 1,
        orphans=orphans,
        seconds=round(time.monotonic() - started, 1),
        run_dir=str(run_dir),
    )
    report["ok"] = report["ok"] and not orphans and len(kills) >= args.kills
    return report


def check(run_dir: Path, total: int, *, synthetic: bool) -> dict[str, Any]:
    """The ledger's consistency: every experiment once in the trace, in results.tsv and in the checkpoint."""
    events = trace.read(run_dir).events  # every record, duplicates included: what this check counts
    decided = [e for e in events if e["kind"] == "experiment"]
    ids = [e["id"] for e in decided]
    expected = [f"e{i:04d}" for i in range(total)]
    duplicated = sorted(i for i, n in Counter(ids).items() if n > 1)
    lost = sorted(set(expected) - set(ids))
    finished = Counter(e["experiment"] for e in events if e["kind"] == "train_end")
    with open(run_dir / "results.tsv") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    problems: list[str] = []
    if ids != expected:
        problems.append(f"trace experiments {ids} != {expected}")
    if sorted(finished) != expected or set(finished.values()) != {1}:
        problems.append(f"train_end events per experiment: {dict(finished)}")
    by_id = {e["id"]: e for e in decided}
    table = [(r["commit"], r["status"], r["val_bpb"]) for r in rows]
    from_trace = [(i, by_id[i]["status"], _bpb(by_id[i])) for i in ids]
    if table != from_trace:
        problems.append("results.tsv disagrees with the trace")
    state = checkpoint_state(run_dir)
    recorded = state.get("inner", {}).get("experiments", [])
    keys = ("id", "status", "val_bpb", "params")
    if [{k: e.get(k) for k in keys} for e in recorded] != [{k: by_id[i].get(k) for k in keys} for i in ids]:
        problems.append("the checkpoint's experiments disagree with the trace")
    if synthetic:
        from support import synthetic_bpb

        wrong = [e["id"] for e in decided if e["status"] != "crash" and e["val_bpb"] != synthetic_bpb(e["params"])]
        if wrong:
            problems.append(f"results that do not belong to their own proposal: {wrong}")
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary["experiments"] != total:
        problems.append(f"summary.json counts {summary['experiments']} experiments, not {total}")
    return {
        "ok": not problems,
        "problems": problems,
        "experiments": len(set(ids)),
        "expected": total,
        "lost": lost,
        "duplicated": duplicated,
        "stop_reason": state.get("stop_reason"),
    }


def checkpoint_state(run_dir: Path) -> dict[str, Any]:
    from langchain_core.runnables import RunnableConfig

    from checkpoints.sqlite import open_checkpointer
    from graphs.outer import build_outer_graph

    with open_checkpointer(run_dir) as saver:
        graph = build_outer_graph().compile(checkpointer=saver)
        return dict(graph.get_state(RunnableConfig(configurable={"thread_id": "outer"})).values)


def _bpb(record: dict[str, Any]) -> str:
    bpb = record.get("val_bpb")
    return f"{bpb:.6f}" if isinstance(bpb, float) and record["status"] != "crash" else "0.000000"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--iterations", type=int, default=60, help="experiments after the baseline")
    ap.add_argument("--segment", type=int, default=4)
    ap.add_argument("--delay", type=float, default=0.3, help="seconds each synthetic experiment takes")
    ap.add_argument("--max-wait", type=float, default=3.0, help="longest time from a (re)start's run_start to the kill")
    ap.add_argument("--budget-s", type=float, default=5.0, help="--real: training budget of each experiment")
    ap.add_argument("--final-timeout-s", type=float, default=3600.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real", action="store_true", help="the embedded model and the real trainer")
    ap.add_argument("--run-dir", type=Path, help="default: a new folder under the system's temporary folder")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        child(args.child, args.iterations, args.segment, args.delay, args.seed)
        return 0
    run_dir = (args.run_dir or Path(tempfile.mkdtemp(prefix="soak-")) / "run").resolve()
    report = soak(args, run_dir)
    print(json.dumps(report, indent=2))
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
