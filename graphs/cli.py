"""Command lines: `python -m graphs.bilevel [run|resume|draw|report|mechanisms]` and `python -m graphs.inner`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, cast

from rich.console import Console
from rich.table import Table

from graphs.run_config import RunConfig, new_run_dir, run_defaults

console = Console()
FATAL_ERRORS: tuple[type[Exception], ...] = (FileNotFoundError, RuntimeError, ValueError)
SUBCOMMANDS = ("run", "resume", "draw", "report", "mechanisms", "ablation", "dashboard")


def add_run_flags(ap: argparse.ArgumentParser, *, bilevel: bool) -> None:
    """The flags of a run; every default is RunConfig's (graphs/run_config.py), never one of its own."""
    run = run_defaults()
    ap.add_argument("--iterations", type=int, default=run["iterations"], help="experiments after the baseline")
    ap.add_argument("--budget-s", type=float, default=run["budget_s"], help="training budget of each experiment (s)")
    ap.add_argument("--seed", type=int, default=run["seed"])
    ap.add_argument("--run-dir", type=Path, help="run folder (default runs/<time>-<level>)")
    ap.add_argument("--runs-root", type=Path, default=Path("runs"))
    ap.add_argument(
        "--llm-model",
        dest="model",
        help="model name at --llm-base-url (default: the embedded "
        "SmolLM2-135M; also BILEVEL_LLM_MODEL or OPENAI_MODEL)",
    )
    ap.add_argument(
        "--llm-base-url",
        dest="base_url",
        help="an OpenAI-compatible endpoint: OpenAI, DeepSeek, vLLM, "
        "Ollama... (also BILEVEL_LLM_BASE_URL or OPENAI_BASE_URL; the key from OPENAI_API_KEY)",
    )
    ap.add_argument(
        "--mode",
        choices=["params", "code"],
        default=run["mode"],
        help="propose hyperparameter changes, or search/replace edits of train.py",
    )
    ap.add_argument("--batch", type=int, default=run["batch"], help="proposals per iteration, trained in parallel")
    ap.add_argument(
        "--executor",
        type=executor_spec,
        default=run["executor"],
        help="where trials run: local (here), ray (a Ray cluster), or surrogate:PATH (no training: val_bpb served by "
        "a model fitted on the real samples at PATH, e.g. ablation/data/surrogate_samples.csv; labelled surrogate)",
    )
    ap.add_argument(
        "--ray-address", help="auto (a `ray start` on this machine; default), host:6379 or ray://host:10001"
    )
    ap.add_argument(
        "--parallel", type=int, help="trials in flight at once (default: 1 locally; on Ray, what the cluster admits)"
    )
    ap.add_argument(
        "--overlap",
        choices=["auto", "on", "off"],
        default=run["overlap"],
        help="start each trial of a batch as soon as it is proposed, asking the next proposal while it trains (the "
        "same proposals, earlier); auto: on with --batch > 1 where the LLM does not share the trainer's cores (a "
        "remote endpoint, --device cuda, --executor ray)",
    )
    ap.add_argument(
        "--cold-trials",
        action="store_true",
        help="start every local training as a fresh process (default: fork parameter-mode trials from a warm worker)",
    )
    ap.add_argument(
        "--proposal-style",
        choices=["auto", "values", "free", "moves"],
        default=run["proposal_style"],
        help="values: the LLM picks one of the listed steps around the best (every answer valid; auto for the "
        "embedded model); free: any value, checked and re-asked (auto for other endpoints)",
    )
    ap.add_argument("--mechanism", help="start with this built-in mechanism (name) or a mechanism module (path)")
    ap.add_argument("--device", default=run["device"], help="auto | cpu | cuda | mps")
    ap.add_argument("--eval-tokens", type=int, help="validation tokens of evaluate_bpb (default: the trainer's)")
    ap.add_argument("--vocab-size", type=int, help="BPE vocabulary size (default: the trainer's)")
    ap.add_argument("--corpus", default=run["corpus"], help="shakespeare | stdlib | a path")
    ap.add_argument("--max-llm-calls", type=int)
    ap.add_argument(
        "--llm-max-tokens",
        type=int,
        help="the longest answer asked of the model, in tokens (default: 1024 for the embedded model, the endpoint's "
        "own default otherwise); a slow endpoint needs it to answer a long prompt within the call's time limit",
    )
    ap.add_argument(
        "--llm-attempts",
        type=int,
        default=run["llm_attempts"],
        help="answers asked for per LLM call (the first, then re-asks with the error) before the recorded fallback",
    )
    ap.add_argument("--max-llm-tokens", type=int)
    ap.add_argument(
        "--noise-margin", type=float, default=run["noise_margin"], help="a keep must beat the best by more than this"
    )
    ap.add_argument("--time-limit-s", type=float, help="no new experiment starts after this many seconds")
    ap.add_argument(
        "--unsafe-no-sandbox",
        action="store_true",
        help="UNSAFE: run LLM-written code (generated mechanisms, --mode code) without the OS sandbox (bubblewrap); "
        "recorded in run.json and the report",
    )
    if bilevel:
        ap.add_argument("--level", choices=["1", "1.5", "2", "1+2"], default=run["level"])
        ap.add_argument("--group", choices=["A", "B", "C", "D"], help="the paper's groups: A=1, B=1.5, C=2, D=1+2")
        ap.add_argument("--segment", type=int, default=run["segment"], help="inner iterations per outer cycle")
        ap.add_argument(
            "--generate-mode",
            choices=["auto", "compose", "generate"],
            default=run["generate_mode"],
            help="compose a built-in (weak models; auto picks it for the embedded model) or write code",
        )


