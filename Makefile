# balance-zoo: `make demo` and `make test` bootstrap .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONWARNINGS ?= ignore::DeprecationWarning

.PHONY: venv demo test bench reproduce readme-table clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## Train AnyLoss with LightningCLI, test, publish, load back, compare; then check its claim.
demo: $(STAMP)
	$(PY) examples/demo.py

## The whole test suite (CI runs exactly this).
test: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m pytest -q

## Speed ratios against named peers, measured in one run each.
bench: $(STAMP)
	$(PY) -m benchmarks.hub_load
	$(PY) -m benchmarks.callback_overhead
	$(PY) -m benchmarks.dynamic_ema
	$(PY) -m benchmarks.adab2n
	$(PY) -m benchmarks.pgd
	$(PY) -m benchmarks.mtard_step
	$(PY) -m benchmarks.convex_relu
	$(PY) -m benchmarks.sinkgd
	$(PY) -m benchmarks.alf_lb
	$(PY) -m benchmarks.bcd
	$(PY) -m benchmarks.rbc
	$(PY) -m benchmarks.sbcl
	$(PY) -m benchmarks.ccl
	$(PY) -m benchmarks.vididi
	$(PY) -m benchmarks.aioli
	$(PY) -m benchmarks.bids
	$(PY) -m benchmarks.federated
	$(PY) -m benchmarks.stochastic_balance
	$(PY) -m benchmarks.paging
	$(PY) -m benchmarks.learning_to_relax
	$(PY) -m benchmarks.permutations
	$(PY) -m benchmarks.altmin

## Every entry's claim check, or one: make reproduce ENTRY=anyloss; on fresh seeds: SEED_OFFSET=100.
## Writes runs/reproduce/NAME.json + .png and copies the picture to cards/NAME/claim.png (claim seeds
## only); fails if any claim did not hold.
reproduce: $(STAMP)
	@entries="$(ENTRY)"; [ -n "$$entries" ] || entries=$$($(PY) -c "import zoo; print(' '.join(e.name for e in zoo.list_entries()))"); \
	failed=""; for e in $$entries; do \
	  $(VENV)/bin/zoo reproduce $$e $(if $(SEED_OFFSET),--seed-offset $(SEED_OFFSET)); rc=$$?; \
	  if [ -z "$(SEED_OFFSET)" ] && [ $$rc -le 1 ]; then cp runs/reproduce/$$e.png cards/$$e/claim.png; fi; \
	  [ $$rc -eq 0 ] || failed="$$failed $$e"; done; \
	if [ -n "$$failed" ]; then echo "claims that did not hold:$$failed"; exit 1; fi

## Regenerate the README's zoo table from the registry.
readme-table: $(STAMP)
	$(VENV)/bin/zoo list --write-readme README.md

clean:
	rm -rf runs lightning_logs .pytest_cache
