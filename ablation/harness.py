"""The paired ablation: every group x repeat is one run of `graphs.runner.execute`, in its own run folder.

Groups A/B/C/D are the paper's levels (`graphs.runner.GROUPS`); "random", "tpe" and "cmaes" are the classical
baselines, "local" the LLM proposer's seeded fallback step alone and "centaur" CMA-ES with every third proposal the
LLM's, all run at level 1 with their built-in mechanism as the proposer. All of them go through the same `execute`:
the same segments, the same baseline experiment, the same keep/discard rule; only the level (or the proposer)
differs. Repeat r uses the same seed in every group (paired design). The noise floor is measured first.

The ablation folder::

    ablation.json        the manifest: spec, and each run's status (pending/running/done), rewritten atomically
    base_train.py        the train.py every run and the noise floor start from
    noise/n00/ ...       the noise floor: the baseline configuration trained with other seeds
    runs/A-r00/ ...      one run folder per (group, repeat), resumable on its own (`python -m graphs.bilevel resume`)
    runs/A-r00/confirm/  optional re-trainings of the run's best configuration with other seeds
    report/              regenerated from all of the above by `ablation report DIR`

A finished run is never run again; an interrupted one is resumed by `execute` from its checkpoint.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from langchain_core.language_models import BaseChatModel

from checkpoints.run_folder import write_atomic, write_json_atomic
from graphs.run_config import RunConfig, run_defaults
from graphs.runner import GROUPS, execute, executor_for
from llm.client import EMBEDDED_MAX_TOKENS, LLMSettings, embedded_watchdog, open_chat_model
from llm.local_server import MODEL_ALIAS, LocalModelServer, spawn_tied
from llm.scripted import ScriptedChatModel
from mechanisms.space import SearchSpace
from nodes.train import read_outcome_file
from trials.candidate import rewrite_constants
from trials.launcher import REPO_ROOT, TRAIN_PATH, Executor, TrainerSettings, Trial

# Groups run at level 1 with a built-in proposer that never asks a model: the classical baselines, and "local" (the
# LLM proposer's own seeded fallback step alone: what the model's choice adds over chance, on the same options)
BASELINES = {"random": "random_search", "tpe": "tpe", "local": "local_search", "cmaes": "cma_es"}
# Groups run at level 1 with a built-in proposer that asks the model for some of its proposals: "centaur" (CMA-ES,
# every third proposal the LLM's)
HYBRIDS = {"centaur": "centaur"}
NO_MODEL = "none: this run never asks a model (any call fails)"
GROUP_NAMES = (*GROUPS, *BASELINES, *HYBRIDS)
NOISE_SEED = 10_000  # noise-floor seeds: far from the repeats' seeds
CONFIRM_SEED = 20_000  # seeds of the re-trainings of a run's best
MANIFEST = "ablation.json"
SURROGATE_FIT = "surrogate_fit.json"  # the surrogate's held-out quality, measured when the ablation starts

LLMFor = Callable[[RunConfig], BaseChatModel]
RUN = run_defaults()  # a run's settings as RunConfig declares them: the spec's shared settings default to these


@dataclass
class AblationSpec:
    """What defines an ablation; saved in the manifest, read back by `ablation resume`. The settings it shares with a
    run default to RunConfig's; iterations and segment are the ablation's own (the paper's harness: 30 in segments
    of 5), and its command line's defaults are these (`spec_defaults`)."""

    groups: list[str]
    repeats: int
    iterations: int = 30
    budget_s: float = RUN["budget_s"]
    segment: int = 5
    seed: int = RUN["seed"]  # repeat r runs with seed + r in every group
    executor: str = RUN["executor"]  # "local" | "surrogate:PATH"
    noise_repeats: int = 5
    confirm: int = 0  # re-trainings of each run's best configuration with other seeds
    device: str = RUN["device"]
    corpus: str = RUN["corpus"]
    model: str | None = RUN["model"]
    base_url: str | None = RUN["base_url"]
    max_llm_calls: int | None = RUN["max_llm_calls"]
    generate_mode: str = RUN["generate_mode"]
    kill_after_s: float | None = RUN["kill_after_s"]
    memory_gb: float | None = None  # memory cap of the trainings (applied by the CLI to its own process)
    llm_threads: int | None = None  # the embedded model's server threads (None: its default)
    llm_attempts: int = RUN["llm_attempts"]  # answers asked for per LLM call before the fallback (every group alike)

    def __post_init__(self) -> None:
        unknown = [g for g in self.groups if g not in GROUP_NAMES]
        if unknown or not self.groups:
            raise ValueError(f"unknown groups {unknown}; choose from {', '.join(GROUP_NAMES)}")
        if self.repeats < 1 or self.iterations < 1:
            raise ValueError("repeats and iterations must be at least 1")

    def run_config(self, run_dir: Path, group: str, repeat: int) -> RunConfig:
        return RunConfig(
            run_dir=str(run_dir),
            level=GROUPS.get(group, "1"),
            iterations=self.iterations,
            segment=self.segment,
            budget_s=self.budget_s,
            device=self.device,
            corpus=self.corpus,
            seed=self.seed + repeat,
            model=self.model,
            base_url=self.base_url,
            max_llm_calls=self.max_llm_calls,
            mechanism=BASELINES.get(group) or HYBRIDS.get(group),
            generate_mode=self.generate_mode,
            kill_after_s=self.kill_after_s,
            executor=self.executor,
            llm_attempts=self.llm_attempts,
        )

    def trainer(self, seed: int) -> TrainerSettings:
        return dataclasses.replace(self.run_config(Path("."), "A", 0).trainer(), seed=seed)


