"""Benchmarks of gpt/train.py's default configuration on this machine.

    python -m gpt.bench                            # speed: our training step vs naive_gpt_step.py, same shape
    python -m gpt.bench --budgets 15,60,300        # val_bpb after each budget, with uniform and unigram baselines

Speed: our step (model, optimizers and compile setting of gpt/train.py, gradient accumulation included) and the
reference script /work/shared/bench/naive_gpt_step.py (run as a subprocess with the same vocab/dim/depth/seq/batch),
alternating, `--repeats` times; medians. Achieved FLOP/s use the reference's formula, 6 * non-embedding params * tokens
+ 6 * L * D * T^2 * B for causal attention, against dense matmul peaks measured in this process (fp32 and bf16).
On CUDA the reference runs unchanged with its tensors and autocast redirected to the GPU (bf16), and MFU is against
the GPU's bf16 spec peak.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import torch

from gpt import evaluate, machine, prepare, runtime
from gpt import train as T

NAIVE = Path(os.environ.get("GPT_NAIVE_BENCH", Path(__file__).resolve().parents[2] / "shared/bench/naive_gpt_step.py"))


def model_dim() -> int:
    return math.ceil(T.DEPTH * T.ASPECT_RATIO / T.HEAD_DIM) * T.HEAD_DIM


def step_flops(model: T.GPT) -> float:
    """FLOPs of one optimizer step by the reference's formula (optimizer work not counted, as there)."""
    D, L, S, B = model_dim(), T.DEPTH, T.SEQ_LEN, T.DEVICE_BATCH_SIZE
    non_embedding = sum(p.numel() for p in model.parameters()) - model.embed.weight.numel()
    micro = 6 * non_embedding * B * S + 6 * L * D * S * S * B
    return micro * T.TOTAL_BATCH_TOKENS // (B * S)


class OurStep:
    """gpt/train.py's step on random tokens, like the reference; built and compiled once."""

    def __init__(self, vocab: int, device: str, dtype: torch.dtype) -> None:
        torch.manual_seed(0)
        self.model = T.GPT(vocab, T.DEPTH, model_dim(), T.HEAD_DIM, T.SEQ_LEN, T.LOGIT_SOFTCAP).to(device)
        self.model.init_weights()
        self.optimizers = T.make_optimizers(self.model, torch.bfloat16 if device == "cuda" else dtype)
        self.step_model = torch.compile(self.model) if T.COMPILE and device != "mps" else self.model
        self.accum = T.TOTAL_BATCH_TOKENS // (T.DEVICE_BATCH_SIZE * T.SEQ_LEN)
        idx = torch.randint(0, vocab, (T.DEVICE_BATCH_SIZE, T.SEQ_LEN + 1), device=device)
        self.batch = (idx[:, :-1], idx[:, 1:])
        self.device, self.dtype = device, dtype
        t = time.perf_counter()
        for _ in range(3):
            self.step()
        self.warmup_s = time.perf_counter() - t

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        while True:
            yield self.batch

    def autocast(self) -> AbstractContextManager:
        return torch.autocast(self.device, dtype=self.dtype, enabled=self.dtype != torch.float32)

    def step(self) -> None:
        T.train_step(self.step_model, self.optimizers, self.batches(), self.accum, self.autocast)

    def seconds_per_step(self, seconds: float) -> float:
        t, n = time.perf_counter(), 0
        while time.perf_counter() - t < seconds:
            self.step()
            n += 1
        return (time.perf_counter() - t) / n


# The reference script is written for the CPU. On a GPU it runs unchanged with tensors created on CUDA by default and
# its CPU autocast redirected to CUDA: the same model, shape, optimizer and dtype, timed by its own loop.
CUDA_REDIRECT = (
    "import runpy, sys, torch; torch.set_default_device('cuda'); _autocast = torch.autocast; "
    "torch.autocast = lambda device_type, *a, **k: _autocast('cuda', *a, **k); "
    "sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"
)


