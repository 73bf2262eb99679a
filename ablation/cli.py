"""`python -m graphs.bilevel ablation ...`: run, resume and report an ablation; collect the surrogate's samples.

    python -m graphs.bilevel ablation --groups A,B,C,D,random,tpe --repeats 10 --iterations 30 \\
        --executor surrogate:ablation/data/surrogate_samples.csv --out runs/ablation-surrogate
    python -m graphs.bilevel ablation resume runs/ablation-surrogate
    python -m graphs.bilevel ablation report runs/ablation-surrogate
    python -m graphs.bilevel ablation sample --points 56 --replicates 4 --budget-s 20
    python -m graphs.bilevel ablation fit [--csv ablation/data/surrogate_samples.csv]
    python -m graphs.bilevel ablation pack runs/ablation-surrogate docs/results/ablation-surrogate.tar.gz
    python -m graphs.bilevel ablation unpack docs/results/ablation-real-8.tar.gz runs/ablation-real-8   # then resume
    python -m graphs.bilevel ablation imp runs/ablation-surrogate --k 10 --seeds 10
    python -m graphs.bilevel ablation bbob --functions 1,8,15,21 --instances 1,2 --seeds 3 --budget 100
    python -m graphs.bilevel ablation page docs/results.md [--check]
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import tarfile
import time
from contextlib import ExitStack
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console

from ablation.harness import GROUP_NAMES, Ablation, AblationSpec, spec_defaults
from ablation.pack import PackError, pack, unpack
from ablation.plots import plot_surrogate_check
from ablation.report import write_ablation_report
from ablation.sampling import DEFAULT_CSV, collect_samples
from ablation.surrogate_check import check_against
from ablation.surrogate_quality import fit_quality
from checkpoints.run_folder import write_json_atomic
from graphs.run_config import new_run_dir, run_defaults
from graphs.runner import executor_for
from trials.launcher import Executor, TrainerSettings, Trial
from trials.machine_load import wait_for_quiet
from trials.surrogate import load_model

MAX_RETRAINS = 3  # --retrain-above: trainings of one trial set aside as contended, at most

console = Console()


def main_sample(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphs.bilevel ablation sample")
    ap.add_argument("--points", type=int, default=56, help="design points (half global, half around the default)")
    ap.add_argument("--replicates", type=int, default=4, help="the default configuration, trained with other seeds")
    ap.add_argument("--budget-s", type=float, default=run_defaults()["budget_s"])
    ap.add_argument("--seed", type=int, default=0, help="seed of the Latin hypercube designs")
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--work-dir", type=Path, default=Path("runs/surrogate-sampling"))
    ap.add_argument("--memory-gb", type=float, default=6.0, help="a trial allocating more crashes (RLIMIT_DATA)")
    ap.add_argument("--kill-after-s", type=float, help="hard timeout of one training (default: the trainer's)")
    ap.add_argument(
        "--pause-while",
        metavar="PATTERN",
        help="before each point, wait while `pgrep -f PATTERN` finds a "
        "process (e.g. gpt.bench: another engineer's timing benchmark)",
    )
    ap.add_argument(
        "--retrain-above-load",
        type=float,
        metavar="LOAD",
        help="move samples measured while the 1-minute load average was above LOAD (or unknown) to "
        "<csv>_loaded.csv and train them again (a fixed wall-clock budget measures the load too)",
    )
    args = ap.parse_args(argv)
    cap_memory(args.memory_gb)
    rows = collect_samples(
        args.csv,
        args.work_dir,
        args.points,
        args.replicates,
        args.budget_s,
        args.seed,
        kill_after_s=args.kill_after_s,
        memory_gb=args.memory_gb,
        log=console.print,
        before_each=lambda: wait_while(args.pause_while),
        retrain_above_load=args.retrain_above_load,
    )
    console.print(f"{len(rows)} samples in {args.csv}")
    return 0


def cap_memory(gb: float | None) -> None:
    """Cap this process's data segment; the trainings it starts inherit the cap and crash above it (out of memory)
    instead of pushing a shared machine into its OOM killer."""
    if gb is not None:
        resource.setrlimit(resource.RLIMIT_DATA, (int(gb * 2**30), resource.getrlimit(resource.RLIMIT_DATA)[1]))


def ancestors() -> set[int]:
    """This process and its parents (their command lines hold the pattern itself)."""
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        stat = Path(f"/proc/{pid}/stat").read_text()
        pid = int(stat.rsplit(")", 1)[1].split()[1])
    return pids


def matching(pattern: str) -> list[int]:
    """Other processes whose command line matches ``pattern``, leaving out this one, its parents and the other
    waiters (their command lines name the pattern after --pause-while: two of them would wait for each other)."""
    found = subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout.split()
    return [int(p) for p in found if int(p) not in ancestors() and "--pause-while" not in command_line(int(p))]


def command_line(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:  # gone since pgrep saw it
        return []


def wait_while(pattern: str | None, poll_s: float = 60.0) -> None:
    """Block while another process matching ``pattern`` runs (polled every minute)."""
    while pattern and matching(pattern):
        console.print(f"waiting: {pattern!r} is running ({time.strftime('%H:%M:%S')})")
        time.sleep(poll_s)


def add_run_flags(ap: argparse.ArgumentParser) -> None:
    """The flags of an ablation; every default is AblationSpec's (ablation/harness.py), never one of its own."""
    spec = spec_defaults()
    ap.add_argument("--groups", default=",".join(GROUP_NAMES), help=f"comma-separated, of {', '.join(GROUP_NAMES)}")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--iterations", type=int, default=spec["iterations"], help="experiments per run after its baseline")
    ap.add_argument("--budget-s", type=float, default=spec["budget_s"], help="training budget of each experiment")
    ap.add_argument("--segment", type=int, default=spec["segment"], help="inner iterations per outer cycle")
    ap.add_argument("--seed", type=int, default=spec["seed"], help="repeat r runs with seed + r in every group")
    ap.add_argument("--executor", default=spec["executor"], help="local | surrogate:PATH (a samples CSV)")
    ap.add_argument("--noise-repeats", type=int, default=spec["noise_repeats"], help="baseline trainings, other seeds")
    ap.add_argument("--confirm", type=int, default=spec["confirm"], help="re-trainings of each run's best, fresh seeds")
    ap.add_argument("--out", type=Path, help="the ablation folder (default runs/ablation-<time>)")
    ap.add_argument("--llm-model", dest="model")
    ap.add_argument("--llm-base-url", dest="base_url")
    ap.add_argument("--max-llm-calls", type=int, help="per run")
    ap.add_argument("--device", default=spec["device"])
    ap.add_argument("--corpus", default=spec["corpus"])
    ap.add_argument("--generate-mode", choices=["auto", "compose", "generate"], default=spec["generate_mode"])
    ap.add_argument("--kill-after-s", type=float, help="hard timeout of one training")
    ap.add_argument("--memory-gb", type=float, help="memory cap of every training (RLIMIT_DATA), as in `sample`")
    ap.add_argument("--llm-threads", type=int, help="threads of the embedded model's server (default: its own)")
    ap.add_argument(
        "--llm-attempts",
        type=int,
        default=spec["llm_attempts"],
        help="answers asked for per LLM call before the recorded fallback",
    )


