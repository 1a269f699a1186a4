# Two entry points for a fresh machine (run as root): `make demo` and `make test`.
# Each installs what it needs: Debian packages with apt-get, Python packages into .venv.

VENV      ?= .venv
PYTHON    ?= python3
VPY       := $(VENV)/bin/python
STAMP_APT := $(VENV)/.apt-done
STAMP_PIP := $(VENV)/.pip-done

# Debian packages the suite and the demo need (tools for real filesystems, libvirt
# headers for libvirt-python, the sandbox runtime and template builder, the C compiler
# for the fast query client, man to check the generated pages).
DEB_PACKAGES := xfsprogs btrfs-progs e2fsprogs util-linux libvirt-dev pkg-config \
                bubblewrap debootstrap socat gcc libc6-dev man-db scrypt

.PHONY: all demo test lint bench clean

all: test

$(STAMP_APT): Makefile
	@mkdir -p $(VENV)
	@if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	  if [ -n "$$missing" ]; then \
	    echo "installing Debian packages: $$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	      --no-install-recommends $$missing >/dev/null; \
	  fi; \
	else echo "not root or no apt-get: skipping Debian packages ($(DEB_PACKAGES))"; fi
	@touch $@

# fastquery.c is compiled and the man pages are generated from the tools' parsers at
# install time, and the entry points come from plugins.py: reinstall when any changes.
# An editable install leaves setup.py's data_files out, so the pages it built are
# copied into the venv here.
$(STAMP_PIP): setup.py qubes_core/client/fastquery.c qubes_core/plugins.py $(wildcard qubes_core/cli/*.py) $(wildcard qubes_core/ext/*.py) $(STAMP_APT)
	@[ -x $(VPY) ] || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip 2>/dev/null || true
	$(VPY) -m pip install -q -e '.[test]'
	@mkdir -p $(VENV)/share/man && cp -r build/man/. $(VENV)/share/man/
	@touch $@

venv: $(STAMP_PIP)

demo: $(STAMP_PIP)
	$(VPY) -m qubes_core.demo

test: lint
	$(VPY) -m pytest tests $(PYTEST_ARGS)

# ruff, then mypy over qubes_core (its settings and strict packages in pyproject.toml).
lint: $(STAMP_PIP)
	$(VPY) -m ruff check .
	$(VPY) -m mypy

bench: $(STAMP_PIP)
	$(VPY) -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) demo build *.egg-info