def run_naive(vocab: int, dtype: str, seconds: float, device: str = "cpu") -> dict[str, float]:
    if not NAIVE.is_file():
        raise SystemExit(f"bench: reference script not found at {NAIVE} (set GPT_NAIVE_BENCH to its path)")
    shape = ["--vocab", str(vocab), "--dim", str(model_dim()), "--depth", str(T.DEPTH), "--seq", str(T.SEQ_LEN)]
    shape += ["--batch", str(T.DEVICE_BATCH_SIZE), "--dtype", dtype, "--seconds", str(seconds)]
    launcher = [sys.executable, "-c", CUDA_REDIRECT] if device == "cuda" else [sys.executable]
    out = subprocess.run([*launcher, str(NAIVE), *shape], capture_output=True, text=True, check=True).stdout
    return {k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", out.splitlines()[-1])}


def speed(args: argparse.Namespace) -> dict:
    if args.device in ("auto", "cpu"):
        torch.set_num_threads(len(os.sched_getaffinity(0)))
    device, dtype, profile = runtime.pick_device(args.device, args.dtype)
    dt_name = "bf16" if dtype == torch.bfloat16 else "fp32"
    print(
        f"config: dim={model_dim()} depth={T.DEPTH} seq={T.SEQ_LEN} batch={T.DEVICE_BATCH_SIZE} "
        f"total_batch={T.TOTAL_BATCH_TOKENS} vocab={args.vocab} optimizer={T.OPTIMIZER} compile={T.COMPILE} "
        f"device={device} dtype={dt_name} threads={torch.get_num_threads()}",
        flush=True,
    )
    ours = OurStep(args.vocab, device, dtype)
    print(f"our warm-up (3 steps, compile included): {ours.warmup_s:.1f} s", flush=True)
    flops = step_flops(ours.model)
    naive_dtypes = ("fp32", "bf16") if device == "cpu" else (dt_name,)
    peak = runtime.peak_flops(device, dtype, profile)
    rows: list[dict[str, float]] = []
    for r in range(args.repeats):
        row: dict[str, float] = {}
        sec = ours.seconds_per_step(args.seconds)
        row["ours_tok_s"] = T.TOTAL_BATCH_TOKENS / sec
        row["ours_gflops"] = flops / sec / 1e9
        for name in naive_dtypes:
            naive = run_naive(args.vocab, name, args.seconds, device)
            row[f"naive_{name}_tok_s"] = naive["tokens_per_s"]
            row[f"naive_{name}_gflops"] = naive["achieved_gflops"]
            row[f"naive_{name}_share"] = naive["share_of_peak"]
        if device == "cpu":
            for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
                row[f"peak_{name}_gflops"] = machine.matmul_flops("cpu", dt, 1.0) / 1e9
        else:
            row["peak_gflops"] = peak[0] / 1e9
        print(f"repeat {r + 1}: " + " ".join(f"{k}={v:.1f}" for k, v in row.items()), flush=True)
        rows.append(row)
    med = {k: statistics.median(row[k] for row in rows) for k in rows[0]}
    print("\nmedians over", args.repeats, "repeats:")
    print(f"  ours ({dt_name}): {med['ours_tok_s']:.0f} tokens/s, {med['ours_gflops']:.1f} GFLOP/s")
    for name in naive_dtypes:
        print(
            f"  naive_gpt_step.py ({name}): {med[f'naive_{name}_tok_s']:.0f} tokens/s, "
            f"{med[f'naive_{name}_gflops']:.1f} GFLOP/s, {med[f'naive_{name}_share']:.0%} of its {name} peak"
        )
    if device == "cpu":
        for name in ("fp32", "bf16"):
            print(
                f"  matmul peak {name}: {med[f'peak_{name}_gflops']:.1f} GFLOP/s; ours = "
                f"{med['ours_gflops'] / med[f'peak_{name}_gflops']:.0%} of it"
            )
    else:
        mfu = {who: med[f"{who}_gflops"] / med["peak_gflops"] for who in ("ours", f"naive_{dt_name}")}
        print(f"  MFU against {med['peak_gflops']:.0f} GFLOP/s ({peak[1]}): ours {mfu['ours']:.1%}, naive "
              f"{mfu[f'naive_{dt_name}']:.1%}")  # fmt: skip
    for name in naive_dtypes:
        print(f"  tokens/s ratio ours / naive {name}: {med['ours_tok_s'] / med[f'naive_{name}_tok_s']:.2f}")
    fastest = max(naive_dtypes, key=lambda name: med[f"naive_{name}_tok_s"])
    print(
        f"  the naive step's faster dtype here: {fastest}; ours trained in {dt_name} (machine profile: "
        f"{profile.get('dtype')}, {profile.get('origin')}); ours / naive {fastest}: "
        f"{med['ours_tok_s'] / med[f'naive_{fastest}_tok_s']:.2f}"
    )
    return {"rows": rows, "medians": med, "warmup_s": ours.warmup_s, "device": device, "dtype": dt_name}


def budgets(args: argparse.Namespace) -> dict:
    data = prepare.load_data(args.corpus, args.vocab)
    base = evaluate.baseline_bpb(data, args.eval_tokens)
    print(f"baselines on {args.eval_tokens} val tokens: uniform {base['uniform']:.4f}, unigram {base['unigram']:.4f}")
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for budget in args.budgets:
            out = Path(tmp) / f"{budget}.json"
            cmd = [
                sys.executable,
                "-m",
                "gpt.train",
                "--budget-s",
                str(budget),
                "--result-json",
                str(out),
                "--corpus",
                args.corpus,
                "--vocab-size",
                str(args.vocab),
                "--eval-tokens",
                str(args.eval_tokens),
                "--device",
                args.device,
                "--dtype",
                args.dtype,
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise SystemExit(f"bench: gpt.train --budget-s {budget} failed ({proc.returncode}):\n{proc.stderr}")
            results.append(json.loads(out.read_text()))
            r = results[-1]
            print(
                f"budget {budget:g}s: val_bpb {r['val_bpb']:.4f}, {r['num_steps']} steps, "
                f"{r['total_tokens_M']:.2f}M tokens, training {r['training_seconds']:.1f}s, "
                f"total {r['total_seconds']:.1f}s, mfu {r['mfu_percent']:.1f}%",
                flush=True,
            )
    print("\n| budget (s) | val_bpb | steps | tokens (M) | training s | total s | MFU % |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(
            f"| {r['budget_s']:g} | {r['val_bpb']:.4f} | {r['num_steps']} | {r['total_tokens_M']:.2f} | "
            f"{r['training_seconds']:.1f} | {r['total_seconds']:.1f} | {r['mfu_percent']:.1f} |"
        )
    print(f"| uniform baseline | {base['uniform']:.4f} | | | | | |")
    print(f"| unigram baseline | {base['unigram']:.4f} | | | | | |")
    return {"baselines": base, "results": results}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpt.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--budgets",
        type=lambda s: [float(x) for x in s.split(",")],
        default=None,
        help="comma-separated training budgets in seconds: run the budget table instead of speed",
    )
    ap.add_argument("--seconds", type=float, default=8.0, help="timed seconds per measurement (speed)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", choices=["auto", "cpu", "cuda", "mps"], default="auto")
    ap.add_argument("--dtype", choices=["auto", "fp32", "bf16"], default="auto")
    ap.add_argument("--vocab", type=int, default=prepare.DEFAULT_VOCAB_SIZE)
    ap.add_argument("--corpus", default=prepare.DEFAULT_CORPUS)
    ap.add_argument("--eval-tokens", type=int, default=evaluate.DEFAULT_EVAL_TOKENS)
    ap.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = ap.parse_args(argv)
    figures = budgets(args) if args.budgets else speed(args)
    if args.json:
        runtime.write_json_atomic(args.json, figures | {"argv": sys.argv[1:], "date": time.strftime("%Y-%m-%d")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
