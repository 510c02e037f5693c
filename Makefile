# The two commands a newcomer needs: `make demo` and `make test`.
.PHONY: setup demo test test-fast bench lint

setup:
	@bash scripts/setup.sh

## Set up, then run a quick study on the built-in planted data and print its Pareto front.
demo: setup
	.venv/bin/autodim search studies/quick.yaml

## Set up, then run the whole test suite (notebooks and the quick benchmarks included).
test: setup
	.venv/bin/python -m pytest -q -n 2 --dist loadfile

test-fast: setup
	.venv/bin/python -m pytest -q -x -n 2 --dist loadfile -m "not slow"

lint: setup
	.venv/bin/ruff check autodim tests benchmarks

bench: setup
	.venv/bin/python benchmarks/throughput.py
	.venv/bin/python benchmarks/baselines.py
