"""A generate-mode run against the scripted capable model, as its own process (so tests can kill -9 it).

python tests/capable_run.py RUN_DIR ITERATIONS DELAY_S

The model's answers follow the run's own trace (`capable_model.capable_model`), so a resumed process goes on with the
same plan of modules.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from capable_model import capable_model  # noqa: E402
from support import SyntheticExecutor  # noqa: E402

from graphs.run_config import RunConfig  # noqa: E402
from graphs.runner import execute  # noqa: E402
from llm.scripted import ScriptedChatModel  # noqa: E402


def main() -> None:
    run_dir, iterations, delay = Path(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
    if (run_dir / "run.json").exists():
        config = RunConfig.load(run_dir)
    else:
        config = RunConfig(
            run_dir=str(run_dir), level="2", iterations=iterations, budget_s=1.0, segment=2, generate_mode="generate"
        )
    execute(
        config, llm=ScriptedChatModel(script=[capable_model(run_dir)], cycle=True), executor=SyntheticExecutor(delay)
    )


if __name__ == "__main__":
    main()
