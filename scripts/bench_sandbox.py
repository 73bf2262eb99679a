"""What the OS sandbox costs: one mechanism call, and the start of one training, with and without it.

    .venv/bin/python scripts/bench_sandbox.py [--repeats 9]

Runs alternate (sandboxed, then not) so that a change in the machine's load hits both; prints the medians in ms and
the machine (CPU model, cores, load average before and after). The training is a stand-in train.py that imports torch
and writes a result: the sandbox adds to a training's start, not to its steps.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mechanisms import jail  # noqa: E402
from mechanisms.base import MechanismSpec, view_payload  # noqa: E402
from mechanisms.sandbox import SandboxedMechanism  # noqa: E402
from mechanisms.space import SearchSpace  # noqa: E402
from trials.launcher import TrainerSettings, run_training  # noqa: E402

SPACE = SearchSpace.from_train_source(
    "# ---- hyperparameters: the inner loop edits this block ----\n"
    "DEPTH = 4  # int [1, 12]\nMATRIX_LR = 0.02  # float [0.001, 0.2] log\n"
    "# ---- end of hyperparameters ----\n"
)
MECHANISM = (
    'NAME = "step"\nTARGET = "propose"\nimport numpy as np\n\n\ndef propose(view):\n'
    "    name = sorted(view.free_names)[int(np.argmax([1, 2])) - 1]\n"
    "    changes = view.space.neighbour(view.incumbent, view.rng, [name], 0.2)\n"
    '    return {"changes": changes, "hypothesis": "step", "expected_direction": "lower"}\n'
)
TRAINING = (
    "import json, sys\nimport torch\n"
    "json.dump({'val_bpb': float(torch.ones(1)[0])}, open(sys.argv[sys.argv.index('--result-json') + 1], 'w'))\n"
)


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    args = ap.parse_args()
    if jail.unavailable():
        print(f"no sandbox here: {jail.unavailable()}")
        return 2
    load_before = os.getloadavg()
    payload = view_payload(trace=[], space=SPACE, incumbent=SPACE.defaults(), best_bpb=None, iteration=0, seed=1)
    mech = SandboxedMechanism(MechanismSpec.from_source(MECHANISM))
    kinds = ("call sandboxed", "call plain", "train sandboxed", "train plain")
    samples: dict[str, list[float]] = {k: [] for k in kinds}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "e0000"
        folder.mkdir()
        (folder / "train.py").write_text(TRAINING)
        for _ in range(args.repeats):
            for unsafe, label in ((False, "sandboxed"), (True, "plain")):
                jail.set_unsafe(unsafe)
                samples[f"call {label}"].append(timed(lambda: mech(payload, lambda g, c: {})))
                settings = TrainerSettings(budget_s=1.0, sandbox=not unsafe)
                samples[f"train {label}"].append(timed(functools.partial(run_training, settings, folder)))
                assert json.loads((folder / "result.json").read_text())["val_bpb"] == 1.0
        jail.set_unsafe(False)
    medians = {k: round(statistics.median(v), 1) for k, v in samples.items()}
    print(json.dumps({
        "median_ms": medians,
        "repeats": args.repeats,
        "machine": f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "load_average_before_after": [round(load_before[0], 2), round(os.getloadavg()[0], 2)],
    }, indent=1))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
