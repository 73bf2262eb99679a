"""The built-in mechanisms: one module each, run in process (the project's own code)."""
