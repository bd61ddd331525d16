# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv and install on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# torch is pinned in the same resolve as the extras, so that nothing (e.g. torchvision via timm)
# upgrades it to a multi-GB CUDA build on CPU machines. GPU machines: make TORCH="torch==X.Y.Z".
TORCH ?= torch==2.13.0
PYTEST_ARGS ?= -n 2 --dist loadgroup

.PHONY: install demo test test-services lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)" -e ".[segment,test]"
	# PyPI's torchvision (pulled in via timm) fails to import beside this torch; myocomp never needs it.
	$(BIN)/python -m pip uninstall -q -y torchvision
	# byte-compile the editable sources as a normal install would (PYTHONDONTWRITEBYTECODE=1
	# shells would otherwise compile every module at every command start)
	$(BIN)/python -m compileall -q src
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/myocomp demo --out demo_out

# Debian packages of the tests' real services (SLURM + munge, headless Chromium) and peers (R MASS::polr),
# installed once, one apt run at a time, where this is root with apt-get; elsewhere those tests skip and say why.
TEST_DEBS := slurm-wlm munge chromium r-cran-mass
test-services:
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		missing=""; for p in $(TEST_DEBS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
		if [ -n "$$missing" ]; then \
			echo "installing$$missing"; export DEBIAN_FRONTEND=noninteractive; \
			apt-get -o DPkg::Lock::Timeout=600 update -qq && \
			apt-get -o DPkg::Lock::Timeout=600 install -y -qq $$missing >/dev/null || echo "apt-get failed: those tests will say why"; \
		fi; \
	fi

test: $(STAMP) test-services
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
