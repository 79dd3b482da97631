# Quick start (see README): `make run` sets everything up and runs the main job on the
# embedded default store; `make test` runs the whole test suite.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

THEATER ?= russia-ukraine-2022
AS_OF   ?= 2022-02-15

.PHONY: venv run test test-fast lint dashboard clean-venv

# The venv is created once; the package (editable, with test extras) is reinstalled
# only when pyproject.toml changes (the stamp file records the last install).
venv: $(STAMP)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e ".[test]"
	touch $@

run: venv
	$(BIN)/forecast init
	$(BIN)/forecast refit $(THEATER) --as-of $(AS_OF)
	$(BIN)/forecast show $(THEATER)

# Both lanes run on every core (pytest-xdist; TEST_WORKERS=1 runs them in one process).
TEST_WORKERS ?= auto

test: venv
	$(BIN)/pytest -q -n $(TEST_WORKERS)

# Everything that does not sample a real posterior (under 90 s on 2 cores).
test-fast: venv
	$(BIN)/pytest -q -n $(TEST_WORKERS) -m "not slow"

lint: venv
	$(BIN)/ruff check .

dashboard: venv
	$(BIN)/forecast init
	$(BIN)/forecast dashboard

clean-venv:
	rm -rf $(VENV)
