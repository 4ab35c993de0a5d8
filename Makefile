# The README's two commands are `make up` and `make test`; both install first.
VENV        ?= .venv
PYTHON      ?= python3
BIN         := $(VENV)/bin
# Pinned so pip takes the CPU wheel on disk instead of pulling gigabytes of CUDA packages.
TORCH       := torch==2.13.0
STAMP       := $(VENV)/.installed
# uv installs in seconds where pip takes minutes; it is handed pip's own find-links (where this
# machine keeps the CPU torch wheel), since uv does not read pip's configuration. Bytecode is not
# compiled at install time (that compiles every module of every package: 35 s here); instead the
# stack and the tests run with bytecode writing on, so the first start compiles only the modules it
# imports and later starts reuse them. With PYTHONDONTWRITEBYTECODE set, as these machines set it,
# every Ray worker would recompile torch, transformers and Ray from source at every start.
WRITE_BYTECODE := PYTHONDONTWRITEBYTECODE=
FIND_LINKS  ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_FLAGS    := $(foreach link,$(FIND_LINKS),--find-links $(link))
# Debian packages the test suite drives for real; installed only when missing.
# prometheus (with promtool): the alert-rule unit tests and the end-to-end dashboard test.
# chromium and fonts-nanum (Korean glyphs): the registry UI test, driven by Playwright.
SYSTEM_PACKAGES ?= prometheus chromium fonts-nanum

.PHONY: install up test lint charts system-deps bench clean

install: $(STAMP)

# One resolver run settles every pin together; it re-runs only when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@test -x $(BIN)/uv || $(BIN)/python -m pip install --quiet --quiet uv
	$(BIN)/uv pip install --quiet --python $(BIN)/python $(UV_FLAGS) $(TORCH) -e ".[dev]"
	@touch $@

up: install
	$(WRITE_BYTECODE) $(BIN)/sovereign up $(ARGS)

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
		dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "installing system packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/sovereign chart generate --check

# The CRDs, values.schema.json and the policy-generated objects in charts/, from their Python sources.
charts: install
	$(BIN)/sovereign chart generate

test: install system-deps lint
	$(WRITE_BYTECODE) $(BIN)/pytest $(PYTEST_ARGS)

bench: install
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e ".[dev,bench]"
	$(BIN)/python -m tests.benchmarks.guard
	$(BIN)/python -m tests.benchmarks.auth
	$(BIN)/python -m tests.benchmarks.metrics
	$(BIN)/python -m tests.benchmarks.registry
	$(BIN)/python -m tests.benchmarks.startup
	$(BIN)/python -m tests.benchmarks.engine

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
