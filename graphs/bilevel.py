"""The main job: a bilevel autoresearch run.

python -m graphs.bilevel                       # a short run on the embedded defaults (local model, CPU)
python -m graphs.bilevel --group C --iterations 30 --budget-s 60
python -m graphs.bilevel resume runs/<run>     # continue after a crash or kill -9
python -m graphs.bilevel draw | report RUN | mechanisms [RUN]
"""

from __future__ import annotations

import sys

from graphs.cli import main

if __name__ == "__main__":
    sys.exit(main())
