"""Locked run machinery for train.py: arguments, the hyperparameter block, device, the budget clock, evaluation and
the summary/JSON report. train.py calls `launch`; it may change the model and the loop, never this file.

Exit codes: 0 ok; 2 invalid configuration or arguments; 3 diverged (NaN or loss > 100); 1 any other crash.
No result JSON is written unless the run ends with exit code 0.
"""

from __future__ import annotations

import time


def _process_start() -> float:
    """When this process started (epoch seconds), so start-up counts the interpreter and every import before this
    module's; on Linux from /proc (how long ago, in the kernel's uptime, the process started), elsewhere now."""
    try:
        import os

        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, after "pid (comm)"
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return time.time() - max(0.0, uptime - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.time()


PROCESS_START = _process_start()  # a trial forked from a warm worker resets it to the fork's time

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import traceback  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from contextlib import AbstractContextManager, contextmanager, nullcontext  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import torch  # noqa: E402

from gpt import constants, evaluate, machine, prepare  # noqa: E402

BLOCK_START, BLOCK_END = constants.BLOCK_START, constants.BLOCK_END
# The first steps of a training, which train but do not count against the budget: the first compiles the model. On a
# CPU the second step is as long as the tenth (measured: 0.96 s and 0.97 s, then 0.92-1.02 s), so one is excluded; on
# a GPU autoresearch's ten (compilation, autotuning and the allocator settle over several steps).
EXCLUDED_STEPS = {"cpu": 1, "cuda": 10, "mps": 2}
DEFAULT_BUDGET_S = 300.0
MAX_LOSS = 100.0
EVAL_TOKENS_PER_FORWARD = 8_192  # evaluation batches of at least this many tokens (see eval_rows)
EXIT_OK, EXIT_CRASH, EXIT_CONFIG, EXIT_DIVERGED = 0, 1, 2, 3
SUMMARY_KEYS = (
    "val_bpb", "training_seconds", "total_seconds", "peak_memory_mb", "mfu_percent",
    "total_tokens_M", "num_steps", "num_params_M", "depth",
)  # fmt: skip


class ConfigError(Exception):
    """Invalid hyperparameter or argument: exit code 2."""


class Diverged(Exception):
    """NaN or exploding loss: exit code 3."""


# ---------------------------------------------------------------------------------------------------------------------
# The hyperparameter block: its grammar is gpt/constants.py

Param = constants.Constant


def parse_block(source: str) -> list[Param]:
    """The constants of the block of a train.py source; ConfigError for anything the grammar refuses."""
    try:
        return constants.parse_block(source)
    except constants.BlockError as e:
        raise ConfigError(f"train.py's hyperparameter block: {e}") from e


def check_param(p: Param) -> None:
    """Raise ConfigError when a value does not fit its declaration."""
    wrong = constants.value_problem(p.name, p.kind, p.domain, p.value)
    if wrong:
        declared = f"{p.kind} {list(p.domain)}"
        raise ConfigError(f"hyperparameter {p.name} = {p.value!r} is outside its declaration: {declared} ({wrong})")


def hyperparameters(script: str) -> dict[str, Any]:
    """Name -> value of the block in `script` (the running train.py, which may be a copy), every value checked."""
    params = parse_block(Path(script).read_text())
    for p in params:
        check_param(p)
    problems = constants.problems(params)
    if problems:
        raise ConfigError("; ".join(problems))
    return {p.name: p.value for p in params}


# ---------------------------------------------------------------------------------------------------------------------
# Arguments, device, clock


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description="Train the GPT for a fixed wall-clock budget and report val_bpb.")
    ap.add_argument("--budget-s", type=float, default=None, help="training budget in seconds (or env GPT_BUDGET_S)")
    ap.add_argument("--result-json", type=Path, default=None, help="write the summary here as JSON (atomically)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    ap.add_argument(
        "--dtype",
        choices=["auto", "fp32", "bf16"],
        default="auto",
        help="auto: the faster of the two on this machine, measured once and kept (python -m gpt.machine)",
    )
    ap.add_argument("--corpus", default=prepare.DEFAULT_CORPUS)
    ap.add_argument("--vocab-size", type=int, default=prepare.DEFAULT_VOCAB_SIZE)
    ap.add_argument("--eval-tokens", type=int, default=evaluate.DEFAULT_EVAL_TOKENS)
    a = ap.parse_args(argv)
    if a.budget_s is None:
        env = os.environ.get("GPT_BUDGET_S")
        try:
            a.budget_s = float(env) if env else DEFAULT_BUDGET_S
        except ValueError as e:
            raise ConfigError(f"GPT_BUDGET_S={env!r} is not a number") from e
    if not (math.isfinite(a.budget_s) and a.budget_s > 0):
        raise ConfigError(f"budget must be a positive number of seconds, got {a.budget_s}")
    if a.eval_tokens < 1:
        raise ConfigError(f"--eval-tokens must be positive, got {a.eval_tokens}")
    return a


