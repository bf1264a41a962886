# `make test` builds its own environment from nothing: a venv at .venv with the pinned torch wheels.
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: test demo venv bench clean

$(PY):
	python3 -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q tests

# The embedded demo: the generated image world and the shipped tiny CLIP (no downloads, a few minutes on 2 cores).
demo: $(STAMP)
	$(VENV)/bin/clipadapt demo

bench: $(STAMP)
	$(PY) bench/text_truncation.py
	$(PY) bench/coop_cached.py
	$(PY) bench/cocoop_batched.py
	$(PY) bench/ship_synthesis.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
