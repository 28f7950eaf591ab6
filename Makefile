# Shoal: `make demo` and `make test` each set up what they need (idempotent) and run.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := crun runc busybox-static tini iproute2 nftables iptables curl
# Only the benchmarks need these (a server copied into an image, and a load tool).
BENCH_APT_PACKAGES := nginx-light wrk
BUSYBOX_IMAGE := build/images/busybox.tar
# A UDP echo server (busybox has none): the tests of UDP published ports.
UDPECHO_IMAGE := build/images/udpecho.tar
IMAGES := $(BUSYBOX_IMAGE) $(UDPECHO_IMAGE)
# Not in build/images (every lab loads all of those): only bench/bench_mesh.py loads it.
NGINX_IMAGE := build/bench/nginx.tar
PYTEST_WORKERS ?= 2

.PHONY: setup apt bench-apt venv images nginx-image test lint unit integration compat demo demo-down bench clean

setup: apt venv images

# Debian packages: installed only when one is missing, so a second run makes no network call.
apt:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; fi

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip >/dev/null
	$(VENV)/bin/pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

$(BUSYBOX_IMAGE): tools/build_busybox_image.py | venv
	$(PY) tools/build_busybox_image.py $@

$(UDPECHO_IMAGE): tools/build_udpecho_image.py tools/build_nginx_image.py tools/build_busybox_image.py | venv
	$(PY) tools/build_udpecho_image.py $@

images: $(IMAGES)

# policy-rc.d keeps the package from starting an nginx on this machine: only its files are used.
bench-apt:
	@missing=""; for p in $(BENCH_APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing:$$missing"; \
	  printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  rc=$$?; rm -f /usr/sbin/policy-rc.d; exit $$rc; fi

$(NGINX_IMAGE): tools/build_nginx_image.py tools/build_busybox_image.py | venv bench-apt
	$(PY) tools/build_nginx_image.py $@

nginx-image: $(NGINX_IMAGE)

lint: venv
	$(VENV)/bin/ruff check shoal tests bench tools
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: setup lint
	$(VENV)/bin/pytest -n $(PYTEST_WORKERS) --dist loadgroup -q -p no:cacheprovider tests

unit: venv
	$(VENV)/bin/pytest -q tests/unit tests/property

demo: setup
	$(PY) tools/demo.py up

demo-down: venv
	$(PY) tools/demo.py down

bench: setup nginx-image
	$(PY) -m bench.run_all

clean:
	rm -rf build $(VENV) *.egg-info
