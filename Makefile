# Two commands matter: `make run` and `make test`. Both work on a bare machine: they install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the test bed needs: namespaced sshd hosts (debootstrap builds their rootfs) and
# the tools to wire them up.
APT_PACKAGES := debootstrap iproute2 iptables openssh-client sudo util-linux procps psmisc ca-certificates openssl debian-archive-keyring

.PHONY: run test lint fmt deps system-deps venv toolchain clean-devenv manifests

run: deps
	$(BIN)/python -m capi_remote.devenv up

test: deps
	$(BIN)/pytest -ra

lint: venv
	$(BIN)/ruff check capi_remote reconcilers tests e2e
	$(BIN)/ruff format --check capi_remote reconcilers tests e2e
	$(BIN)/mypy
	$(BIN)/lint-imports

# CRDs (manifests/crds) and docs/api-reference.md, generated from the models in capi_remote/api.
manifests: venv
	$(BIN)/python -m capi_remote.api generate

fmt: venv
	$(BIN)/ruff format capi_remote reconcilers tests e2e
	$(BIN)/ruff check --fix capi_remote reconcilers tests e2e

deps: system-deps venv toolchain

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Builds (or finds in the cache) kube-apiserver, kube-controller-manager, kubectl, etcd and the
# Cluster API manager; see docs/development.md for the cache location.
toolchain: venv
	$(BIN)/python -m capi_remote.devenv.toolchain

clean-devenv: venv
	$(BIN)/python -m capi_remote.devenv.hosts cleanup
