# meterkit: `make help` lists the targets. Everything runs from a local virtualenv (.venv)
# that `make install` creates; nothing is installed system-wide.

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
EXTRAS ?= test,bench,lint,speed
# The extension is rebuilt when any of these change.
BUILD_INPUTS := $(shell find rust benches -name '*.rs') Cargo.toml Cargo.lock pyproject.toml

.DEFAULT_GOAL := help
# The local EVM tools (anvil, solc-js, OpenZeppelin, and mppx + viem for the session interop
# test), pinned by contracts/package-lock.json. mppx 0.11 and viem 2.57 disagree on peer
# versions while working together: --legacy-peer-deps.
CHAIN_DIR := .chain
NPM ?= npm
# The proxies `meterkit bench peers` measures meterkit beside. LiteLLM gets a virtualenv of its
# own (its hundreds of dependencies stay out of .venv) at a pinned release: the [proxy] extra of
# later ones needs packages PyPI does not serve, and a proxy that sees every request should not
# move to whatever was published last (1.82.7 and 1.82.8 were a supply-chain compromise).
# nginx comes from the system's packages: installing those is root's decision, not make's.
PEERS_DIR := .peers
# `make run`'s port.
PORT ?= 8080
LITELLM_VERSION ?= 1.106.12

.PHONY: help install dev run test services chain contracts demo-chain test-rust test-python lint bench peers clean

help: ## list the targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-12s %s\n", $$1, $$2}'

$(VENV)/.created:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	touch $@

$(VENV)/.installed: $(VENV)/.created $(BUILD_INPUTS)
	$(PY) -m pip install --quiet --editable '.[$(EXTRAS)]'
	touch $@

install: $(VENV)/.installed ## set up: virtualenv, Python deps and a release build of the Rust core

dev: $(VENV)/.created ## quick debug build of the extension into the venv (not for benchmarks)
	$(PY) -m pip install --quiet maturin
	VIRTUAL_ENV=$(abspath $(VENV)) $(BIN)/maturin develop --quiet --extras '$(EXTRAS)'

run: install ## set up and run the proxy on the embedded default (built-in mock upstream); PORT=8081 make run for another port
	@$(BIN)/meterkit serve --demo --port $(PORT) || { code=$$?; \
	  if [ $$code = 4 ]; then echo "make run: port $(PORT) is taken; try PORT=$$(( $(PORT) + 1 )) make run" >&2; fi; \
	  exit $$code; }

test: install services chain test-rust test-python ## set up and run every test: cargo test + pytest

$(CHAIN_DIR)/.installed: contracts/package.json contracts/package-lock.json
	mkdir -p $(CHAIN_DIR)
	cp contracts/package.json contracts/package-lock.json $(CHAIN_DIR)/
	$(NPM) ci --prefix $(CHAIN_DIR) --legacy-peer-deps --no-audit --no-fund --loglevel=error
	touch $@

chain: $(CHAIN_DIR)/.installed ## install the local chain tools from npm into .chain/ (anvil, solc-js, mppx)

contracts: chain ## recompile contracts/ with solc-js into the committed artifacts
	node contracts/build.mjs $(CHAIN_DIR)/node_modules

demo-chain: install chain ## the demo on a local anvil: balances before and after a `meterkit pay`
	$(PY) -m meterkit.chain.demo

$(PEERS_DIR)/litellm/.installed:
	$(PYTHON) -m venv $(PEERS_DIR)/litellm
	$(PEERS_DIR)/litellm/bin/pip install --quiet --upgrade pip
	$(PEERS_DIR)/litellm/bin/pip install --quiet 'litellm[proxy]==$(LITELLM_VERSION)'
	touch $@

peers: $(PEERS_DIR)/litellm/.installed ## install what `bench peers` compares with: LiteLLM into .peers/ (nginx: from the system)
	@if command -v nginx >/dev/null || test -x /usr/sbin/nginx; then echo "nginx: found"; \
	else echo "nginx: not found (bench peers skips it): as root, apt-get install -y nginx-light"; fi

services: ## start the local Redis and PostgreSQL the multi-instance tests need, when down
	@bash tests/services.sh

test-rust: ## Rust unit and property tests (no Python involved)
	cargo test --quiet

test-python: install ## pytest: parity with tiktoken, properties, SDK cross-checks, end to end
	$(BIN)/pytest

lint: install ## ruff, rustfmt, clippy, mypy and stubtest of the hand-written stub
	$(BIN)/ruff check python tests
	$(BIN)/ruff format --check python tests
	cargo fmt --check
	cargo clippy --all-targets --quiet -- -D warnings
	PYO3_PYTHON=$(abspath $(PY)) cargo clippy --features python --quiet -- -D warnings
	$(BIN)/mypy
	$(BIN)/python -m mypy.stubtest meterkit._core

bench: install ## benchmarks (release build, baselines in the same run): criterion + every meterkit bench suite (peers: those installed, see `make peers`), PNG plots in benches/results/plots/
	cargo bench --bench core
	$(BIN)/meterkit bench core
	$(BIN)/meterkit bench proxy
	$(BIN)/meterkit bench budgets
	$(BIN)/meterkit bench payments
	$(BIN)/meterkit bench sessions
	$(BIN)/meterkit bench peers

clean: ## remove build outputs and the virtualenv
	rm -rf target $(VENV) $(CHAIN_DIR) $(PEERS_DIR) python/meterkit/*.so .pytest_cache .hypothesis
