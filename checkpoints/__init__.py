"""Checkpointer wiring: where a run's LangGraph checkpoints live and how they are opened."""