def executor_spec(text: str) -> str:
    """local | ray | surrogate:PATH, the samples' path made absolute so that a resume works from anywhere."""
    if text in ("local", "ray"):
        return text
    if text.startswith("surrogate:") and text.split(":", 1)[1]:
        path = Path(text.split(":", 1)[1]).resolve()
        if not path.is_file():
            raise argparse.ArgumentTypeError(f"no surrogate samples at {path}")
        return f"surrogate:{path}"
    raise argparse.ArgumentTypeError(f"{text!r}: one of local, ray, surrogate:PATH")


def config_from(args: argparse.Namespace, *, bilevel: bool) -> RunConfig:
    from graphs.runner import GROUPS

    level = GROUPS[args.group] if bilevel and args.group else (args.level if bilevel else "1")
    run_dir = (args.run_dir or new_run_dir(args.runs_root, f"level{level.replace('+', '_')}")).resolve()
    return RunConfig(
        run_dir=str(run_dir),
        level=level,
        iterations=args.iterations,
        segment=args.segment if bilevel else args.iterations + 1,
        budget_s=args.budget_s,
        device=args.device,
        eval_tokens=args.eval_tokens,
        vocab_size=args.vocab_size,
        corpus=args.corpus,
        seed=args.seed,
        mode=args.mode,
        batch=args.batch,
        executor=args.executor,
        ray_address=args.ray_address,
        parallel=args.parallel,
        proposal_style=args.proposal_style,
        warm_worker=not args.cold_trials,
        overlap=args.overlap,
        model=args.model,
        base_url=args.base_url,
        max_llm_calls=args.max_llm_calls,
        llm_attempts=args.llm_attempts,
        llm_max_tokens=args.llm_max_tokens,
        max_llm_tokens=args.max_llm_tokens,
        noise_margin=args.noise_margin,
        mechanism=args.mechanism,
        generate_mode=args.generate_mode if bilevel else "auto",
        time_limit_s=args.time_limit_s,
        unsafe_no_sandbox=args.unsafe_no_sandbox,
    )


LABELS = {"llm": "by the model", "mechanism": "by a mechanism", "fallback": "fallback steps"}


