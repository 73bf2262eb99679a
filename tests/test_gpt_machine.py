"""The machine profile: the dtype `--dtype auto` trains in and the peak MFU divides by, measured once and kept."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from gpt import machine, runtime


@pytest.fixture()
def profiles(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "profiles.json"
    monkeypatch.setenv(machine.PROFILE_ENV, str(path))
    return path


def _fake_measure(calls: list[str], dtype: str):
    def measure(device: str, rounds: int = 3, seconds: float = 0.3) -> dict:
        calls.append(device)
        return {"device": device, "dtype": dtype, "peak_flops": {"fp32": 1e11, "bf16": 2e11}, "peak_source": "measured"}

    return measure


def test_the_profile_is_measured_once_then_kept(profiles: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(machine, "measure", _fake_measure(calls, "bf16"))
    first = machine.machine_profile("cpu")
    second = machine.machine_profile("cpu")
    assert calls == ["cpu"] and first["origin"] == "measured now" and second["origin"] == "kept"
    assert json.loads(profiles.read_text())[machine.machine_key("cpu")]["dtype"] == "bf16"
    machine.machine_profile("cpu", refresh=True)
    assert calls == ["cpu", "cpu"]


def test_auto_takes_the_profiles_dtype_not_a_cpu_flag(profiles: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for dtype, expected in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        profiles.write_text(json.dumps({machine.machine_key("cpu"): {"dtype": dtype, "peak_flops": {dtype: 5e10}}}))
        device, picked, profile = runtime.pick_device("cpu", "auto")
        assert (device, picked) == ("cpu", expected)
        peak, source = runtime.peak_flops(device, picked, profile)
        assert peak == 5e10 and "machine profile" in source
    assert runtime.pick_device("cpu", "fp32")[1] == torch.float32  # an explicit dtype wins


def test_an_unreadable_or_unwritable_profile_is_measured_and_the_training_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    monkeypatch.setenv(machine.PROFILE_ENV, str(blocker / "profiles.json"))  # a read-only home in a sandbox
    calls: list[str] = []
    monkeypatch.setattr(machine, "measure", _fake_measure(calls, "fp32"))
    assert machine.machine_profile("cpu")["origin"] == "measured now"
    (tmp_path / "garbage.json").write_text("{not json")
    monkeypatch.setenv(machine.PROFILE_ENV, str(tmp_path / "garbage.json"))
    assert machine.machine_profile("cpu")["dtype"] == "fp32" and len(calls) == 2


def test_a_real_measurement_picks_the_faster_dtype(profiles: Path) -> None:
    profile = machine.measure("cpu", rounds=1, seconds=0.05)
    peaks = profile["peak_flops"]
    assert peaks["fp32"] > 0 and peaks["bf16"] > 0
    assert profile["dtype"] == max(peaks, key=peaks.get)
