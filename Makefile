# One command to try gitmesh, one to test it. Both set themselves up from nothing.
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: demo demo-live test test-fast lint bench clean prometheus tmux node-packages cluster cluster-down

# Debian packages the tests use, installed once (as root, or with sudo): sshd serves Git over SSH,
# gpg signs and checks commits, kubectl renders Kustomize directories and checks the test cluster.
SSHD := /usr/sbin/sshd
GPG_AGENT := /usr/bin/gpg-agent
KUBECTL := /usr/bin/kubectl
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
APT_INSTALL = $(SUDO) apt-get update -qq && \
	DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends
$(SSHD):
	$(APT_INSTALL) openssh-server
$(GPG_AGENT):
	$(APT_INSTALL) gpg gpg-agent
$(KUBECTL):
	$(APT_INSTALL) kubectl

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* && touch $@

## demo: validate and plan examples/repo at HEAD, apply it to the embedded store, show status,
## then run the bookstore for real (Envoy sidecars, apps, gitmesh run) and show what traffic does
demo: $(STAMP)
	$(BIN)/gitmesh validate --repo . --ref HEAD --path examples/repo
	$(BIN)/gitmesh plan --repo . --ref HEAD --path examples/repo
	$(BIN)/gitmesh apply --repo . --ref HEAD --path examples/repo
	$(BIN)/gitmesh status
	$(BIN)/gitmesh demo

## demo-live: the running bookstore for ten minutes: commit to .gitmesh/demo/repo and watch the shares move
demo-live: $(STAMP)
	$(BIN)/gitmesh demo --live 600

## prometheus: Debian's Prometheus, which the rollout tests run (directly, not as the system service)
prometheus:
	@command -v prometheus >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; }

## tmux: Debian's tmux, the terminal the gitmesh top test looks at
tmux:
	@command -v tmux >/dev/null || { $(APT_INSTALL) tmux; }

## node-packages: Debian's containerd, runc, CNI plugins, iptables and conntrack, which the test node runs
node-packages:
	@command -v containerd >/dev/null && command -v runc >/dev/null && [ -x /usr/lib/cni/bridge ] && \
		command -v iptables >/dev/null && command -v conntrack >/dev/null || \
		{ $(APT_INSTALL) containerd runc containernetworking-plugins iptables conntrack; }

## cluster: a real single-node Kubernetes on this host (testenv/README.md); prints the KUBECONFIG to export
cluster: $(STAMP) node-packages
	testenv/up

## cluster-down: stop it and remove everything it put on the host
cluster-down: $(STAMP)
	testenv/down

## test: lint, then every test (unit and integration)
test: $(STAMP) $(SSHD) $(GPG_AGENT) $(KUBECTL) prometheus tmux node-packages
	$(BIN)/ruff check gitmesh tests bench
	$(BIN)/ruff format --check gitmesh tests bench
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n auto --dist loadfile

## test-fast: unit tests only, for the edit-test loop
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not integration"

bench: $(STAMP)
	$(BIN)/python bench/plan_bench.py

clean:
	rm -rf $(VENV) .gitmesh .pytest_cache
