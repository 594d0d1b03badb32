# The two commands of the README. Both set up .venv first (idempotent).
.PHONY: setup demo test bench

setup:
	./scripts/setup.sh

demo: setup
	.venv/bin/compress prune torchvision:resnet18 --ratio 0.5 --out out/resnet18-pruned
	.venv/bin/compress inspect out/resnet18-pruned

test: setup
	.venv/bin/python -m pytest -q

bench: setup
	.venv/bin/python bench/prune_latency.py
	.venv/bin/python bench/make_tables.py
