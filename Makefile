# Two entry points for a fresh machine: `make demo` and `make test` (both create .venv).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: demo test test-all lint bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch/torchvision pinned as a matching pair first: timm imports torchvision, and a
	# mismatched pair fails at import ("operator torchvision::nms does not exist").
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

# evaluate exits 3 when the study names no winner (no finalist held up: an honest outcome of
# a from-scratch CNN of 8 epochs, not a failure of the demo); then `best` shows the
# finalists, why each fell short and what to try (and exits 3 itself, which is that outcome)
demo: $(VENV)/.installed
	$(BIN)/drsearch run studies/demo.yaml
	$(BIN)/drsearch evaluate studies/demo.yaml || { rc=$$?; [ $$rc -eq 3 ] || exit $$rc; \
		echo "make demo: the study names no winner, so nothing is evaluated:"; \
		$(BIN)/drsearch best studies/demo.yaml || [ $$? -eq 3 ]; }

# two workers on two cores; the `slow` variants (longer copies of paths other tests cover)
# only in test-all
test: $(VENV)/.installed
	$(BIN)/pytest -q -n 2 -m "not slow"

test-all: $(VENV)/.installed
	$(BIN)/pytest -q -n 2

lint: $(VENV)/.installed
	$(BIN)/ruff check drsearch tests bench
	$(BIN)/ruff format --check drsearch tests bench

bench: $(VENV)/.installed
	$(BIN)/python bench/train_speed.py
	$(BIN)/python bench/study_overhead.py
	$(BIN)/python bench/jpeg_loading.py
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/demo_wall.py
	$(BIN)/python bench/pruning_metric.py
	$(BIN)/python bench/concurrency.py
	$(BIN)/python bench/search_efficiency.py
	$(BIN)/python bench/predict_speed.py
	$(BIN)/pip install -q -e ".[bench]" && $(BIN)/python bench/hpo_lcbench.py --quick

clean:
	rm -rf $(VENV) runs data
