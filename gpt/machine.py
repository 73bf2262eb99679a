"""What this machine computes fastest, measured once and kept: the dtype `--dtype auto` trains in, and the dense
matmul peak that MFU is divided by.

Machines of the same size differ: an Intel Xeon with AMX runs bf16 matmuls about 3x faster than fp32, one without
AMX about 2x slower, an AMD EPYC with avx512_bf16 about 2.5x faster. A CPU flag does not decide it; a measurement
does. The profile is measured once per machine (CPU model, flags, torch version, thread count) and kept in a small
JSON file, so every training of a run — and of an ablation — trains in the same dtype and divides by the same peak,
measured when the profile was made rather than under whatever load a training happens to meet.

    python -m gpt.machine            # show the profile (measure it if there is none)
    python -m gpt.machine --refresh  # measure again (do it on a quiet machine)
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

from gpt import prepare

PROFILE_ENV = "GPT_MACHINE_PROFILE"  # a file to keep the profiles in (default: machine-profiles.json in the cache)
# Dense bf16 tensor-core peaks (FLOP/s) by device name, as autoresearch reports MFU; unknown GPUs are measured.
GPU_PEAK_BF16 = {"H100": 989.5e12, "H200": 989.5e12, "A100": 312e12, "L4": 121e12, "4090": 165.2e12, "5090": 209.5e12}
CPU_FLAGS = ("amx_bf16", "amx_tile", "avx512_bf16", "avx512f", "avx2", "fma")


def profile_path() -> Path:
    return Path(os.environ.get(PROFILE_ENV) or prepare.cache_root() / "machine-profiles.json")


def _cpuinfo() -> tuple[str, list[str]]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown", []
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "")
    flags_line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    flags = set(flags_line.split(":", 1)[-1].split())
    return model or "unknown", [f for f in CPU_FLAGS if f in flags]


def machine_key(device: str) -> str:
    """Profiles are kept per machine kind: what could change which dtype is faster or how fast a matmul runs."""
    if device == "cuda":
        parts = ["cuda", torch.cuda.get_device_name(), torch.__version__]
    else:
        model, flags = _cpuinfo()
        parts = [device, model, ",".join(flags), torch.__version__, str(torch.get_num_threads())]
    return hashlib.sha256("|".join(parts).encode()).hexdigest()[:16]


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()
    elif device == "mps":
        torch.mps.synchronize()


def matmul_flops(device: str, dtype: torch.dtype, seconds: float = 0.5) -> float:
    """Dense matmul FLOP/s measured here, now."""
    n = 4096 if device == "cuda" else 1024
    x, y = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(3):
        x @ y
    synchronize(device)
    t, k = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        x @ y
        k += 1
    synchronize(device)
    return 2 * n**3 * k / (time.perf_counter() - t)


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except OSError:
        return None


def measure(device: str, rounds: int = 3, seconds: float = 0.3) -> dict[str, Any]:
    """Both dtypes' matmul peaks, interleaved, best of `rounds` (other load only ever slows a measurement down)."""
    if device == "cuda":
        name = torch.cuda.get_device_name()
        spec = next((peak for key, peak in GPU_PEAK_BF16.items() if key in name), None)
        peak = spec or max(matmul_flops(device, torch.bfloat16, seconds) for _ in range(rounds))
        return {
            "device": device,
            "name": name,
            "dtype": "bf16",
            "peak_flops": {"bf16": peak},
            "peak_source": "spec sheet" if spec else "measured",
            "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
    peaks = {"fp32": 0.0, "bf16": 0.0}
    for _ in range(rounds):
        for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            peaks[name] = max(peaks[name], matmul_flops(device, dt, seconds))
    model, flags = _cpuinfo()
    return {
        "device": device,
        "name": model,
        "flags": flags,
        "threads": torch.get_num_threads(),
        "dtype": "bf16" if peaks["bf16"] > peaks["fp32"] else "fp32",
        "peak_flops": peaks,
        "peak_source": "measured",
        "load_average": _load_average(),
        "measured_at": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _read_profiles(path: Path) -> dict[str, Any]:
    try:
        profiles = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return profiles if isinstance(profiles, dict) else {}


def _write_profiles(path: Path, profiles: dict[str, Any]) -> bool:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(profiles, indent=2) + "\n")
        os.replace(tmp, path)
        return True
    except OSError:  # a read-only home (a sandboxed training): use the measurement without keeping it
        return False


def machine_profile(device: str, refresh: bool = False) -> dict[str, Any]:
    """This machine's profile for `device`: kept if there is one, else measured now (and kept where writable).
    `origin` says which: "kept" or "measured now"."""
    path, key = profile_path(), machine_key(device)
    profiles = _read_profiles(path)
    kept = profiles.get(key)
    if not refresh and isinstance(kept, dict) and kept.get("dtype") in ("fp32", "bf16"):
        return {**kept, "origin": "kept"}
    profile = measure(device)
    profiles[key] = profile
    _write_profiles(path, profiles)
    return {**profile, "origin": "measured now"}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m gpt.machine", description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--refresh", action="store_true", help="measure again and keep the new profile")
    args = ap.parse_args(argv)
    if args.device == "cpu":
        torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
    profile = machine_profile(args.device, refresh=args.refresh)
    print(json.dumps(profile, indent=2))
    print(f"kept in {profile_path()}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
