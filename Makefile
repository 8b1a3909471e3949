# The two commands. Each sets up what it needs on a fresh machine with Python 3.11+.
#   make demo   veer splitting live traffic between two demo backends (no other software)
#   make test   lint, type-check and run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# The hot path's build (setup.py): auto compiles it with mypyc where a C compiler is and
# falls back to pure Python; mypyc must compile (CI); pure never does.
BUILD  ?= auto
# What make test expects to be running: the tests fail on anything else. On a machine
# with no C compiler: make test BUILD=pure EXPECT=pure.
EXPECT ?= mypyc
# The pure modules are tested too, from the same tree (VEER_PURE_PYTHON=1 passes over the
# compiled ones): the unit tests and the data-plane trust and hostile-peer tests.
PURE_TESTS = tests/unit tests/functional/test_trust.py tests/functional/test_conformance.py \
	tests/functional/test_exchange_edges.py tests/functional/test_forwarding.py \
	tests/reliability/test_request_sequences.py tests/reliability/test_differential_httpbin.py
# Reinstalled (and recompiled) when the code or the build changes, not on every make test.
SOURCES := setup.py pyproject.toml $(shell find proxy admin -name '*.py' 2>/dev/null)

.PHONY: demo test setup setup-test lint typecheck clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# A test install is a superset of a plain one: make demo after make test uses it.
setup: $(if $(wildcard $(VENV)/.installed-test-$(BUILD)),$(VENV)/.installed-test-$(BUILD),$(VENV)/.installed-$(BUILD))

setup-test: $(VENV)/.installed-test-$(BUILD)

# Compiled modules sit next to their sources (an editable install); setup.py removes the
# old ones first. A stamp stands for one build: installing another drops them all.
$(VENV)/.installed-$(BUILD): $(BIN)/python $(SOURCES)
	rm -f $(VENV)/.installed-*
	VEER_BUILD=$(BUILD) $(BIN)/pip install --quiet -e .
	$(BIN)/veer --version
	touch $@

$(VENV)/.installed-test-$(BUILD): $(BIN)/python $(SOURCES)
	rm -f $(VENV)/.installed-*
	VEER_BUILD=$(BUILD) $(BIN)/pip install --quiet -e ".[test]"
	$(BIN)/pip install --quiet --no-deps "httpbin==0.10.4"
	$(BIN)/veer --version
	touch $@

demo: setup
	$(BIN)/veer demo

lint: setup-test
	$(BIN)/ruff check .

typecheck: setup-test
	$(BIN)/mypy

test: setup-test lint typecheck
	VEER_EXPECT_BUILD=$(EXPECT) $(BIN)/pytest -q
	VEER_PURE_PYTHON=1 VEER_EXPECT_BUILD=pure $(BIN)/pytest -q $(PURE_TESTS)

clean:
	rm -rf $(VENV) build *.egg-info proxy/*.so proxy/*/*.so .pytest_cache .mypy_cache .ruff_cache .hypothesis
