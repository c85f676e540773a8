# Benchmarks print their numbers and write them to bench/results/.
PY ?= .venv/bin/python

.PHONY: bench bench-trust bench-merkle bench-fleet test up

bench: bench-trust bench-merkle bench-fleet

bench-trust:
	@mkdir -p bench/results
	PYTHONPATH=. $(PY) bench/trust_bench.py | tee bench/results/trust.json

bench-merkle:
	@mkdir -p bench/results
	PYTHONPATH=. $(PY) bench/merkle_bench.py | tee bench/results/merkle.jsonl

test:
	./run-tests

up:
	./quickstart

bench-fleet:
	@mkdir -p bench/results
	PYTHONPATH=.:tests $(PY) bench/fleet_bench.py 1000 bench/results/fleet.json
