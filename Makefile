# Two entry points for a fresh machine: `make demo` and `make test` (see README.md).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test test-slow install clean browser

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# Stamps re-install when the packaging changes. scripts/install.py takes pip install's arguments
# and installs with uv, configured as pip is (in about half pip's time), or with pip where uv
# cannot match pip's setup (or TOOLKIT_INSTALLER=pip).
$(VENV)/.installed: setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python scripts/install.py -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/python scripts/install.py -e '.[test]'
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(BIN)/python -m toolkit analyze --model resnet18 --dataset digits

# The report test opens the HTML report in Debian's headless chromium, driven by its chromedriver;
# a fresh machine has neither. As root (CI) they are installed; otherwise that one test is skipped.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get -o DPkg::Lock::Timeout=300 update -qq && \
			DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=300 install -y -qq \
				--no-install-recommends chromium chromium-driver >/dev/null; \
		else \
			echo "note: chromium and chromedriver missing and not root: the browser test will be skipped"; \
		fi; \
	fi

# The fast suite (under 5 minutes on 2 cores); test-slow: the end-to-end runs marked slow.
test: $(VENV)/.installed-test browser
	$(BIN)/python -m pytest

test-slow: $(VENV)/.installed-test browser
	$(BIN)/python -m pytest -m slow

clean:
	rm -rf $(VENV) *.egg-info
