# emoca_blender: two commands.
#   make demo [VIDEO=path.mp4]   capture -> rig -> retarget onto the sample character -> out/*.fbx, out/*.blend
#   make test                    the test suite (what CI runs; npm ci in tools/threejs where
#                                node is present)
# Both bootstrap .venv from requirements.txt on first use; later runs skip the install.

PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
DEMO_DIR := .cache/demo/clips
VIDEO  ?= $(DEMO_DIR)/WolfgangLanger_Pexels.mp4
OUT    ?= out
NAME   ?= $(basename $(notdir $(VIDEO)))

.PHONY: demo test venv bench extension clean models mutate

venv: $(STAMP)

$(STAMP): requirements.txt requirements-nodeps.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required (bpy 5.0.1 is built for it); set PYTHON=/path/to/python3.11"'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check -q --no-deps -r requirements-nodeps.txt
	touch $(STAMP)

$(DEMO_DIR)/%.mp4: | $(STAMP)
	$(PY) tools/fetch_demo_clips.py

demo: $(STAMP) $(VIDEO)
	$(PY) -m emoca_blender run "$(VIDEO)" -o "$(OUT)" --name "$(NAME)"

# three.js (pinned in tools/threejs/package-lock.json) for the independent-client tests: installed
# where node is present, when the lock file is newer than the install; never fails the build
# (without it those tests skip, saying why)
THREEJS := tools/threejs

test: $(STAMP)
	$(PY) tools/fetch_demo_clips.py
	@if command -v node >/dev/null 2>&1; then \
	  if [ ! -f $(THREEJS)/node_modules/.package-lock.json ] || \
	     [ $(THREEJS)/package-lock.json -nt $(THREEJS)/node_modules/.package-lock.json ]; then \
	    (cd $(THREEJS) && npm ci --no-audit --no-fund --loglevel=error) || \
	      echo "npm ci failed in $(THREEJS): the three.js client tests will skip"; \
	  fi; \
	else echo "no node: the three.js client tests will skip"; fi
	$(PY) -m pytest -q -rs tests

# the suite's strength: deliberate bugs applied one at a time (in a copy of HEAD), the
# tests that catch each (tools/mutate.py --list; about 10 minutes on 2 cores)
mutate: $(STAMP)
	$(PY) tools/mutate.py

bench: $(STAMP)
	$(PY) bench/run.py

extension: $(STAMP)
	$(PY) tools/build_extension.py

models: $(STAMP)
	$(PY) tools/build_open_head_model.py
	$(PY) tools/build_ict_head.py

clean:
	rm -rf $(OUT) dist .pytest_cache