def add_runtime_flags(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--stop-after-s", type=float, help="start no new run after this many seconds (then resume)")
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="runs at once, each in its own process with its own model server (surrogate executor only)",
    )
    ap.add_argument(
        "--pause-while",
        metavar="PATTERN",
        help="before each training, wait while another process matching PATTERN runs (e.g. gpt.bench)",
    )
    ap.add_argument(
        "--quiet-below",
        type=float,
        metavar="SHARE",
        help="before each training, wait until everything else uses less than SHARE of the CPU (e.g. 0.1; Linux; "
        "each training records the share measured while it ran either way)",
    )
    ap.add_argument(
        "--retrain-above",
        type=float,
        metavar="SHARE",
        help="train again (same trial, same seed; after waiting for --quiet-below) a training during which everything "
        f"else used more than SHARE of the CPU, at most {MAX_RETRAINS} times; the set-aside attempts are kept in the "
        "trial's folder under contended/ and listed in its outcome (e.g. 0.05)",
    )


class PausingExecutor:
    """The run's own executor, waiting before each trial while another engineer's benchmark runs and, with
    ``quiet_below``, until everything else uses less than that share of the machine's CPU. With ``retrain_above``,
    a training during which everything else used more than that share was measured under contention — a fixed
    wall-clock budget then measures the machine, not the configuration — so it is set aside and trained again."""

    def __init__(
        self,
        inner: Executor,
        pattern: str | None,
        quiet_below: float | None = None,
        retrain_above: float | None = None,
        max_retrains: int = MAX_RETRAINS,
    ) -> None:
        self.inner, self.pattern, self.quiet_below = inner, pattern, quiet_below
        self.retrain_above, self.max_retrains = retrain_above, max_retrains

    def run(self, trial: Trial, settings: TrainerSettings) -> dict[str, Any]:
        contended: list[dict[str, Any]] = []
        while True:
            wait_while(self.pattern)
            if self.quiet_below is not None:
                wait_for_quiet(self.quiet_below, log=console.print)
            outcome = self.inner.run(trial, settings)
            share = outcome.get("other_cpu_share")
            if self.retrain_above is None or share is None or share <= self.retrain_above:
                break
            if len(contended) >= self.max_retrains:
                console.print(f"{trial.experiment_id}: still contended after {len(contended)} retrainings; kept")
                break
            contended.append(set_aside(trial.folder, outcome, len(contended)))
            console.print(
                f"{trial.experiment_id}: everything else used {share:.0%} of the CPU while it trained "
                f"(more than {self.retrain_above:.0%}); set aside, training it again"
            )
        return {**outcome, "contended": contended} if contended else outcome

    def run_batch(self, trials: list[Trial], settings: TrainerSettings) -> list[dict[str, Any]]:
        return [self.run(trial, settings) for trial in trials]