def print_summary(run_dir: Path, elapsed_s: float | None = None) -> None:
    data = json.loads((run_dir / "summary.json").read_text())
    table = Table(title=f"run {run_dir}")
    table.add_column("figure")
    table.add_column("value", justify="right")
    if data.get("surrogate"):
        table.title = f"run {run_dir} (surrogate: val_bpb from a fitted model, nothing trained)"
    for key in ("experiments", "baseline_bpb", "best_bpb", "delta_bpb", "best_id", "kept", "crashes", "stop_reason"):
        value = data.get(key)
        table.add_row(key, f"{value:.6f}" if isinstance(value, float) else str(value))
    table.add_row(
        "llm calls / tokens",
        f"{data['llm']['calls']} / {data['llm']['prompt_tokens'] + data['llm']['completion_tokens']}",
    )
    for event in data.get("history", []):
        table.add_row(f"cycle {event['cycle']}", f"{event['event']} {event['mechanism']}")
    console.print(table)
    sources = data.get("proposal_sources") or {}
    proposals = sum(sources.values())
    if proposals:
        parts = ", ".join(f"{sources[k]} {LABELS.get(k, k)}" for k in sorted(sources, key=lambda k: -sources[k]))
        console.print(
            f"proposals from the model: [bold]{sources.get('llm', 0)} of {proposals}[/] "
            f"({sources.get('llm', 0) / proposals:.0%}; {parts})"
        )
    if elapsed_s is not None:
        console.print(f"total time: [bold]{elapsed_s / 60:.1f} min[/] ({elapsed_s:.0f} s)")
    console.print(f"run folder: [bold]{run_dir}[/]  (report: python -m graphs.bilevel report {run_dir})")


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during a run, carrying the run's folder for the resume command."""

    def __init__(self, run_dir: str | Path) -> None:
        super().__init__(str(run_dir))
        self.run_dir = str(run_dir)


def interrupted(e: KeyboardInterrupt) -> int:
    folder = getattr(e, "run_dir", None)
    console.print(
        "[yellow]interrupted: the run folder and its checkpoint are consistent; "
        f"continue with `python -m graphs.bilevel resume {folder or 'RUN_DIR'}`[/]",
        highlight=False,
    )
    return 130


def main_run(argv: list[str], *, bilevel: bool) -> int:
    from graphs.report import write_report
    from graphs.runner import execute

    ap = argparse.ArgumentParser(prog="python -m graphs.bilevel" if bilevel else "python -m graphs.inner")
    add_run_flags(ap, bilevel=bilevel)
    config = config_from(ap.parse_args(argv), bilevel=bilevel)
    console.print(
        f"run folder [bold]{config.run_dir}[/], level {config.level}, {config.iterations} iterations of "
        f"{config.budget_s:g} s"
        + (
            f" [yellow](surrogate: {config.executor.split(':', 1)[1]})[/]"
            if config.executor.startswith("surrogate:")
            else ""
        )
    )
    started = time.monotonic()
    try:
        execute(config, inner_only=not bilevel)
    except KeyboardInterrupt:
        raise RunInterrupted(config.run_dir) from None
    write_report(Path(config.run_dir))
    print_summary(Path(config.run_dir), time.monotonic() - started)
    return 0


def main_resume(argv: list[str]) -> int:
    from checkpoints.rebuild import LedgerError
    from checkpoints.sqlite import CheckpointError
    from graphs.report import write_report
    from graphs.runner import execute

    ap = argparse.ArgumentParser(prog="python -m graphs.bilevel resume")
    ap.add_argument("run_dir", type=Path)
    ap.add_argument(
        "--from-ledger",
        action="store_true",
        help="the checkpoint database is lost or corrupt: set it aside, rebuild the state from trace.jsonl, go on",
    )
    args = ap.parse_args(argv)
    config = RunConfig.load(args.run_dir)
    console.print(f"resuming {args.run_dir}")
    started = time.monotonic()
    try:
        if args.from_ledger:
            note = resume_from_ledger(config)
            console.print(note)
        execute(config, inner_only=resumes_inner_only(config))
    except (CheckpointError, LedgerError) as e:
        console.print(f"[red]{e}[/]", highlight=False)
        return 2
    except KeyboardInterrupt:
        raise RunInterrupted(args.run_dir) from None
    write_report(args.run_dir)
    print_summary(args.run_dir, time.monotonic() - started)
    return 0


