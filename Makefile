# nodeagent: `make test` runs every tier, each installing what it needs first.
PYTHON ?= python3
PYTEST = $(PYTHON) -m pytest -q -p no:cacheprovider --durations=8
APT = scripts/ensure-apt

UNIT_PKGS = prometheus openssl systemd
NETNS_PKGS = wireguard-go wireguard-tools iproute2 iputils-ping iperf3 curl openvpn openssl prometheus
# fonts-liberation: only a Recommends of chromium, and ensure-apt installs without those.
BROWSER_PKGS = chromium fonts-liberation
KERNEL_PKGS = qemu-system-x86 linux-image-amd64 busybox-static kmod wireguard-tools iproute2 iputils-ping

.PHONY: test test-unit test-fuzz test-netns test-kernel test-browser test-system lint bench demo fuzz deps-python deps-netns deps-kernel install uninstall

test: lint test-unit test-fuzz test-netns test-kernel test-browser test-system

deps-python:
	$(PYTHON) -m pip install -q --disable-pip-version-check -e '.[test]'

deps-netns: deps-python
	$(APT) $(NETNS_PKGS)

deps-kernel: deps-python
	$(APT) $(KERNEL_PKGS)

lint: deps-python
	$(PYTHON) -m ruff check nodeagent tests bench
	$(PYTHON) -m ruff format --check nodeagent tests bench
	$(PYTHON) -m mypy nodeagent
	lint-imports

test-unit: deps-python
	$(APT) $(UNIT_PKGS)
	$(PYTEST) tests/unit

# Every fuzz target (tests/fuzz) on a fixed set of inputs: derandomized, the same each run.
test-fuzz: deps-python
	$(PYTEST) tests/fuzz

# Every fuzz target on new random inputs for FUZZ_SECONDS each; failures are kept in
# .hypothesis/ and replayed first next time.
FUZZ_SECONDS ?= 60
fuzz: deps-python
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(PYTEST) tests/fuzz

test-netns: deps-netns
	$(PYTEST) tests/netns

# The public status page in headless Debian Chromium, driven by Playwright (no browser download).
test-browser: deps-python
	$(APT) $(BROWSER_PKGS)
	$(PYTEST) tests/browser

# Boots a real kernel once (virtme-ng under qemu) and runs the whole tier inside it.
test-kernel: deps-kernel
	$(PYTHON) -m tests.kernel.vm -- $(PYTEST) tests/kernel

# The whole system in network namespaces: feed server, agents, VPN servers and clients, the status page.
DEMO_ARGS ?=
demo: deps-netns
	$(PYTHON) -m nodeagent lab $(DEMO_ARGS)

# Debian with systemd as PID 1 in a VM: installs as the README says and checks the unit there.
SYSTEM_PKGS = qemu-system-x86 qemu-utils linux-image-amd64 debootstrap e2fsprogs kmod git
test-system: deps-python
	$(APT) $(SYSTEM_PKGS)
	$(PYTEST) tests/system

# Install on this Debian machine as root (see the README): /opt/nodeagent, units, users, /etc.
# PIP_INSTALL_ARGS passes options to pip, e.g. "--no-index --find-links=DIR" with no network.
PIP_INSTALL_ARGS ?=
install:
	PIP_INSTALL_ARGS="$(PIP_INSTALL_ARGS)" scripts/install

uninstall:
	scripts/uninstall

bench: deps-netns deps-kernel
	$(APT) wrk
	# The scale goals beside today's figures (kernel VM rows included; about 35 min).
	$(PYTHON) -m bench.scale_table
	$(PYTHON) -m bench.uapi_bench
	$(PYTHON) -m bench.reload_bench
	$(PYTHON) -m bench.feed_bench --skip-propagation
	$(PYTHON) -m bench.openvpn_bench
	$(PYTHON) -m bench.collector_bench
	$(PYTHON) -m bench.memory_profile --peers 100000 --trim