def spec_defaults() -> dict[str, Any]:
    """Each setting's default, as AblationSpec declares it."""
    return {f.name: f.default for f in dataclasses.fields(AblationSpec) if f.default is not dataclasses.MISSING}


def run_id(group: str, repeat: int) -> str:
    return f"{group}-r{repeat:02d}"


def sitting() -> dict[str, str]:
    """Which machine, booted when, a run trains on: its boot id (a new one on every boot of every machine) and its
    CPU. A fixed wall-clock budget measures the machine, so the runs of one repeat are compared only when they
    trained in one sitting (`ablation unpack` keeps a finished run of an unfinished repeat only in the sitting it
    trained in; the report counts sittings)."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        boot = platform.node()
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(
            (line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
             if line.startswith("model name")),
            cpu,
        )  # fmt: skip
    except OSError:
        pass
    return {"boot": boot, "cpu": f"{cpu}, {os.cpu_count()} CPUs"}


@dataclass
class Ablation:
    """An ablation folder: its spec and manifest, and the steps that fill it."""

    root: Path
    spec: AblationSpec
    manifest: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def open(cls, root: Path, spec: AblationSpec | None = None) -> Ablation:
        """A new ablation folder for ``spec``, or an existing one (``spec`` None or equal to the recorded one)."""
        root = Path(root).resolve()  # the trainer runs in the trial's folder: its paths must not be relative
        path = root / MANIFEST
        if path.exists():
            manifest = json.loads(path.read_text())
            recorded = AblationSpec(**manifest["spec"])
            if spec is not None and spec != recorded:
                raise ValueError(f"{root} holds another ablation ({manifest['spec']}); resume it or use another --out")
            return cls(root, recorded, manifest)
        if spec is None:
            raise FileNotFoundError(f"{root} is not an ablation folder (no {MANIFEST})")
        ablation = cls(root, spec, {"spec": dataclasses.asdict(spec), "created": time.time(), "runs": {}})
        ablation.manifest["host"] = {
            "machine": platform.machine(),
            "processor": platform.processor(),
            "system": platform.platform(),
            "python": platform.python_version(),
            "sitting": sitting(),  # where the noise floor trains (first, at the first `run`)
        }
        ablation.save()
        return ablation

    def save(self) -> None:
        write_json_atomic(self.root / MANIFEST, self.manifest)

    def extend(self, repeats: int | None = None, noise_repeats: int | None = None) -> None:
        """Plan more repeats (seeds continue where they stopped) or more noise-floor trainings; what is finished is
        kept and never re-run. The change is recorded in the manifest, so a report says how the ablation grew."""
        repeats = self.spec.repeats if repeats is None else repeats
        noise_repeats = self.spec.noise_repeats if noise_repeats is None else noise_repeats
        if repeats < self.spec.repeats or noise_repeats < self.spec.noise_repeats:
            raise ValueError(
                f"{self.root} already plans {self.spec.repeats} repeats and {self.spec.noise_repeats} noise-floor "
                "trainings; an ablation only grows"
            )
        if (repeats, noise_repeats) == (self.spec.repeats, self.spec.noise_repeats):
            return
        self.manifest.setdefault("extended", []).append(
            {
                "time": time.time(),
                "from": self.spec.repeats,
                "to": repeats,
                "noise_from": self.spec.noise_repeats,
                "noise_to": noise_repeats,
            }
        )
        self.spec = dataclasses.replace(self.spec, repeats=repeats, noise_repeats=noise_repeats)
        self.manifest["spec"] = dataclasses.asdict(self.spec)
        self.save()

    def plan(self) -> list[tuple[str, int]]:
        """Repeat-major order, so an ablation stopped early still holds complete pairs."""
        return [(group, repeat) for repeat in range(self.spec.repeats) for group in self.spec.groups]

    def base_source(self) -> str:
        path = self.root / "base_train.py"
        if not path.exists():
            write_atomic(path, TRAIN_PATH.read_text())
        return path.read_text()

    def status(self, rid: str) -> str:
        return self.manifest["runs"].get(rid, {}).get("status", "pending")

    def mark(self, rid: str, **fields: Any) -> None:
        self.manifest["runs"][rid] = {**self.manifest["runs"].get(rid, {}), **fields}
        self.save()

    def executor(self, override: Executor | None) -> Executor:
        return override or executor_for(self.spec.run_config(self.root, "A", 0))

    # ---- steps ----

    def train_once(self, folder: Path, trial_id: str, params: dict[str, Any], seed: int, executor: Executor) -> None:
        """Train ``params`` once with ``seed`` into ``folder``/outcome.json, unless it is there already."""
        if read_outcome_file(folder / "outcome.json") is not None:
            return
        write_atomic(folder / "train.py", rewrite_constants(self.base_source(), params))
        outcome = executor.run(Trial(trial_id, folder), self.spec.trainer(seed))
        write_json_atomic(folder / "outcome.json", {**outcome, "seed": seed, "params": params})

    def noise_floor(self, executor: Executor, log: Callable[[str], None]) -> None:
        defaults = SearchSpace.from_train_source(self.base_source()).defaults()
        for k in range(self.spec.noise_repeats):
            folder = self.root / "noise" / f"n{k:02d}"
            if not (folder / "outcome.json").exists():
                log(f"noise floor: baseline configuration, seed {NOISE_SEED + k}")
            self.train_once(folder, f"noise-{k:02d}", defaults, NOISE_SEED + k, executor)

    def confirm(self, run_dir: Path, executor: Executor) -> None:
        """Re-train the run's best configuration with other seeds (what the report's confirmed delta uses)."""
        summary = json.loads((run_dir / "summary.json").read_text())
        best_id = summary.get("best_id")
        if not best_id or self.spec.confirm < 1:
            return
        params = json.loads((run_dir / "experiments" / best_id / "proposal.json").read_text())["params"]
        for j in range(self.spec.confirm):
            self.train_once(run_dir / "confirm" / f"c{j:02d}", f"confirm-{j:02d}", params, CONFIRM_SEED + j, executor)

    def run(
        self,
        *,
        llm_for: LLMFor | None = None,
        executor: Executor | None = None,
        stop_after_s: float | None = None,
        workers: int = 1,
        log: Callable[[str], None] = print,
    ) -> bool:
        """Run every pending or interrupted run, ``workers`` at a time; True when the whole ablation is done."""
        deadline = time.time() + stop_after_s if stop_after_s else None
        trainer = self.executor(executor)
        self.record_surrogate_fit()
        self.noise_floor(trainer, log)
        todo = [(g, r) for g, r in self.plan() if self.status(run_id(g, r)) != "done"]
        if not todo:
            return True
        if workers > 1:
            return self.run_in_workers(todo, deadline, workers, log)
        with self.llms(llm_for) as chat_for:
            for done, (group, repeat) in enumerate(todo):
                if deadline is not None and time.time() >= deadline:
                    log(f"time limit: {len(todo) - done} runs left; resume with `ablation resume {self.root}`")
                    return False
                self.start(group, repeat, log)
                self.run_one(group, repeat, chat_for, executor, trainer)
                self.mark(run_id(group, repeat), status="done", finished=time.time())
        return True

    def config(self, group: str, repeat: int) -> RunConfig:
        run_dir = self.root / "runs" / run_id(group, repeat)
        if (run_dir / "run.json").exists():
            return RunConfig.load(run_dir)
        return self.spec.run_config(run_dir, group, repeat)

    def start(self, group: str, repeat: int, log: Callable[[str], None]) -> None:
        rid, config = run_id(group, repeat), self.config(group, repeat)
        log(
            f"{rid}: level {config.level}{' + ' + config.mechanism if config.mechanism else ''}, "
            f"seed {config.seed} ({self.status(rid)})"
        )
        self.mark(
            rid,
            group=group,
            repeat=repeat,
            seed=config.seed,
            status="running",
            started=self.manifest["runs"].get(rid, {}).get("started") or time.time(),
            sitting=sitting(),
        )

    def run_one(self, group: str, repeat: int, chat_for: LLMFor, executor: Executor | None, trainer: Executor) -> None:
        """One run to its end (resumed from its checkpoint if it was interrupted), then its confirmations. Writes
        nothing to the manifest: a worker process runs this while the parent keeps the manifest."""
        config = self.config(group, repeat)
        execute(config, llm=chat_for(config), executor=executor)
        self.confirm(Path(config.run_dir), trainer)

    def run_in_workers(
        self, todo: list[tuple[str, int]], deadline: float | None, workers: int, log: Callable[[str], None]
    ) -> bool:
        """Up to ``workers`` runs at once, each in a worker process with its own model server (the embedded
        model's threads split between them). Only this process writes the manifest; workers are tied to it, so a
        kill -9 here stops them too, and `resume` re-runs what was running from its checkpoint."""
        if not self.spec.executor.startswith("surrogate:"):
            raise ValueError(
                "parallel runs (--workers) need the surrogate executor: real trainings running side by side share "
                "the CPU, and a fixed wall-clock budget would then measure the contention"
            )
        pending, running = list(todo), dict[str, subprocess.Popen[bytes]]()
        failed: list[str] = []
        while pending or running:
            while pending and len(running) < workers:
                if deadline is not None and time.time() >= deadline:
                    log(f"time limit: {len(pending)} runs not started; resume with `ablation resume {self.root}`")
                    pending = []
                    break
                group, repeat = pending.pop(0)
                self.start(group, repeat, log)
                threads = self.spec.llm_threads or max(1, (os.cpu_count() or 1) // workers)
                running[run_id(group, repeat)] = self.spawn_worker(run_id(group, repeat), threads)
            for rid, proc in list(running.items()):
                if proc.poll() is None:
                    continue
                del running[rid]
                if proc.returncode == 0:
                    self.mark(rid, status="done", finished=time.time())
                    log(f"{rid}: done")
                else:
                    failed.append(rid)
                    log(f"{rid}: worker failed (exit {proc.returncode}); see {self.root / 'runs' / rid / 'worker.log'}")
            time.sleep(0.2)
        if failed:
            raise RuntimeError(f"runs failed in their workers: {', '.join(failed)}; fix and `ablation resume`")
        return all(self.status(run_id(g, r)) == "done" for g, r in self.plan())

    def spawn_worker(self, rid: str, threads: int) -> subprocess.Popen[bytes]:
        log_path = self.root / "runs" / rid / "worker.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as out:
            return spawn_tied(
                [sys.executable, "-m", "graphs.bilevel", "ablation", "worker", str(self.root), rid, str(threads)],
                cwd=REPO_ROOT,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )

    def work(self, rid: str, threads: int) -> None:
        """In a worker process: run ``rid`` with this process's own model server (``threads`` threads)."""
        group, repeat = next((g, r) for g, r in self.plan() if run_id(g, r) == rid)
        trainer = self.executor(None)
        with self.llms(None, threads=threads, log_dir=self.root / "runs" / rid) as chat_for:
            self.run_one(group, repeat, chat_for, None, trainer)

    def record_surrogate_fit(self) -> None:
        if not self.spec.executor.startswith("surrogate:") or (self.root / SURROGATE_FIT).exists():
            return
        from ablation.surrogate_quality import fit_quality
        from trials.surrogate import load_model

        write_json_atomic(self.root / SURROGATE_FIT, fit_quality(load_model(Path(self.spec.executor.split(":", 1)[1]))))

    @contextmanager
    def llms(self, llm_for: LLMFor | None, threads: int | None = None, log_dir: Path | None = None) -> Iterator[LLMFor]:
        """Per-run chat models: ``llm_for`` when given; else one model for the whole ablation (the embedded server
        starts at the first run that needs it, once), copied per run with the run's seed so repeats sample
        differently. The baselines (random search, TPE) never ask a model: they get one that fails if asked. A
        worker process (``log_dir``: its run's folder) keeps its server's log there and leaves the manifest alone."""
        if llm_for is not None:
            self.manifest["llm"] = "supplied by the caller"
            self.save()
            yield llm_for
            return
        settings = LLMSettings.resolve(model=self.spec.model, base_url=self.spec.base_url)
        threads = threads or self.spec.llm_threads
        with ExitStack() as stack:
            opened: list[BaseChatModel] = []

            def chat_for(config: RunConfig) -> BaseChatModel:
                if config.mechanism in BASELINES.values():
                    return ScriptedChatModel(script=[], description=NO_MODEL)
                if not opened:
                    logs = log_dir or self.root
                    if settings.embedded and threads is not None:
                        llm, description = stack.enter_context(embedded_model(threads, logs))
                    else:
                        llm, description = stack.enter_context(
                            open_chat_model(settings, server_log=logs / "llm_server.log")
                        )
                    opened.append(llm)
                    if log_dir is None:
                        self.manifest["llm"] = description
                        self.save()
                return with_seed(opened[0], config.seed)

            yield chat_for


@contextmanager
def embedded_model(threads: int, root: Path) -> Iterator[tuple[BaseChatModel, str]]:
    """The embedded model on a server with ``threads`` threads, with the embedded client's settings (answer cap,
    restart watchdog). On a loaded 2-core machine llama.cpp's two spinning threads can be many times slower than one."""
    with LocalModelServer(n_threads=threads, log_path=root / "llm_server.log") as server:
        settings = LLMSettings.resolve(model=MODEL_ALIAS, base_url=server.base_url, max_tokens=EMBEDDED_MAX_TOKENS)
        with open_chat_model(settings) as (llm, _):
            watched = llm.model_copy(update={"callbacks": [embedded_watchdog(server)]})
            yield watched, f"embedded {MODEL_ALIAS} ({server.model_path.name}), n_threads {threads}"


def with_seed(llm: BaseChatModel, seed: int) -> BaseChatModel:
    """The same chat model (same endpoint, same settings) sampling with ``seed``."""
    if "seed" in type(llm).model_fields:
        return llm.model_copy(update={"seed": seed})
    return llm
