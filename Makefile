# Two commands set everything up on a fresh machine:
#   make run    serve on http://127.0.0.1:8090 with the embedded default
#   make test   run the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: run test lint bench clean sysdeps deb lock

$(BIN)/mxisd: setup.py setup.cfg
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $@

run: $(BIN)/mxisd
	$(BIN)/mxisd run --config etc/mxisd.dev.yaml

sysdeps:
	bash .ci/sysdeps

test: sysdeps $(BIN)/mxisd
	$(BIN)/python -m pytest -q

lint: $(BIN)/mxisd
	$(BIN)/ruff check mxisd_flask tests bench wsgi.py contrib
	$(BIN)/ruff format --check mxisd_flask tests bench wsgi.py contrib
	$(BIN)/mypy mxisd_flask tests bench

bench: $(BIN)/mxisd
	$(BIN)/python bench/lookup_bench.py

# The Debian package, in ..; see docs/deployment.md.
deb:
	dpkg-buildpackage -us -uc -b

# Pin what the package bundles: install_requires resolved afresh with
# Debian's python3.11, written to debian/requirements.txt.
lock:
	rm -rf var/lock-venv
	/usr/bin/python3.11 -m venv var/lock-venv
	var/lock-venv/bin/pip install --quiet .
	{ grep '^#' debian/requirements.txt; \
	  var/lock-venv/bin/pip freeze --exclude mxisd-flask; } > var/requirements.txt
	mv var/requirements.txt debian/requirements.txt
	rm -rf var/lock-venv build mxisd_flask.egg-info

clean:
	rm -rf $(VENV) var
