# Regenerate every theory figure and JSON summary under figures/ (≈ 130 s on 2 cores).
PY ?= python

.PHONY: figures test bench
figures:
	$(PY) simulations/single_token.py
	$(PY) simulations/token_overlap.py
	$(PY) simulations/generation_verification.py
	$(PY) simulations/optimizers.py

test:
	$(PY) -m pytest -q

bench:
	$(PY) benchmarks/dynamics_engine.py
