# The short commands the README names.
CARGO ?= cargo
CONFIG ?= examples/hermes.toml

.PHONY: build run test test-deps lint bench clean-state package

## Build the host and every plugin library (debug), a second loopback build that reports
## another version (the reload tests swap between the two), plugins built against modified
## copies of plugin-api (the ABI-mismatch tests), and the plugins of earlier API levels from
## their frozen sources (the compatibility matrix).
build:
	$(CARGO) build --workspace
	HERMES_LOOPBACK_VERSION=0.2.0-next $(CARGO) build -p hermes-loopback --target-dir target/variant
	scripts/abi-variants
	scripts/compat-levels

## The main job: serve the example config (loopback + a route; needs nothing external).
run: build
	./target/debug/hermes-host --config $(CONFIG) serve

## Every test. The plugin libraries are built once, before the tests load them.
## cargo-nextest runs each test in its own process, so per-process counts (fds, threads,
## mappings) see one test only; without it, tests run one at a time.
## What the tests need beyond Rust (peers, the metrics parser): installed when run as root.
test-deps:
	scripts/test-deps

## The package test installs the .deb into this machine (root only), so it runs alone, after
## the rest: no other test may see its plugins under /usr/lib/hermes/plugins.
test: test-deps build
	$(CARGO) test --workspace --doc
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
		$(CARGO) nextest run --workspace --no-fail-fast -E 'not test(/^package::/)' && \
		$(CARGO) nextest run --workspace -E 'test(/^package::/)'; \
	else \
		$(CARGO) test --workspace --no-fail-fast -- --test-threads=1; \
	fi

## A Debian package of a release build (cargo-deb: `cargo install cargo-deb`):
## target/debian/hermes-host_<version>-1_<arch>.deb.
package:
	$(CARGO) build --workspace --release
	$(CARGO) deb -p hermes-host --no-build

## Formatting and lints, as CI checks them.
# Also: the plugin API stays a crate that can leave this repository (it packages on its own).
lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p hermes-plugin-api --features testing --all-targets -- -D warnings
	$(CARGO) package -p hermes-plugin-api --allow-dirty --quiet

## Benchmarks: builds debug and release plugins, prints the tables for BENCHMARKS.md.
bench: build
	$(CARGO) build --workspace --release
	HERMES_LOOPBACK_VERSION=0.2.0-next $(CARGO) build --release -p hermes-loopback --target-dir target/variant
	scripts/compat-levels --release
	$(CARGO) bench -p hermes-host --bench foundation
	$(CARGO) bench -p hermes-host --bench levels
	$(CARGO) bench -p hermes-host --bench split
	$(CARGO) bench -p hermes-host --bench delivery
	$(CARGO) bench -p hermes-host --bench trust
	$(CARGO) bench -p hermes-host --bench sandbox
	$(CARGO) bench -p hermes-host --bench serve
	$(CARGO) bench -p hermes-host --bench reload
	$(CARGO) bench -p hermes-host --bench isolation
	$(CARGO) bench -p hermes-host --bench dev
	$(CARGO) bench -p hermes-irc --bench lines

clean-state:
	rm -rf examples/.hermes examples/.hermes-bridge
