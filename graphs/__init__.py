"""Graph builders, the command-line entry points and checkpointer wiring."""