def resumes_inner_only(config: RunConfig) -> bool:
    """A run started by `python -m graphs.inner` (its graph is the inner one, on thread "inner")."""
    return config.level == "1" and config.segment > config.iterations


def resume_from_ledger(config: RunConfig) -> str:
    """Set the checkpoint database aside and seed a fresh one with the state the ledger records (see
    `checkpoints/rebuild.py`); the next `execute(config)` continues from there. Returns what was done."""
    import time

    from langchain_core.runnables import RunnableConfig

    from checkpoints import rebuild
    from checkpoints.sqlite import open_checkpointer, set_aside
    from graphs.inner import inner_graph_for
    from graphs.outer import RECURSION_LIMIT, build_outer_graph, initial_outer_state
    from graphs.run_config import base_source
    from graphs.runner import start_mechanisms
    from mechanisms.space import SearchSpace
    from nodes.state import InnerState, SegmentRecord

    run_dir = Path(config.run_dir)
    events = rebuild.trace_events(run_dir)
    total = config.iterations + 1
    space = SearchSpace.from_train_source(base_source(run_dir))
    inner = rebuild.inner_state(events, space.defaults(), total)
    done = inner["iteration"] >= total
    stamp = time.strftime("%Y%m%d-%H%M%S")
    aside = set_aside(run_dir, stamp)
    moved = rebuild.set_aside_undecided(run_dir, inner["iteration"], run_dir / "set-aside" / stamp / "experiments")
    mechanism, decide = start_mechanisms(config)
    if decide:
        inner["mechanisms"] = {"decide": decide}
    with open_checkpointer(run_dir, fresh=True) as saver:
        if resumes_inner_only(config):
            graph = inner_graph_for(mechanism, decide, run_dir).compile(checkpointer=saver)
            values: dict[str, Any] = {**inner, "stop_reason": "iterations done" if done else None}
            graph.update_state(RunnableConfig(configurable={"thread_id": "inner"}), values, as_node="decide")
        else:
            cycle = rebuild.next_cycle(events)
            outer = initial_outer_state(cast(InnerState, inner), mechanism, config.level, total)
            rebuilt = {"cycle": cycle, "event": "rebuilt_from_ledger", "mechanism": mechanism["id"]}
            outer["cycle"], outer["history"] = cycle, [rebuilt]
            outer["segments"] = cast(list[SegmentRecord], rebuild.segments_from(events))
            if done:
                outer["stop_reason"] = "all iterations done"
            outer_graph = build_outer_graph().compile(checkpointer=saver)
            thread: RunnableConfig = {"configurable": {"thread_id": "outer"}, "recursion_limit": RECURSION_LIMIT}
            outer_graph.update_state(thread, outer, as_node="run_inner" if done else "inject")
    return (
        f"rebuilt from the ledger: {inner['iteration']} experiments, best {inner['best_bpb']} ({inner['best_id']}); "
        f"database set aside in {aside or '(none: it was missing)'}"
        + (f"; undecided experiment folders set aside: {', '.join(moved)}" if moved else "")
    )


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in SUBCOMMANDS else "run"
    try:
        if command == "run":
            return main_run(argv, bilevel=True)
        if command == "resume":
            return main_resume(argv)
        if command == "draw":
            from graphs.draw import main_draw

            return main_draw(argv)
        if command == "report":
            from graphs.report import main_report

            return main_report(argv)
        if command == "ablation":
            from ablation.cli import main_ablation

            return main_ablation(argv)
        if command == "dashboard":
            from dashboard.cli import main_dashboard

            return main_dashboard(argv)
        if argv and argv[0] == "validate":
            from graphs.validate_file import main_validate

            return main_validate(argv[1:])
        from graphs.mechanism_list import main_mechanisms

        return main_mechanisms(argv)
    except FATAL_ERRORS as e:
        console.print(f"[red]error:[/] {e}")
        return 2
    except KeyboardInterrupt as e:
        return interrupted(e)


def main_inner(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "resume":
            return main_resume(argv[1:])
        return main_run(argv, bilevel=False)
    except KeyboardInterrupt as e:
        return interrupted(e)
