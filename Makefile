# Two commands do everything on a fresh machine:
#   make run    set up the pipeline (the venv, the Fashion-MNIST dataset), then `dvc repro`
#   make test   the same set-up plus the test tools (Chromium, PostgreSQL, an SSH server), then pytest
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export NO_ALBUMENTATIONS_UPDATE := 1
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist
# apt-get installs only as root on a machine that has it (a container, CI); elsewhere nothing is installed
# and the tests that need a tool skip with a message naming it.
CAN_APT := [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null

.PHONY: setup dataset test-tools run test accurate tune serve monitor tracking-server push lint bench bench-quick clean
# What the pipeline needs, and nothing else: `make run` installs no browser, database or SSH server.
setup: $(VENV)/.installed dataset

$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# Debian's dataset-fashion-mnist when we can install it; otherwise ingest falls back to
# ingest.fashion_mnist_dir in params.yaml, then to the Keras download (docs/troubleshooting.md).
dataset:
	@if [ ! -d $(FASHION_MNIST_DIR) ] && $(CAN_APT); then \
		echo "installing dataset-fashion-mnist"; \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	fi

# The tests' tools, for `make test` only: Chromium (the service page, DVC plots and the MLflow UI in a
# headless browser), PostgreSQL (the team's tracking server) and an SSH server (a loopback SSH remote).
test-tools:
	@if ! command -v chromium >/dev/null && $(CAN_APT); then \
		echo "installing chromium (browser tests)"; \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	fi
	@if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 && $(CAN_APT); then \
		echo "installing postgresql (team tests)"; \
		apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; \
	fi
	@if [ ! -x /usr/sbin/sshd ] && $(CAN_APT); then \
		echo "installing openssh-server (team tests)"; \
		apt-get update -qq && apt-get install -y -qq openssh-server >/dev/null; \
	fi

run: setup
	dvc repro

test: setup test-tools
	pytest

# The accurate profile (issue #13; docs/pipeline.md: An accurate profile): a DVC experiment that trains
# resnet_small for at least 15 epochs with online flips and shifts, about 50 minutes on 2 CPU cores
# for Fashion-MNIST (a small photo set still gets the epochs train.auto gives it).
# `dvc exp show` puts it beside the default run; `dvc exp apply <name>` makes it the workspace's.
ACCURATE := -S train.model=resnet_small -S train.auto.min_epochs=15 \
	-S train.online_augment.when=always
accurate: setup
	dvc exp run $(ACCURATE)

# Optuna search over params.yaml's tune section (after `dvc repro augment`); docs/experiments.md: Hyperparameter search
tune: setup
	python -m imgclf.tune

# The HTTP service on 127.0.0.1:8000 (docs/serving.md); IMGCLF_MODEL=models:/imgclf-classifier@champion to serve the champion
serve: setup
	python -m imgclf.serve

# The service's prediction log against the test split: reports/monitor/ (docs/serving.md); exits 1 on an alert
monitor: setup
	python -m imgclf.monitor

# PostgreSQL + mlflow server for a team (Ctrl-C stops both); docs/team.md
tracking-server: setup
	python -m imgclf.server

# The MLflow UI on this repository's store, printing the link to the runs table with the test metrics
# (python -m imgclf.ui; --port N: make ui UI_ARGS='--port 5001')
.PHONY: ui
ui: setup
	python -m imgclf.ui $(UI_ARGS)

# dvc push with the run cache and its outputs, so colleagues restore runs instead of redoing them
push: setup
	python -m imgclf.remote push

bench: setup
	python benchmarks/run.py

bench-quick: setup
	python benchmarks/run.py --quick

lint: setup
	ruff check . && ruff format --check .

clean:
	rm -rf $(VENV) *.egg-info

# The offline page for `dvc plots show/diff` (.dvc/plots/offline.html, committed): vega, vega-lite and
# vega-embed inlined at the versions pinned in the script, fetched with npm; docs/experiments.md: Plots offline
.PHONY: plots-template
plots-template:
	python3 scripts/build_plots_template.py
