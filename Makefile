# Two commands on a fresh machine: `make run` and `make test`. Each creates .venv as needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/default.toml

.PHONY: run stop test lint install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# EVENTS=path trains on your own event files or dataset folder instead of synthetic data.
EVENTS ?=
DATA_DIR := var/data
OWN_DATA_DIR := var/data-own
# The campaign `make run` creates and runs once, so pushes show up in the worker's log.
DEMO_CAMPAIGN ?= configs/campaigns/demo.toml

run: $(STAMP)
ifeq ($(EVENTS),)
	@test -d $(DATA_DIR)/events || $(BIN)/recsvc data synth --config $(CONFIG) --out $(DATA_DIR)
	$(BIN)/recsvc train --config $(CONFIG) --events $(DATA_DIR) --promote-if-better
	$(BIN)/recsvc users import $(DATA_DIR) --demo-devices --config $(CONFIG)
else
	$(BIN)/recsvc train --config $(CONFIG) --events $(EVENTS) --promote
	@if [ -f "$(EVENTS)/users.parquet" ]; then $(BIN)/recsvc users import "$(EVENTS)" --demo-devices --config $(CONFIG); fi
	@mkdir -p $(OWN_DATA_DIR)/events
endif
	$(BIN)/recsvc models list --config $(CONFIG)
	$(BIN)/recsvc up --config $(CONFIG) --demo-campaign $(DEMO_CAMPAIGN)

# With EVENTS, the model trained on them is promoted (a score measured on other data, such as an
# earlier synthetic shop's, says nothing about it); the events the API receives are archived into a
# folder of their own, and the scheduler's nightly retrain trains on EVENTS and them, promoting
# only a better model (not on the synthetic shop in DATA_DIR).
ifneq ($(EVENTS),)
run: export RECSVC_DATA__DIR = $(OWN_DATA_DIR)
run: export RECSVC_NOTIFIER__SCHEDULER__RETRAIN_COMMAND = ["recsvc", "train", "--events", "$(EVENTS)", "$(OWN_DATA_DIR)", "--promote-if-better"]
endif

# The embedded Redis outlives `make run` (its data stays for the next command); this stops it.
stop: $(STAMP)
	$(BIN)/recsvc redis stop --config $(CONFIG)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

test: $(STAMP) lint
	$(BIN)/pytest

clean:
	rm -rf $(VENV) var
