# The two commands of the README. Both set up .venv first (idempotent).
.PHONY: setup demo test bench lock

setup:
	./scripts/setup.sh

demo: setup
	./scripts/install-system.sh
	.venv/bin/compress prune compress:fmnist-cnn --ratio 0.5 --data fashion-mnist --finetune 1 --distill --lr 0.02 --lr-schedule cosine --out out/fmnist-cnn-pruned
	.venv/bin/compress eval out/fmnist-cnn-pruned --data fashion-mnist

test: setup
	./scripts/install-system.sh
	.venv/bin/python -m pytest -q --durations=25

bench: setup
	.venv/bin/python bench/prune_latency.py
	.venv/bin/python bench/make_tables.py

# re-resolve every dependency, rewrite requirements.lock, rebuild .venv from it and run the tests
lock:
	./scripts/lock.sh
