# towerserve: `make run` builds data + the served model if missing and serves; `make results` trains
# and compares every model; `make test` runs the suite.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DATA   ?= data/seed
ARTIFACTS ?= artifacts/seed
RESULTS ?= artifacts/seed-results
PORT   ?= 50051
# Tests and tools find the packaged MiniLM offline; never reach for the hub.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export USE_TF := 0

.PHONY: run results test test-fast install data baselines artifacts serve bench bench-deps proto proto-check clean

install: $(STAMP)

# Reinstall only when the project's dependency list changes, so `make test` stays fast.
$(STAMP): pyproject.toml
	@echo "==> creating $(VENV) and installing towerserve (pip, a few minutes on a fresh machine)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

$(DATA)/users.csv: | $(STAMP)
	$(VENV)/bin/towerserve generate --out $(DATA) --users 10000 --items 1000 --seed 42

data: $(DATA)/users.csv

baselines: $(DATA)/users.csv
	$(VENV)/bin/towerserve baselines --data $(DATA)

# What serving needs: the hybrid's default recipe on the holdout split (no recipe search, no cold
# split). `make results` trains the full comparison.
$(ARTIFACTS)/manifest.json: $(DATA)/users.csv | $(STAMP)
	$(VENV)/bin/towerserve train --data $(DATA) --out $(ARTIFACTS) --model hybrid --no-cold --no-search

# Every model on both splits with the hybrid's recipe search, the baselines and the report.
results: $(DATA)/users.csv
	$(VENV)/bin/towerserve train --data $(DATA) --out $(RESULTS) --model all

$(ARTIFACTS)/serving/manifest.json: $(ARTIFACTS)/manifest.json
	$(VENV)/bin/towerserve export --artifacts $(ARTIFACTS)

artifacts: $(ARTIFACTS)/serving/manifest.json

# A step list with times on the terminal; each step's full log goes to $(ARTIFACTS).log.
run: | $(STAMP)
	@set -e; log=$(ARTIFACTS).log; mkdir -p $$(dirname $$log); : > $$log; \
	step() { name=$$1; shift; printf '==> %-52s' "$$name"; t=$$(date +%s); \
	  if "$$@" >>$$log 2>&1; then echo "$$(( $$(date +%s) - t )) s"; \
	  else echo "FAILED"; tail -n 30 $$log; echo "(full log: $$log)"; exit 1; fi; }; \
	if [ -f $(DATA)/users.csv ]; then echo "==> data: $(DATA) (exists)"; else \
	  step "generate data: 10,000 users x 1,000 items" $(MAKE) -s $(DATA)/users.csv; fi; \
	if [ -f $(ARTIFACTS)/manifest.json ]; then echo "==> model: $(ARTIFACTS) (exists)"; else \
	  step "embed texts, train the hybrid (holdout split)" $(MAKE) -s $(ARTIFACTS)/manifest.json; fi; \
	if [ -f $(ARTIFACTS)/serving/manifest.json ]; then echo "==> serving: $(ARTIFACTS)/serving (exists)"; else \
	  step "export to ONNX (parity-checked) + item index" $(MAKE) -s $(ARTIFACTS)/serving/manifest.json; fi
	@echo "Serving $(ARTIFACTS)/serving on port $(PORT). Try, from another shell:"
	@echo "  $(VENV)/bin/towerserve recommend --target localhost:$(PORT) --user tec_0001 -n 5"
	@echo "  grpcurl -plaintext -d '{\"user_id\": \"tec_0001\", \"top_n\": 5}' localhost:$(PORT) towerserve.v1.Recommender/Recommend"
	$(VENV)/bin/towerserve serve --artifacts $(ARTIFACTS)/serving --port $(PORT)

# gpu-marked tests skip themselves (with the reason) where onnxruntime has no CUDA.
test: $(STAMP)
	$(PY) -m pytest -q

# The fast tier: everything but the `slow` marker (tests that build the tiny pipeline or BERT, train,
# or generate at scale); see tests/conftest.py.
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

proto: $(STAMP)
	$(PY) proto/generate.py

proto-check: $(STAMP)
	$(PY) proto/generate.py --check

bench: $(STAMP)
	$(PY) benchmarks/bench_metrics.py

# The peers of benchmarks/peers.py (the `bench` extra). lightfm is an sdist that only builds through
# setup.py's legacy path, without build isolation, which pip 25.3 removed: a pip 25.2 run from its
# wheel builds it (the venv's own pip is left as it is), then the rest of the extra installs.
bench-deps: $(STAMP)
	$(PY) -m pip install -q setuptools wheel cython
	$(PY) -m pip download -q --no-deps 'pip>=25,<25.3' -d $(VENV)/.pip-legacy
	$(PY) $$(ls $(VENV)/.pip-legacy/pip-*.whl | tail -1)/pip install -q --no-build-isolation 'lightfm>=1.17'
	$(PY) -m pip install -q -e '.[bench]'

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info
