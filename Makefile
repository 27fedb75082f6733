# One command to try gitmesh, one to test it. Both set themselves up from nothing.
VENV ?= .venv
BIN := $(VENV)/bin
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# The demo needs gitmesh alone, not the test tools: its own stamp, which a full install also satisfies.
DEMO_STAMP := $(VENV)/.demo-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)
# The demo means the embedded store, whatever cluster an exported KUBECONFIG names.
DEMO_GITMESH := env -u KUBECONFIG $(BIN)/gitmesh

.PHONY: demo demo-live demo-cluster wheel test test-fast lint bench clean prometheus tmux chromium node-packages cluster cluster-down

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

# The web console's third-party scripts (gitmesh/controller/assets.json), fetched pinned from the npm registry.
ASSETS := gitmesh/controller/assets/.pins.json
$(ASSETS): gitmesh/controller/assets.json tools/fetch_assets.py
	python3 tools/fetch_assets.py

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	rm -f $(VENV)/.installed-* $(VENV)/.demo-* && touch $@ $(DEMO_STAMP)

## demo: validate and plan examples/repo at HEAD, apply it to the embedded store, show status,
## then run the bookstore for real (Envoy sidecars, apps, gitmesh run) and show what traffic does
demo: $(DEMO_STAMP) $(ASSETS)
	$(DEMO_GITMESH) validate --repo . --ref HEAD --path examples/repo
	$(DEMO_GITMESH) plan --repo . --ref HEAD --path examples/repo --store .gitmesh/store.db
	$(DEMO_GITMESH) apply --repo . --ref HEAD --path examples/repo --store .gitmesh/store.db --yes
	$(DEMO_GITMESH) status --store .gitmesh/store.db
	$(DEMO_GITMESH) demo
	@echo "The command is $(abspath $(BIN))/gitmesh; to type just gitmesh: export PATH=\"$(abspath $(BIN)):\$$PATH\""

$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	rm -f $(VENV)/.demo-* && touch $@

## demo-live: the running bookstore for ten minutes: commit to .gitmesh/demo/repo and watch the shares move
demo-live: $(DEMO_STAMP) $(ASSETS)
	$(DEMO_GITMESH) demo --live 600

## wheel: dist/gitmesh-VERSION-py3-none-any.whl, for pip install or pipx install of the command alone
wheel: $(DEMO_STAMP) $(ASSETS)
	$(BIN)/pip wheel --quiet --no-deps -w dist .

## prometheus: Debian's Prometheus, which the rollout tests run (directly, not as the system service)
prometheus:
	@command -v prometheus >/dev/null || { $(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus; }

## tmux: Debian's tmux, the terminal the gitmesh top test looks at
tmux:
	@command -v tmux >/dev/null || { $(APT_INSTALL) tmux; }

## chromium: Debian's Chromium and its ChromeDriver, the browser the console's tests look through
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { $(APT_INSTALL) chromium chromium-driver; }

## node-packages: Debian's containerd, runc, CNI plugins, iptables and conntrack, which the test node runs
node-packages:
	@command -v containerd >/dev/null && command -v runc >/dev/null && [ -x /usr/lib/cni/bridge ] && \
		command -v iptables >/dev/null && command -v conntrack >/dev/null || \
		{ $(APT_INSTALL) containerd runc containernetworking-plugins iptables conntrack; }

## cluster: a real single-node Kubernetes on this host (testenv/README.md); prints the KUBECONFIG to export
cluster: $(STAMP) $(ASSETS) node-packages
	testenv/up

## demo-cluster: the bookstore as injected pods on that node (root), applied from Git by gitmesh installed
## in it: the split from real pod traffic, access control, a TCP split, then a commit that moves it
demo-cluster: $(STAMP) $(ASSETS) $(KUBECTL) node-packages
	$(BIN)/python -m tests.pod_bookstore

## cluster-down: stop it and remove everything it put on the host
cluster-down: $(STAMP)
	testenv/down

## test: lint, then every test (unit and integration)
test: $(STAMP) $(ASSETS) $(SSHD) $(GPG_AGENT) $(KUBECTL) prometheus tmux chromium node-packages
	$(BIN)/ruff check gitmesh tests bench tools
	$(BIN)/ruff format --check gitmesh tests bench tools
	$(BIN)/lint-imports
	$(BIN)/mypy
	$(BIN)/python -m pytest -q -n auto --dist loadgroup

## test-fast: unit tests only, for the edit-test loop
test-fast: $(STAMP) $(ASSETS)
	$(BIN)/python -m pytest -q -m "not integration"

bench: $(STAMP)
	$(BIN)/python bench/plan_bench.py

clean:
	rm -rf $(VENV) .gitmesh .pytest_cache