def set_aside(folder: Path, outcome: dict[str, Any], attempt: int) -> dict[str, Any]:
    """Move a contended attempt's log and result to ``folder``/contended/a<N>/; what the outcome records of it."""
    target = folder / "contended" / f"a{attempt}"
    target.mkdir(parents=True, exist_ok=True)
    for name in ("log.txt", "result.json"):
        if (folder / name).exists():
            os.replace(folder / name, target / name)
    result = outcome.get("result")
    result = result if isinstance(result, dict) else {}
    record = {
        "attempt": attempt,
        "other_cpu_share": outcome.get("other_cpu_share"),
        "ok": outcome.get("ok"),
        "val_bpb": result.get("val_bpb"),
        "num_steps": result.get("num_steps"),
        "wall_seconds": outcome.get("wall_seconds"),
        "error": outcome.get("error"),
    }
    write_json_atomic(target / "outcome.json", record)
    return record


def main_run(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphs.bilevel ablation")
    add_run_flags(ap)
    add_runtime_flags(ap)
    args = ap.parse_args(argv)
    if args.executor.startswith("surrogate:"):  # runs resume from anywhere: name the samples by an absolute path
        args.executor = f"surrogate:{Path(args.executor.split(':', 1)[1]).resolve()}"
    spec = AblationSpec(
        groups=[g.strip() for g in args.groups.split(",") if g.strip()],
        repeats=args.repeats,
        iterations=args.iterations,
        budget_s=args.budget_s,
        segment=args.segment,
        seed=args.seed,
        executor=args.executor,
        noise_repeats=args.noise_repeats,
        confirm=args.confirm,
        device=args.device,
        corpus=args.corpus,
        model=args.model,
        base_url=args.base_url,
        max_llm_calls=args.max_llm_calls,
        generate_mode=args.generate_mode,
        kill_after_s=args.kill_after_s,
        memory_gb=args.memory_gb,
        llm_threads=args.llm_threads,
        llm_attempts=args.llm_attempts,
    )
    out = args.out or new_run_dir(Path("runs"), "ablation")
    return finish(Ablation.open(out, spec), args)


def finish(ablation: Ablation, args: argparse.Namespace) -> int:
    cap_memory(ablation.spec.memory_gb)
    console.print(
        f"ablation folder [bold]{ablation.root}[/]: {', '.join(ablation.spec.groups)} x "
        f"{ablation.spec.repeats} repeats, trainer {ablation.spec.executor}"
    )
    executor = None
    if args.pause_while or args.quiet_below is not None or args.retrain_above is not None:
        inner = executor_for(ablation.spec.run_config(ablation.root, "A", 0))
        executor = PausingExecutor(inner, args.pause_while, args.quiet_below, args.retrain_above)
    done = ablation.run(executor=executor, stop_after_s=args.stop_after_s, workers=args.workers, log=console.print)
    report = write_ablation_report(ablation.root)
    console.print(f"report: [bold]{report}[/]" + ("" if done else " (partial: resume to finish)"))
    return 0


def main_resume(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphs.bilevel ablation resume")
    ap.add_argument("out", type=Path)
    ap.add_argument("--repeats", type=int, help="grow the ablation to this many repeats (never fewer)")
    ap.add_argument("--noise-repeats", type=int, help="grow the noise floor to this many trainings (never fewer)")
    add_runtime_flags(ap)
    args = ap.parse_args(argv)
    ablation = Ablation.open(args.out)
    ablation.extend(args.repeats, args.noise_repeats)
    return finish(ablation, args)


def main_ablation_report(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphs.bilevel ablation report")
    ap.add_argument("out", type=Path)
    console.print(f"report: [bold]{write_ablation_report(ap.parse_args(argv).out)}[/]")
    return 0


def main_fit(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphs.bilevel ablation fit")
    ap.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    ap.add_argument(
        "--against",
        type=Path,
        help="a real ablation folder: check the surrogate's predictions for the trainings its searches made "
        "(written to FOLDER/report/surrogate_check.json)",
    )
    args = ap.parse_args(argv)
    model = load_model(args.csv)
    if args.against:
        check = check_against(model, args.against)
        write_json_atomic(args.against / "report" / "surrogate_check.json", check)
        plot_surrogate_check(check, args.against / "report" / "surrogate_check.png")
        check.pop("pairs")
    else:
        check = fit_quality(model)
        check.pop("cv_predictions")
    for key, value in check.items():
        console.print(f"{key:32} {value:.4f}" if isinstance(value, float) else f"{key:32} {value}")
    return 0


def main_pack(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m graphs.bilevel ablation pack")
    ap.add_argument("out", type=Path, help="the ablation folder")
    ap.add_argument("archive", type=Path, help="the .tar.gz to write")
    args = ap.parse_args(argv)
    files = pack(args.out, args.archive)
    console.print(f"{len(files)} files, {args.archive.stat().st_size / 1e6:.1f} MB: [bold]{args.archive}[/]")
    return 0


def main_unpack(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m graphs.bilevel ablation unpack",
        description="an ablation's pack as a resumable folder: finished repeats kept, and the finished runs of an "
        "unfinished repeat when they trained in this sitting (same boot id); every other run reset to pending",
    )
    ap.add_argument("archive", type=Path, help="the .tar.gz that `ablation pack` wrote")
    ap.add_argument("out", type=Path, help="the ablation folder to create")
    args = ap.parse_args(argv)
    try:
        runs = unpack(args.archive, args.out)
    except (PackError, OSError, tarfile.TarError) as e:
        console.print(f"[red]{args.archive}: {e}[/]")
        return 2
    console.print(
        f"{args.out}: {len(runs['kept'])} runs finished, {len(runs['reset'])} reset to pending "
        f"({', '.join(runs['reset']) or 'none'}); continue with `ablation resume {args.out}`"
    )
    return 0


def main_page(argv: list[str]) -> int:
    from ablation.page import PageError, refresh

    ap = argparse.ArgumentParser(
        prog="python -m graphs.bilevel ablation page",
        description="regenerate the tables a results page marks (<!-- table KIND SOURCE --> ... <!-- /table -->) "
        "from the folders they were measured in",
    )
    ap.add_argument("page", type=Path, help="the markdown page, e.g. docs/results.md")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when the page is out of date")
    args = ap.parse_args(argv)
    try:
        changed = refresh(args.page, check=args.check)
    except (PageError, OSError) as e:
        console.print(f"[red]{args.page}: {e}[/]")
        return 2
    if args.check:
        console.print(f"{args.page}: " + ("[red]out of date[/]" if changed else "up to date"))
        return 1 if changed else 0
    console.print(f"{args.page}: " + ("tables regenerated" if changed else "already up to date"))
    return 0


def main_imp(argv: list[str]) -> int:
    from ablation.imp import DEFAULT_SURROGATE, ImpSettings, measure, table

    ap = argparse.ArgumentParser(prog="python -m graphs.bilevel ablation imp")
    ap.add_argument("out", type=Path, help="a finished ablation folder")
    ap.add_argument("--k", type=int, default=10, help="experiments after the baseline, per frozen run")
    ap.add_argument("--seeds", type=int, default=10, help="held-out seeds (30000, 30001, ...)")
    ap.add_argument("--executor", default=f"surrogate:{DEFAULT_SURROGATE}", help="surrogate:PATH (a samples CSV)")
    ap.add_argument("--extra", default="", help="built-ins measured as well, comma-separated (e.g. cma_es,tpe)")
    args = ap.parse_args(argv)
    executor = f"surrogate:{Path(args.executor.split(':', 1)[1]).resolve()}" if ":" in args.executor else args.executor
    settings = ImpSettings(args.k, args.seeds, executor, [e.strip() for e in args.extra.split(",") if e.strip()])
    figures = measure(args.out, settings, log=console.print)
    console.print(table(figures))
    console.print(f"report: [bold]{args.out / 'report' / 'imp.md'}[/]")
    return 0


def main_bbob(argv: list[str]) -> int:
    from ablation.bbob import (
        DEFAULT_FUNCTIONS,
        NO_LLM_MECHANISMS,
        OPTUNA_METHODS,
        BbobSettings,
        asks_llm,
        run_benchmark,
        table,
    )
    from ablation.harness import with_seed
    from llm.client import LLMSettings, open_chat_model

    def ints(text: str) -> list[int]:
        return [int(x) for x in text.split(",") if x.strip()]

    ap = argparse.ArgumentParser(prog="python -m graphs.bilevel ablation bbob")
    ap.add_argument("--functions", type=ints, default=list(DEFAULT_FUNCTIONS), help="BBOB function ids, 1-24")
    ap.add_argument("--instances", type=ints, default=[1, 2])
    ap.add_argument("--seeds", type=int, default=3, help="runs per method, function and instance")
    ap.add_argument("--budget", type=int, default=100, help="evaluations per run, the centre included")
    ap.add_argument("--dimension", type=int, default=5)
    ap.add_argument(
        "--methods",
        default=",".join([*NO_LLM_MECHANISMS, *OPTUNA_METHODS]),
        help="built-in mechanisms (PROPOSER+DECIDER pairs a decide one), mechanism modules (.py, sandboxed), kept "
        "mechanisms (a run's mechanisms/<id>/record.json), "
        "optuna_cmaes, optuna_tpe, optuna_random",
    )
    ap.add_argument("--out", type=Path, help="the results folder (default runs/bbob-<time>)")
    ap.add_argument(
        "--llm",
        action="store_true",
        help="answer the asks of LLM-driven mechanisms (llm_greedy, tabu, ..., a kept mechanism's record.json) with "
        "the chat model: the embedded one unless BILEVEL_MODEL/BILEVEL_BASE_URL name an endpoint",
    )
    args = ap.parse_args(argv)
    settings = BbobSettings(
        args.functions,
        args.instances,
        args.seeds,
        args.budget,
        args.dimension,
        [m.strip() for m in args.methods.split(",") if m.strip()],
    )
    out = args.out or new_run_dir(Path("runs"), "bbob")
    unanswered = [m for m in settings.methods if asks_llm(m)]
    if unanswered and not args.llm:
        console.print(f"[red]{', '.join(unanswered)} ask the LLM: add --llm[/]")
        return 2
    with ExitStack() as stack:
        llm_for, model = None, None
        if args.llm and unanswered:
            out.mkdir(parents=True, exist_ok=True)
            llm, model = stack.enter_context(open_chat_model(LLMSettings.resolve(), server_log=out / "llm_server.log"))
            llm_for = partial(with_seed, llm)
        figures = run_benchmark(out, settings, log=console.print, llm_for=llm_for, model=model)
    console.print(table(figures))
    console.print(f"results: [bold]{out / 'bbob.md'}[/]")
    return 0


def main_worker(argv: list[str]) -> int:
    """A worker process of `--workers`: one run of the ablation folder (started by the harness, not by hand)."""
    ap = argparse.ArgumentParser(prog="python -m graphs.bilevel ablation worker")
    ap.add_argument("out", type=Path)
    ap.add_argument("run_id")
    ap.add_argument("threads", type=int)
    args = ap.parse_args(argv)
    ablation = Ablation.open(args.out)
    cap_memory(ablation.spec.memory_gb)
    ablation.work(args.run_id, args.threads)
    return 0


COMMANDS = {
    "sample": main_sample,
    "resume": main_resume,
    "report": main_ablation_report,
    "fit": main_fit,
    "pack": main_pack,
    "unpack": main_unpack,
    "worker": main_worker,
    "imp": main_imp,
    "bbob": main_bbob,
    "page": main_page,
}


def main_ablation(argv: list[str]) -> int:
    if argv and argv[0] in COMMANDS:
        return COMMANDS[argv[0]](argv[1:])
    return main_run(argv)
