# Two commands do everything on a fresh machine:
#   make run    set up, then `dvc repro` on the default dataset (Fashion-MNIST)
#   make test   set up, then the whole test suite
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export NO_ALBUMENTATIONS_UPDATE := 1
FASHION_MNIST_DIR := /usr/share/datasets/fashion-mnist

.PHONY: setup dataset team-tools run test accurate tune serve tracking-server push lint bench bench-quick clean
setup: $(VENV)/.installed dataset team-tools

$(VENV)/.installed: requirements.txt pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --disable-pip-version-check -r requirements.txt
	$(VENV)/bin/pip install --quiet --disable-pip-version-check --no-deps -e .
	touch $@

# Debian's dataset-fashion-mnist when we can install it; otherwise ingest falls back to
# ingest.fashion_mnist_dir in params.yaml, then to the Keras download (see README).
dataset:
	@if [ ! -d $(FASHION_MNIST_DIR) ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing dataset-fashion-mnist"; \
		apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null; \
	fi
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing chromium (the service page's browser test)"; \
		apt-get update -qq && apt-get install -y -qq chromium >/dev/null; \
	fi

# PostgreSQL (the shared tracking server's and the shared search's database) and an SSH server (the
# tests' loopback SSH remote), when we can install them; README: Working as a team.
team-tools:
	@if ! ls /usr/lib/postgresql/*/bin/pg_ctl >/dev/null 2>&1 \
		&& [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing postgresql"; \
		apt-get update -qq && apt-get install -y -qq postgresql >/dev/null; \
	fi
	@if [ ! -x /usr/sbin/sshd ] && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing openssh-server"; \
		apt-get update -qq && apt-get install -y -qq openssh-server >/dev/null; \
	fi

run: setup
	dvc repro

test: setup
	pytest

# The accurate profile (issue #13; README: An accurate profile): a DVC experiment that trains
# resnet_small for at least 15 epochs with online flips and shifts, about 50 minutes on 2 CPU cores
# for Fashion-MNIST (a small photo set still gets the epochs train.auto gives it).
# `dvc exp show` puts it beside the default run; `dvc exp apply <name>` makes it the workspace's.
ACCURATE := -S train.model=resnet_small -S train.auto.min_epochs=15 \
	-S train.online_augment.when=always
accurate: setup
	dvc exp run $(ACCURATE)

# Optuna search over params.yaml's tune section (after `dvc repro augment`); README: Hyperparameter search
tune: setup
	python -m imgclf.tune

# The HTTP service on 127.0.0.1:8000 (README: Serving); IMGCLF_MODEL=models:/imgclf-classifier@champion to serve the champion
serve: setup
	python -m imgclf.serve

# PostgreSQL + mlflow server for a team (Ctrl-C stops both); README: Working as a team
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
# vega-embed inlined at the versions pinned in the script, fetched with npm; README: Plots offline
.PHONY: plots-template
plots-template:
	python3 scripts/build_plots_template.py
