# Two commands matter: `make run` and `make test`. Both work on a bare machine: they install what they need.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Debian packages the test bed needs: namespaced sshd hosts (debootstrap builds their rootfs) and
# the tools to wire them up.
APT_PACKAGES := debootstrap iproute2 iptables openssh-client sudo util-linux procps psmisc ca-certificates openssl debian-archive-keyring
# podman (with runc: crun fails here) builds and runs the controller image (`make image`).
APT_PACKAGES += podman runc
# containerd (with runc) is the container runtime of the test bed's node: the kubelet that runs
# provisionJob mode's Jobs in the e2e suite (testbed/capi_remote_testbed/node.py).
APT_PACKAGES += containerd

.PHONY: run test lint fmt deps system-deps venv toolchain clean-devenv manifests docs

# Everything ruff checks and formats: the product, its test bed and the tests.
PY_SOURCES := capi_remote reconcilers testbed tests e2e

# `make run` makes a real cluster (kubeadm init/join on namespaced hosts; docs/quickstart.md);
# `make run STAND_IN=1` the quick flow without kubelets (infrastructure contract only).
STAND_IN ?=

run: deps
	$(BIN)/capi-remote dev up $(if $(STAND_IN),--stand-in)

test: deps
	$(BIN)/pytest -ra

lint: venv
	.ci/conflict-markers
	$(BIN)/ruff check $(PY_SOURCES)
	$(BIN)/ruff format --check $(PY_SOURCES)
	$(BIN)/mypy
	$(BIN)/lint-imports

# CRDs (manifests/crds) and docs/api-reference.md, generated from the models in capi_remote/api.
manifests: venv
	$(BIN)/python -m capi_remote.api generate

# The documentation site (mkdocs, material theme) into build/site; strict: any warning fails.
docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir build/site

fmt: venv
	$(BIN)/ruff format $(PY_SOURCES)
	$(BIN)/ruff check --fix $(PY_SOURCES)

deps: system-deps venv toolchain

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

venv: $(STAMP)

# The product and its test bed (testbed/, a distribution of its own) in one pip call, so the test
# bed's dependency on capi-remote resolves to this checkout.
$(STAMP): pyproject.toml testbed/pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]' -e ./testbed
	touch $(STAMP)

# Builds (or finds in the cache) kube-apiserver, kube-controller-manager, kubectl, etcd, the
# Cluster API manager and its kubeadm bootstrap/control-plane providers (e2e ClusterClass flow),
# the test bed node's kubelet, kube-scheduler, kube-proxy, CNI plugins and pause, cert-manager and
# the Cluster API Operator (the deploy e2e); see docs/development.md for the cache location.
toolchain: venv
	$(BIN)/python -m capi_remote_testbed.toolchain
	$(BIN)/python -m capi_remote_testbed.toolchain node
	$(BIN)/python -m capi_remote_testbed.toolchain cert-manager
	$(BIN)/python -m capi_remote_testbed.toolchain capi-operator
	$(BIN)/python -m capi_remote_testbed.toolchain kubeadm
	$(BIN)/python -m capi_remote_testbed.kubeadm_providers

clean-devenv: venv
	$(BIN)/python -m capi_remote_testbed.hosts cleanup

.PHONY: release-manifests image

# clusterctl release assets, laid out as a clusterctl local repository:
# $(RELEASE_DIR)/infrastructure-remote/<version>/{infrastructure-components.yaml, metadata.yaml,
# cluster-template*.yaml, clusterclass-*.yaml}. The components are `kubectl kustomize
# kustomize/default`; KUBECTL may name any kubectl >= 1.27 (default: the toolchain's pinned one).
RELEASE_VERSION := v$(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
RELEASE_DIR ?= build/release
KUBECTL ?=

release-manifests: $(if $(KUBECTL),,venv)
	@set -euo pipefail; \
	kubectl="$(KUBECTL)"; \
	if [ -z "$$kubectl" ]; then \
	  kubectl=$$($(BIN)/python -m capi_remote_testbed.toolchain | sed -n 's/^kubectl: //p'); \
	fi; \
	out="$(RELEASE_DIR)/infrastructure-remote/$(RELEASE_VERSION)"; \
	rm -rf "$$out" && mkdir -p "$$out"; \
	"$$kubectl" kustomize kustomize/default > "$$out/infrastructure-components.yaml"; \
	cp manifests/clusterctl/metadata.yaml manifests/clusterctl/templates/*.yaml "$$out/"; \
	echo "wrote $$out"

# The controller image, built with podman on a base made from Debian packages (no registry
# needed); see docs/deployment.md. IMAGE_FLAGS: e.g. --offline, --base python:3.11-slim@sha256:...
IMAGE ?= localhost/capi-remote:dev
IMAGE_FLAGS ?=

image: system-deps venv
	$(BIN)/python -m capi_remote_testbed.image build --tag $(IMAGE) $(IMAGE_FLAGS)

.PHONY: bench chaos

# Benchmarks: build/bench/report.{json,md} with machine info, numbers, targets and pass/fail (a
# missed target is reported, not an error). Needs root for the SSH benchmark; see docs/benchmarks.md.
BENCH_FLAGS ?=

bench: deps
	$(BIN)/python -m tests.benchmarks.report $(BENCH_FLAGS)

# Fault injection at a larger scale than `make test` runs it (docs/reliability.md).
CHAOS_SCALE ?= 12

chaos: deps
	CAPI_REMOTE_CHAOS_SCALE=$(CHAOS_SCALE) $(BIN)/pytest tests/chaos -ra -s --timeout=3600
