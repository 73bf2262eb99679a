"""A run's settings are declared once (graphs/run_config.py RunConfig, its training settings taken from
trials/launcher.py TrainerSettings); the command lines, the ablation's spec and the graphs' contexts derive theirs."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from ablation import cli as ablation_cli
from ablation.harness import AblationSpec, spec_defaults
from checkpoints.run_folder import Ledger
from graphs import cli
from graphs.run_config import RunConfig, make_context, run_defaults
from llm.structured import LLMBudget
from trials.launcher import TrainerSettings


def parsed_run(bilevel: bool) -> RunConfig:
    ap = argparse.ArgumentParser()
    cli.add_run_flags(ap, bilevel=bilevel)
    return cli.config_from(ap.parse_args(["--run-dir", "x"]), bilevel=bilevel)


def test_the_run_command_lines_defaults_are_run_configs() -> None:
    for bilevel in (True, False):
        parsed = dataclasses.asdict(parsed_run(bilevel))
        declared = dataclasses.asdict(RunConfig(run_dir=parsed["run_dir"]))
        if not bilevel:  # Level 1 alone: one segment of all the experiments
            declared["segment"], declared["level"] = parsed["iterations"] + 1, "1"
        assert parsed == declared


def test_the_training_settings_are_declared_once() -> None:
    assert RunConfig(run_dir="x").trainer() == TrainerSettings()
    assert TrainerSettings().budget_s == run_defaults()["budget_s"] == 20.0  # not a trainer budget of its own


def test_the_ablation_command_lines_defaults_are_the_specs_and_its_shared_settings_a_runs() -> None:
    ap = argparse.ArgumentParser()
    ablation_cli.add_run_flags(ap)
    args = vars(ap.parse_args([]))
    spec = spec_defaults()
    assert {k: args[k] for k in spec if k in args} == {k: v for k, v in spec.items() if k in args}
    assert set(spec) - set(args) == set()  # every setting of the spec has its flag
    run = run_defaults()
    shared = set(spec) & set(run) - {"iterations", "segment"}  # the ablation's own: 30 in segments of 5
    assert shared and {k: spec[k] for k in shared} == {k: run[k] for k in shared}
    assert AblationSpec(groups=["A"], repeats=1).run_config(Path("x"), "A", 0).trainer() == TrainerSettings()


def test_the_inner_context_takes_the_runs_settings(tmp_path: Path) -> None:
    config = RunConfig(run_dir=str(tmp_path / "run"), batch=2, noise_margin=0.01, seed=7, llm_attempts=1)
    ctx = make_context(config, Ledger(tmp_path / "run"), None, LLMBudget())
    assert (ctx.mode, ctx.batch, ctx.noise_margin, ctx.seed, ctx.llm_attempts) == ("params", 2, 0.01, 7, 1)
    assert ctx.trainer == config.trainer()
