# make demo  — set up everything and run the demo end to end on the local engine
# make test  — set up everything and run every test (what CI runs)
SHELL := /bin/bash
.DEFAULT_GOAL := help
VENV ?= $(CURDIR)/.venv

.PHONY: help setup demo test unit integration lint sanity molecule bench clean

help:
	@echo "make demo | make test | make setup | make unit | make integration | make lint | make sanity | make molecule | make bench | make clean"

setup:
	@bash scripts/setup.sh

demo: setup
	@bash scripts/demo.sh

# the set-up is part of the run: the static checks go beside it (scripts/test.sh all)
test:
	@bash scripts/test.sh all

unit integration lint sanity molecule: setup
	@bash scripts/test.sh $@

bench: setup
	@bash scripts/bench.sh

clean:
	@bash scripts/demo.sh --clean || true
	rm -rf tests/output .pytest_cache
