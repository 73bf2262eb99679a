"""Where one optimizer step of gpt/train.py spends its time on this machine: the step, its forward and backward, each
optimizer, then torch.profiler's table with the compiled kernels named (the fused element-wise kernels of inductor
appear as graph_*_cpp_fused_*).

    .venv/bin/python scripts/profile_step.py [--dtype fp32|bf16] [--steps 3] [--rows 25]

The step is gpt.bench's: the trainer's default shape on random tokens, built and compiled once.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch._inductor.config as inductor_config  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from gpt import bench  # noqa: E402
from gpt import train as T  # noqa: E402


def median_seconds(f: Callable[[], object], calls: int, repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(calls):
            f()
        times.append((time.perf_counter() - start) / calls)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--steps", type=int, default=3, help="steps profiled")
    parser.add_argument("--rows", type=int, default=25, help="rows of the profiler's table")
    args = parser.parse_args()
    torch.set_num_threads(len(os.sched_getaffinity(0)))
    inductor_config.cpp.enable_kernel_profile = True  # name each compiled kernel in the profile
    ours = bench.OurStep(4096, "cpu", torch.bfloat16 if args.dtype == "bf16" else torch.float32)

    def forward_backward() -> None:
        for _ in range(ours.accum):
            x, y = ours.batch
            with ours.autocast():
                loss = ours.step_model(x, y)
            (loss / ours.accum).backward()

    step = median_seconds(ours.step, 3)
    fb = median_seconds(lambda: (forward_backward(), [o.zero_grad(set_to_none=True) for o in ours.optimizers]), 3)
    forward_backward()  # gradients for the optimizers' own timing
    names = [type(o).__name__ for o in ours.optimizers]
    optimizer_s = {n: median_seconds(o.step, 5) for n, o in zip(names, ours.optimizers, strict=True)}
    print(f"step {step * 1e3:.0f} ms ({T.TOTAL_BATCH_TOKENS / step:.0f} tokens/s); forward+backward {fb * 1e3:.0f} ms")
    print("; ".join(f"{n}.step {s * 1e3:.0f} ms" for n, s in optimizer_s.items()))
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            ours.step()
    print(f"\nprofile of {args.steps} steps:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=60))


if __name__ == "__main__":
    main()
