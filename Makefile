# Two entry points (see README): `make run` and `make test`. Both set up .venv themselves.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1

.PHONY: run part publish-index test venv smoke lint clean-results

venv: $(STAMP)

# torch and torchvision go first, as a matching pair, so nothing else drags in another torch
$(STAMP): requirements.txt pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $$(grep -E '^(torch|torchvision)==' requirements.txt)
	$(BIN)/pip install -q -r requirements.txt
	$(BIN)/pip install -q --no-deps -e .
	touch $@

# The main job: the whole DAG on the embedded default config, local profile, then docs/results/ from it.
run: $(STAMP)
	$(BIN)/snakemake all publish_parts
	$(MAKE) publish-index

# One part of the tables (config key parts), run and published on its own: `make part PART=tsm`.
part: $(STAMP)
	$(if $(PART),,$(error PART is not set: make part PART=<a name under config key parts>))
	$(BIN)/snakemake docs/results/$(PART)
	$(MAKE) publish-index

# docs/results/README.md and claims.md over the parts published so far (from any runs).
publish-index: $(STAMP)
	$(BIN)/snakemake docs/results/README.md --forcerun publish_index

# The test suite: unit tests plus the smoke workflow end to end.
test: $(STAMP)
	$(BIN)/pytest -q -n 2 --dist loadgroup

smoke: $(STAMP)
	$(BIN)/snakemake --configfile config/smoke.yaml --directory results/smoke

# The default DAG, and a paper model's: its data paths are checked as it parses, so it is linted with them
# pointed at paths that exist here (T2I-CompBench's prompt files: a throwaway folder in its format).
lint: $(STAMP)
	$(BIN)/snakemake --lint
	prompts=$$(mktemp -d) && for c in color shape texture spatial non_spatial complex; do \
		for s in train val; do echo "a red book and a blue mug" > $$prompts/$${c}_$$s.txt; done; done && \
	$(BIN)/snakemake --lint --configfile config/backbones/sd15.yaml \
		--config 'coco={annotations: README.md, images: .}' 'backbones={sd15: {data: {image_text_folder: .}}}' \
		"t2i_compbench={prompts: $$prompts}"; status=$$?; rm -rf $$prompts; exit $$status
