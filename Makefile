# The few commands people run. `make run` and `make test` set everything up first (idempotent).
PY := .venv/bin/python

.PHONY: setup run test test-fast lint bench clean

setup:
	@bash scripts/setup.sh

run: setup
	$(PY) -m graphs.bilevel $(ARGS)

test: setup
	$(PY) -m pytest -q $(ARGS)

test-fast: setup
	$(PY) -m pytest -q -m "not slow" $(ARGS)

lint: setup
	$(PY) -m ruff check . && $(PY) -m ruff format --check . && $(PY) -m mypy gpt nodes graphs mechanisms checkpoints llm trials ablation dashboard

bench: setup
	$(PY) -m gpt.bench $(ARGS)
