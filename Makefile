# atelier: `make demo` runs the whole path end to end; `make test` sets up and runs the tests.
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.setup-done

.PHONY: setup demo test test-unit test-integration lint format bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt constraints-tools.txt scripts/setup.sh
	bash scripts/setup.sh
	touch $(STAMP)

demo: setup
	bash scripts/demo.sh

# The image tests (tests/images/, marker podman) need the three images. Their build is mostly
# downloads and layer writes, so it starts in the background while the other tests run; the
# tests' fixture waits for the "build-images: exit N" line in its log. (pytest alone builds
# them itself when ATELIER_IMAGES_BUILD_LOG is not set.)
IMAGES_BUILD_LOG := $(CURDIR)/runs/build-images.log

test: setup
	@mkdir -p runs
	@rm -f $(IMAGES_BUILD_LOG)
	@(bash scripts/build-images.sh --local-base; echo "build-images: exit $$?") \
	  >$(IMAGES_BUILD_LOG) 2>&1 &
	ATELIER_IMAGES_BUILD_LOG=$(IMAGES_BUILD_LOG) $(BIN)/pytest -q --durations=20

test-unit: setup
	$(BIN)/pytest -q -m unit

test-integration: setup
	$(BIN)/pytest -q -m integration

lint: setup
	$(BIN)/ruff check src tests handlers loadtest
	$(BIN)/ruff format --check src tests handlers loadtest
	$(BIN)/mypy

format: setup
	$(BIN)/ruff format src tests handlers loadtest
	$(BIN)/ruff check --fix src tests handlers loadtest

bench: setup
	$(BIN)/atelier bench train
	$(BIN)/atelier bench serve
	$(BIN)/atelier bench drift
	$(BIN)/atelier bench capacity

clean:
	rm -rf runs .pytest_cache .mypy_cache .ruff_cache
