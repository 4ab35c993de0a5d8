# The README's two commands are `make up` and `make test`; both install first.
VENV        ?= .venv
PYTHON      ?= python3
BIN         := $(VENV)/bin
# Pinned so pip takes the CPU wheel on disk instead of pulling gigabytes of CUDA packages.
TORCH       := torch==2.13.0
STAMP       := $(VENV)/.installed
# Debian packages the test suite drives for real; installed only when missing.
SYSTEM_PACKAGES ?=

.PHONY: install up test lint system-deps bench clean

install: $(STAMP)

# One pip call so the resolver settles every pin together; re-runs only when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet $(TORCH) -e ".[dev]"
	@touch $@

up: install
	$(BIN)/sovereign up $(ARGS)

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: install system-deps lint
	$(BIN)/pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/python -m tests.benchmarks.startup

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
