# exportd developer commands. `make demo` and `make test` work on a fresh machine.
# Installs come from the lock (requirements/*.txt, pinned versions); `make lock` bumps it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install --quiet
COMPILE := $(BIN)/pip-compile --quiet --no-emit-index-url --no-emit-find-links --strip-extras \
           --unsafe-package exportd

.PHONY: install install-runtime demo serve test lint typecheck bench lock clean

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	touch $@

# the service and the demo only: the lock's runtime set, no test tools
$(VENV)/.runtime: $(VENV)/.created requirements/runtime.txt pyproject.toml setup.py $(wildcard src/native/*.c)
	$(PIP) -r requirements/runtime.txt
	$(PIP) --no-deps -e .
	touch $@

# everything the tests, linters and `make lock` need: the lock's dev set
$(VENV)/.dev: $(VENV)/.created requirements/dev.txt pyproject.toml setup.py $(wildcard src/native/*.c)
	$(PIP) -r requirements/dev.txt
	$(PIP) --no-deps -e .
	touch $@ $(VENV)/.runtime

install: $(VENV)/.dev

install-runtime: $(VENV)/.runtime

demo: install-runtime
	$(BIN)/exportd demo

serve: install-runtime
	$(BIN)/exportd serve

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install
	$(BIN)/mypy

test: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy
	$(BIN)/pytest

# the bench's extra tools on top of the dev lock (constrained by it where they overlap)
bench: install
	$(PIP) -c requirements/dev.txt -e '.[bench]'
	$(BIN)/python -m bench

# on purpose only: newest versions allowed by pyproject.toml, the dev set first and the
# runtime set within it (so both agree); then `make install` and `make test`
lock: install
	$(COMPILE) --upgrade --extra dev -o requirements/dev.txt pyproject.toml
	$(COMPILE) -c requirements/dev.txt -o requirements/runtime.txt pyproject.toml

clean:
	rm -rf $(VENV) exportd-demo exportd-data .pytest_cache .mypy_cache .ruff_cache
