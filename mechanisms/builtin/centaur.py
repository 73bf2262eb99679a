"""Centaur: CMA-ES proposes, the LLM replaces every third proposal (CMA-ES is told the LLM's trainings too).

The hybrid that ranked first in Ferreira et al., *Can LLMs Beat Classical HPO Algorithms?* (arXiv 2603.24647), where
the LLM replaced 30 % of CMA-ES's trials. Iterations 3, 6, 9, ... ask the LLM with the Level 1.5 guidance (as
`llm_greedy` does); the others are `cma_es`'s draw. No memory outside the trace: CMA-ES is rebuilt from every recorded
training, the LLM's included (an injected solution, told at the point that was trained).
"""

from typing import Any

from mechanisms.builtin.cma_es import cma_proposal

NAME = "centaur"
TARGET = "propose"
MAX_CHANGES = None  # CMA-ES's proposals are whole configurations; the LLM's keep the 1-3 rule of its own schema
LLM_EVERY = 3


def asks_llm(iteration: int) -> bool:
    return iteration > 0 and iteration % LLM_EVERY == 0


def propose(view: Any) -> dict[str, Any]:
    if asks_llm(view.iteration):
        return view.ask_llm(view.settings.get("guidance", ""))
    return cma_proposal(view)
