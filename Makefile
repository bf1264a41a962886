# `make test` builds its own environment from nothing: a venv at .venv with the pinned torch wheels.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo venv browser slurm bench bench-quick bench-scaling clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

# The report's test renders its HTML in Debian's headless Chromium: installed here where apt-get can (as root);
# elsewhere that one test is skipped (CI sets CLIPADAPT_REQUIRE_BROWSER=1, which turns the skip into a failure).
browser:
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
		echo "chromium could not be installed: the report's browser test will be skipped"

# The sweep's Slurm tests start a single-node cluster on this machine (slurmctld, slurmd, munge): Debian's packages,
# installed here where apt-get can (as root); elsewhere those tests are skipped (CI sets CLIPADAPT_REQUIRE_SLURM=1).
slurm:
	@command -v slurmctld >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		slurm-wlm munge >/dev/null; } || echo "Slurm could not be installed: the sweep's Slurm tests will be skipped"

# Two test processes (TEST_WORKERS=0: one): the whole suite took 10 minutes on 2 cores, ruff included, where one
# process took 16-20 (that run also generated the default world twice, for two demo tests now one).
TEST_WORKERS ?= 2
# The linter and formatter first (seconds; configured in pyproject.toml), then the suite.
test: $(STAMP) browser slurm
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) tests

# The embedded demo: the generated image world and the shipped tiny CLIP (no downloads, a few minutes on 2 cores).
demo: $(STAMP)
	$(VENV)/bin/clipadapt demo

# Every benchmark, one line each (`NAME ratio=R target=T`); bench-quick: small sizes, under 5 minutes on 2 cores.
bench: $(STAMP)
	$(PY) bench/run.py

bench-quick: $(STAMP)
	$(PY) bench/run.py --quick

# Time and peak memory as class names (10 -> 21,000) and cached features (10k -> 1M) grow: bench/results/.
bench-scaling: $(STAMP)
	$(PY) bench/scaling.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