def pick_device(device: str, dtype: str) -> tuple[str, torch.dtype, dict[str, Any]]:
    """(device, compute dtype, machine profile). bf16 means autocast; fp32 means none. `auto` takes the dtype the
    machine profile measured as faster (gpt/machine.py), never a guess from a CPU flag."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available to this torch build")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("--device mps: MPS is not available on this machine")
    profile = machine.machine_profile(device) if device in ("cpu", "cuda") else {"dtype": "fp32", "peak_flops": {}}
    if dtype == "auto":
        dtype = str(profile["dtype"])
    return device, torch.bfloat16 if dtype == "bf16" else torch.float32, profile


def peak_flops(device: str, dtype: torch.dtype, profile: dict[str, Any]) -> tuple[float, str]:
    """The dense matmul peak MFU is divided by, and where it comes from (spec sheet, the kept machine profile, or a
    measurement now)."""
    name = "bf16" if dtype == torch.bfloat16 else "fp32"
    kept = profile.get("peak_flops", {}).get(name)
    if kept:
        source = profile.get("peak_source", "measured")
        if source == "measured":
            source = f"machine profile, measured {profile.get('measured_at', '?')} ({profile.get('origin', 'kept')})"
        return float(kept), source
    return machine.matmul_flops(device, dtype), "measured at start-up"


synchronize = machine.synchronize


@dataclass
class BudgetClock:
    """Training time, excluding the device's first EXCLUDED_STEPS steps. `done` stops before a step would overrun the
    budget, predicting its length as 1.25 x the slowest of the last three counted steps; a step slowed by other load on
    the machine can still overrun it a little (the evaluate node allows the budget x trials.launcher.OVERRUN_FACTOR +
    1 s + two mean steps)."""

    budget_s: float
    device: str
    training_seconds: float = 0.0
    warmup_seconds: float = 0.0  # the excluded first steps: compilation and allocator warm-up
    steps: int = 0
    counted_tokens: int = 0
    total_tokens: int = 0
    recent: list[float] = field(default_factory=list)

    @contextmanager
    def step(self, tokens: int) -> Iterator[None]:
        synchronize(self.device)
        t0 = time.perf_counter()
        yield
        synchronize(self.device)
        dt = time.perf_counter() - t0
        self.steps += 1
        self.total_tokens += tokens
        if self.steps > EXCLUDED_STEPS[self.device]:
            self.training_seconds += dt
            self.counted_tokens += tokens
            self.recent = (self.recent + [dt])[-3:]
        else:
            self.warmup_seconds += dt

    @property
    def progress(self) -> float:
        """Fraction of the budget spent, 0..1: what the LR schedule follows."""
        return min(1.0, self.training_seconds / self.budget_s)

    def done(self) -> bool:
        return self.training_seconds + 1.25 * max(self.recent, default=0.0) > self.budget_s


def check_loss(loss: float) -> None:
    if not math.isfinite(loss) or loss > MAX_LOSS:
        raise Diverged(f"training diverged: loss = {loss}")


# ---------------------------------------------------------------------------------------------------------------------
# The run: what train.py gets, what it hands back, the report


@dataclass
class Run:
    hp: dict[str, Any]
    args: argparse.Namespace
    device: str
    dtype: torch.dtype
    data: prepare.Data
    clock: BudgetClock

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device, dtype=self.dtype) if self.dtype != torch.float32 else nullcontext()


@dataclass
class Trained:
    model: torch.nn.Module  # idx (B, T) -> logits (B, T, V)
    flops_per_token: float  # 6 * non-embedding params + attention, for MFU
    num_params: int
    depth: int
    seq_len: int  # evaluation windows
    eval_batch_size: int


def peak_memory_mb(device: str) -> float:
    if device == "cuda":
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def write_json_atomic(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def summary_block(result: dict[str, Any]) -> str:
    fmt = {
        "val_bpb": "{:.6f}",
        "training_seconds": "{:.1f}",
        "total_seconds": "{:.1f}",
        "peak_memory_mb": "{:.1f}",
        "mfu_percent": "{:.2f}",
        "total_tokens_M": "{:.3f}",
        "num_params_M": "{:.1f}",
    }
    return "---\n" + "\n".join(f"{k + ':':<18}{fmt.get(k, '{}').format(result[k])}" for k in SUMMARY_KEYS)


def eval_rows(trained: Trained, eval_tokens: int) -> int:
    """Windows per evaluation forward: at least train.py's own batch, and enough to fill EVAL_TOKENS_PER_FORWARD
    tokens, but never more windows than the targets need. Every window is scored on its own, so the batch changes
    how fast the figure comes, not the figure. On the 2-core CPU (65,536 tokens, windows of 256), quiet: 16, 32 and
    64 windows took 3.1-3.2, 3.0-3.35 and 3.6-3.7 s; under load (load average about 7), 32 and 64 windows ran 1.7x
    and 2.7x faster than 16."""
    windows = math.ceil(eval_tokens / trained.seq_len)
    return max(1, min(max(trained.eval_batch_size, EVAL_TOKENS_PER_FORWARD // trained.seq_len), windows))


def finish(run: Run, trained: Trained, peak: tuple[float, str], started: dict[str, float]) -> dict[str, Any]:
    """Evaluate with the locked evaluator, print the summary block, write the JSON. `started` holds the wall-clock
    times the phases began (`train`, `done`), from which the time around the budget is reported phase by phase."""
    t_eval = time.time()
    val_bpb = evaluate.evaluate_bpb(
        trained.model,
        run.data,
        run.args.eval_tokens,
        trained.seq_len,
        eval_rows(trained, run.args.eval_tokens),
        run.device,
        run.dtype if run.dtype != torch.float32 else None,
    )
    end = time.time()
    clock = run.clock
    peak_value, peak_source = peak
    achieved = trained.flops_per_token * clock.counted_tokens / clock.training_seconds if clock.training_seconds else 0
    loop = started["done"] - started["train"]
    result = {
        "val_bpb": val_bpb,
        "training_seconds": clock.training_seconds,
        "total_seconds": end - PROCESS_START,
        "peak_memory_mb": peak_memory_mb(run.device),
        "mfu_percent": 100 * achieved / peak_value,
        "total_tokens_M": clock.total_tokens / 1e6,
        "num_steps": clock.steps,
        "num_params_M": trained.num_params / 1e6,
        "depth": trained.depth,
        # where the time around the budget went: start-up (interpreter, torch, data, machine profile), the excluded
        # warm-up steps (compilation), building the model and the loop's own overhead, evaluation
        "timing": {
            "startup_seconds": started["train"] - PROCESS_START,
            "warmup_seconds": clock.warmup_seconds,
            "training_seconds": clock.training_seconds,
            "setup_and_overhead_seconds": max(0.0, loop - clock.warmup_seconds - clock.training_seconds),
            "eval_seconds": end - t_eval,
        },
        "tokens_per_s": clock.counted_tokens / clock.training_seconds if clock.training_seconds else 0.0,
        "mfu_peak_flops": peak_value,
        "mfu_peak_source": peak_source,
        "evaluator_sha256": evaluate.evaluator_sha256(),
        "split_sha256": run.data.split_sha256,
        "hyperparameters": run.hp,
        "seed": run.args.seed,
        "device": run.device,
        "dtype": "bf16" if run.dtype == torch.bfloat16 else "fp32",
        "budget_s": run.args.budget_s,
        "eval_tokens": evaluate.eval_targets(run.data, run.args.eval_tokens)[1],
        "corpus": run.args.corpus,
        "vocab_size": run.data.vocab_size,
    }
    if not math.isfinite(val_bpb):
        raise Diverged(f"val_bpb is {val_bpb}")
    print(summary_block(result), flush=True)
    if run.args.result_json is not None:
        write_json_atomic(run.args.result_json, result)
    return result


def launch(script: str, train: Callable[[Run], Trained], argv: list[str] | None = None) -> int:
    """Run train.py's `train` under the locked rules; returns the exit code."""
    try:
        hp = hyperparameters(script)
        args = parse_args(argv)
        if args.device in ("auto", "cpu"):  # before the machine profile: its key counts the threads
            torch.set_num_threads(
                len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
            )
        device, dtype, profile = pick_device(args.device, args.dtype)
        torch.manual_seed(args.seed)
        data = prepare.load_data(args.corpus, args.vocab_size)
        peak = peak_flops(device, dtype, profile)
        run = Run(hp, args, device, dtype, data, BudgetClock(args.budget_s, device))
        started = {"train": time.time()}
        trained = train(run)
        started["done"] = time.time()
        finish(run, trained, peak, started)
        return EXIT_OK
    except SystemExit as e:  # argparse: usage errors exit 2, --help exits 0
        return int(e.code or 0)
    except (ConfigError, prepare.PrepareError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except Diverged as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_DIVERGED
    except Exception:
        traceback.print_exc()
        return EXIT_CRASH
