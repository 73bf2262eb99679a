"""A run driven by a scripted model and the synthetic executor, as its own process (so tests can kill -9 it).

python tests/scripted_run.py RUN_DIR ITERATIONS DELAY_S [LEVEL]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from support import SyntheticExecutor, change  # noqa: E402

from graphs.run_config import RunConfig  # noqa: E402
from graphs.runner import execute  # noqa: E402
from llm.scripted import ScriptedChatModel  # noqa: E402

VALUES = (0.01, 0.02, 0.03, 0.05, 0.06, 0.07, 0.09, 0.1, 0.12, 0.15)


def main() -> None:
    run_dir, iterations, delay = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    level = sys.argv[4] if len(sys.argv) > 4 else "1"
    inner_only = level == "inner"
    if (run_dir / "run.json").exists():
        config = RunConfig.load(run_dir)
    else:
        config = RunConfig(
            run_dir=str(run_dir),
            level="1" if inner_only else level,
            iterations=iterations,
            budget_s=1.0,
            segment=3,
            generate_mode="compose",
        )
    script = [change("MATRIX_LR", v) for v in VALUES]
    execute(
        config,
        llm=ScriptedChatModel(script=script, cycle=True),
        executor=SyntheticExecutor(delay),
        inner_only=inner_only,
    )


if __name__ == "__main__":
    main()
