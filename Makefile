# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is pinned in the same resolve as the extras, so that nothing (e.g. torchvision via timm)
# upgrades it to a multi-GB CUDA build on CPU machines. GPU machines: make TORCH="torch==X.Y.Z".
TORCH ?= torch==2.13.0
PYTEST_ARGS ?= -n 2 --dist loadgroup

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" -e ".[segment,test]"
	# PyPI's torchvision (pulled in via timm) fails to import beside this torch; myocomp never needs it.
	$(BIN)/python -m pip uninstall -q -y torchvision
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/myocomp demo --out demo_out

test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

bench: $(STAMP)
	# R lme4, the peer of bench_glmm.py (skipped there with a note if this cannot install it)
	command -v Rscript >/dev/null && Rscript -e 'library(lme4)' >/dev/null 2>&1 || \
		apt-get install -y r-base-core r-cran-lme4 || true
	# peer of bench_quantify (statistics only, no weights); --no-deps keeps the venv's torch/nnunetv2
	$(BIN)/python -m pip install -q --no-deps totalsegmentator || echo "totalsegmentator not installable: bench_quantify skips that peer"
	for b in benchmarks/bench_*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) demo_out .pytest_cache
