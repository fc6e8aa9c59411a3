# matrix-linkd — build, test, demo, install.
#
#   make demo    the daemon on a private bus against the local homeserver stack, a full link end to end
#   make test    every test: unit, the real daemon on a private bus, and end-to-end over the real stack
#   make bench   figures of the release daemon (flows with a modelled person, concurrency, start-up,
#                idle cost, size) against matrix-sdk's own flow
#   make lint    rustfmt and clippy, as CI runs them
#   make install PREFIX=/usr/local DESTDIR=...

SHELL := /bin/bash
CARGO ?= cargo
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
DATADIR ?= $(PREFIX)/share
SYSTEMD_USER_DIR ?= $(PREFIX)/lib/systemd/user
MANDIR ?= $(DATADIR)/man
BASH_COMPLETION_DIR ?= $(DATADIR)/bash-completion/completions
ZSH_COMPLETION_DIR ?= $(DATADIR)/zsh/vendor-completions
FISH_COMPLETION_DIR ?= $(DATADIR)/fish/vendor_completions.d
# Man pages and shell completions, generated from the clap definitions (xtask).
DIST := target/dist
APP_ID := io.github.matrix_linkd.LinkDevice
TARGET := target/debug

.PHONY: chaos release dist-docs deb deb-deps deb-assets test-package all deps build test test-unit test-integration test-stack test-gtk lint demo bench fuzz fuzz-short fuzz-deps install uninstall clean stack-start stack-stop

all: build

# System packages the tests and the demo use (Debian). Idempotent: installs only what is missing.
deps:
	@bash .ci/deps.sh

# One build graph. Every debug build and test run selects the whole workspace with its test
# targets (`--workspace`), so Cargo resolves one feature set and compiles the dependency graph once:
# selecting a package alone (`-p`) resolves other features (the interop dev-dependencies', the GTK
# app's) and compiles much of the graph again. The package test packages these same artefacts.
# The suites run the programs built here; a suite run by hand after an edit builds them first
# (tests/src/lib.rs, `ensure_built`).
build:
	$(CARGO) build --workspace --all-targets

# Unit tests, a short fuzz run of the parsers, the real daemon on private buses (mock homeserver),
# then end to end over the real stack.
test: deps build test-unit fuzz-short test-integration test-package test-stack test-gtk

test-unit:
	$(CARGO) test --workspace --lib --bins

# The suites are modules of two test binaries (tests/tests/integration, tests/tests/stack): one link
# of the dependency graph each, not one per suite. tests/suites.sh runs them one after another.
INTEGRATION_SUITES := fault_injection flows failures bus desktop cli boundaries sandbox interop concurrency delegation recipes
STACK_SUITES := stack_sdk stack_js stack_failures stack_crash stack_rendezvous stack_device_grant stack_latest stack_balancer stack_delegation stack_script

test-integration:
	CARGO=$(CARGO) tests/suites.sh integration $(INTEGRATION_SUITES)

# The long randomized fault-injection campaign: CHAOS_SEEDS random multi-fault plans (default
# 100,000, from seed CHAOS_FROM) over every flow the harness drives, built in the bench profile
# (optimised, no LTO: about 11 minutes for 100,000 seeds on 2 cores); the exhaustive single-fault
# pass runs in `make test` (docs/testing.md, "Fault injection").
CHAOS_SEEDS ?= 100000
CHAOS_FROM ?= 1000000
chaos:
	FAULT_SEEDS=$(CHAOS_SEEDS) FAULT_SEED_FROM=$(CHAOS_FROM) $(CARGO) test --profile bench --workspace --test integration -- --exact fault_injection::random_fault_sequences_by_seed --nocapture

# End to end over the real stack (Synapse + OAuth server on 127.0.0.1), started and stopped here;
# the interop cells again against a stack whose server name has no `.well-known`.
test-stack:
	SKIP=stack_proxy CARGO=$(CARGO) stack/with-stack.sh tests/suites.sh stack $(STACK_SUITES)
	$(LOCALHOST_STACK) PARTIAL=1 CARGO=$(CARGO) stack/with-stack.sh env LINKD_STACK=localhost tests/suites.sh stack stack_sdk stack_js
	$(PROXY_STACK) PARTIAL=1 CARGO=$(CARGO) stack/with-stack.sh env LINKD_STACK=proxy $(PROXY_TRUST) tests/suites.sh stack stack_proxy

# The GTK app (matrix-link-gtk) under Xvfb, driven through AT-SPI over the real stack: a whole
# login (scanning the other device's QR code from the screen) and a whole grant; screenshots of each
# step in target/gtk-artefacts/.
test-gtk:
	stack/with-stack.sh $(CARGO) test --workspace --test gtk_app

# A second stack like many real deployments: the server name `localhost`, no `.well-known`.
# Every stack port lies below the kernel's ephemeral range (32768-60999): a port in it can be held
# for a minute by a closed client connection in TIME_WAIT, and the stack would not start.
LOCALHOST_STACK := STACK_NAME=localhost SYNAPSE_PORT=28208 OAUTH_PORT=28280 SERVER_NAME=localhost SERVE_WELLKNOWN=false

# A production-shaped deployment (stack/proxy.sh; root): the server name example.test with its
# .well-known, Synapse and the OAuth server behind Debian's nginx with TLS from a CA made for the
# run and gzip on. The CA is trusted as a user's session would trust it: the trust-roots file
# (SSL_CERT_FILE: the daemon, matrix-sdk, curl), and Node's extra CAs (matrix-js-sdk).
PROXY_STACK := STACK_NAME=proxy SYNAPSE_PORT=28308 OAUTH_PORT=28380 PROXY_DOMAIN=example.test
PROXY_TRUST := SSL_CERT_FILE=$(CURDIR)/.stack/proxy/tls/bundle.crt CURL_CA_BUNDLE=$(CURDIR)/.stack/proxy/tls/bundle.crt \
	NODE_EXTRA_CA_CERTS=$(CURDIR)/.stack/proxy/tls/ca.crt

# The main job: a stack of its own (ports 19008/19080), a private bus, the daemon, a full link.
demo: deps build
	STACK_NAME=demo SYNAPSE_PORT=19008 OAUTH_PORT=19080 stack/with-stack.sh $(TARGET)/linkd-demo

# Figures (not a test) for the release daemon, against matrix-sdk's own flow in the same run, with
# a modelled person (BENCH_HUMAN_DELAY, default 2 s, before each human step); see BENCHMARKS.md.
# The daemon and the CLI are the release build that `make install` and `make deb` ship (`release`
# below: the three programs in one invocation, one feature set), so the daemon benched is the daemon
# shipped; without the tests crate, it has none of its matrix-sdk features (`testing`, ...).
# The driver (matrix-sdk baseline peers, test helpers) uses the cheaper `bench` profile (workspace
# Cargo.toml), whose output Cargo puts in target/release too. A stack of its own (ports 19108/19180),
# so that no other run's requests are counted. BENCH_RUNS, BENCH_IDLE_SECS, BENCH_STARTS and
# BENCH_FLOWS tune it.
BENCH_STACK := STACK_NAME=bench SYNAPSE_PORT=19108 OAUTH_PORT=19180

bench: deps release
	$(CARGO) build --profile bench -p matrix-linkd-bench
	$(BENCH_STACK) stack/with-stack.sh env LINKD_NO_REBUILD=1 LINKD_DAEMON_BIN=$(abspath target/release/matrix-linkd) target/release/linkd-bench

# Fuzzing (cargo-fuzz, libFuzzer) of the QR parser, the message decoder, the channel decoders, the
# engine's message handling and the D-Bus options reader.
# The toolchain is stable; RUSTC_BOOTSTRAP lets cargo-fuzz pass its sanitizer flags.
FUZZ_TARGETS := qr_parse message_decode channel_open engine_messages dbus_options
FUZZ_SECONDS ?= 600

fuzz-deps:
	@command -v cargo-fuzz >/dev/null || $(CARGO) install cargo-fuzz --locked

# A short run (20 s a target) as part of `make test`.
fuzz-short: fuzz-deps
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t; \
	  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $$t corpus/$$t corpus-seeds/$$t -- -max_total_time=20 -rss_limit_mb=4096) || exit 1; \
	done

# The longer run: FUZZ_SECONDS (default 600) a target.
fuzz: fuzz-deps
	@for t in $(FUZZ_TARGETS); do \
	  mkdir -p fuzz/corpus/$$t; \
	  (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run $$t corpus/$$t corpus-seeds/$$t -- -max_total_time=$(FUZZ_SECONDS)) || exit 1; \
	done

stack-start:
	stack/start.sh

stack-stop:
	stack/stop.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# The man pages and completions of the three programs into $(DIST)/man and $(DIST)/completions.
# From the workspace build (`cargo run -p` would resolve the xtask's own feature set and compile
# the graph again).
dist-docs: build
	$(TARGET)/matrix-linkd-xtask dist-docs $(DIST)

# The Debian package (cargo-deb; metadata in daemon/Cargo.toml): target/debian/matrix-linkd_*.deb.
CARGO_DEB_VERSION := 3.8.0
DEB_PACKAGES := -p matrix-linkd -p matrix-linkd-client -p matrix-link-gtk

# The programs that ship, in release, always built together: `make install`, `make deb` and
# `make bench` use the same artefacts.
release:
	$(CARGO) build --release $(DEB_PACKAGES)

deb-deps:
	@command -v cargo-deb >/dev/null || $(CARGO) install cargo-deb --version $(CARGO_DEB_VERSION) --locked

# What the package holds besides the binaries: docs, completions, the systemd and D-Bus files.
deb-assets: dist-docs
	mkdir -p $(DIST)/systemd
	sed 's|@bindir@|/usr/bin|g' systemd/io.github.matrix_linkd.Linkd1.service.in > $(DIST)/systemd/io.github.matrix_linkd.Linkd1.service
	sed 's|@bindir@|/usr/bin|g' systemd/matrix-linkd.service.in > $(DIST)/systemd/matrix-linkd.service

deb: deb-deps deb-assets release
	$(CARGO) deb -p matrix-linkd --no-build
	lintian --fail-on error --info target/debian/matrix-linkd_*.deb

# The package test: a package of the debug build (no release build), installed with dpkg on this
# machine (root), D-Bus activation of the installed service, the unit, man pages, desktop and
# metainfo files checked, then removed and purged leaving nothing behind.
test-package: deps deb-deps deb-assets build
	rm -rf target/debian-test
	$(CARGO) deb -p matrix-linkd --no-build --profile dev --no-strip --no-dbgsym --fast -o target/debian-test/
	lintian --fail-on error --suppress-tags unstripped-binary-or-object target/debian-test/matrix-linkd_*.deb
	packaging/test-package.sh target/debian-test/matrix-linkd_*.deb

install: dist-docs release
	install -Dm755 target/release/matrix-linkd $(DESTDIR)$(BINDIR)/matrix-linkd
	install -Dm755 target/release/matrix-link $(DESTDIR)$(BINDIR)/matrix-link
	install -Dm755 target/release/matrix-link-gtk $(DESTDIR)$(BINDIR)/matrix-link-gtk
	install -Dm644 gtk/data/$(APP_ID).desktop $(DESTDIR)$(DATADIR)/applications/$(APP_ID).desktop
	install -Dm644 gtk/data/$(APP_ID).svg $(DESTDIR)$(DATADIR)/icons/hicolor/scalable/apps/$(APP_ID).svg
	install -Dm644 gtk/data/$(APP_ID).metainfo.xml $(DESTDIR)$(DATADIR)/metainfo/$(APP_ID).metainfo.xml
	install -Dm644 -t $(DESTDIR)$(MANDIR)/man1 $(DIST)/man/*.1
	install -Dm644 -t $(DESTDIR)$(MANDIR)/man8 $(DIST)/man/*.8
	install -Dm644 -t $(DESTDIR)$(BASH_COMPLETION_DIR) $(DIST)/completions/bash/*
	install -Dm644 -t $(DESTDIR)$(ZSH_COMPLETION_DIR) $(DIST)/completions/zsh/*
	install -Dm644 -t $(DESTDIR)$(FISH_COMPLETION_DIR) $(DIST)/completions/fish/*
	install -Dm644 dbus/io.github.matrix_linkd.Linkd1.Manager.xml $(DESTDIR)$(DATADIR)/dbus-1/interfaces/io.github.matrix_linkd.Linkd1.Manager.xml
	install -Dm644 dbus/io.github.matrix_linkd.Linkd1.Flow.xml $(DESTDIR)$(DATADIR)/dbus-1/interfaces/io.github.matrix_linkd.Linkd1.Flow.xml
	install -d $(DESTDIR)$(DATADIR)/dbus-1/services $(DESTDIR)$(SYSTEMD_USER_DIR)
	sed 's|@bindir@|$(BINDIR)|g' systemd/io.github.matrix_linkd.Linkd1.service.in > $(DESTDIR)$(DATADIR)/dbus-1/services/io.github.matrix_linkd.Linkd1.service
	sed 's|@bindir@|$(BINDIR)|g' systemd/matrix-linkd.service.in > $(DESTDIR)$(SYSTEMD_USER_DIR)/matrix-linkd.service
	install -Dm644 config/config.toml $(DESTDIR)$(DATADIR)/doc/matrix-linkd/config.toml
	install -Dm644 README.md $(DESTDIR)$(DATADIR)/doc/matrix-linkd/README.md
	install -Dm644 -t $(DESTDIR)$(DATADIR)/doc/matrix-linkd/docs docs/*.md

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/matrix-linkd $(DESTDIR)$(BINDIR)/matrix-link $(DESTDIR)$(BINDIR)/matrix-link-gtk
	rm -f $(DESTDIR)$(DATADIR)/applications/$(APP_ID).desktop $(DESTDIR)$(DATADIR)/icons/hicolor/scalable/apps/$(APP_ID).svg
	rm -f $(DESTDIR)$(DATADIR)/metainfo/$(APP_ID).metainfo.xml
	rm -f $(DESTDIR)$(MANDIR)/man8/matrix-linkd.8 $(DESTDIR)$(MANDIR)/man1/matrix-link.1 $(DESTDIR)$(MANDIR)/man1/matrix-link-*.1
	rm -f $(DESTDIR)$(BASH_COMPLETION_DIR)/{matrix-link,matrix-linkd,matrix-link-gtk}
	rm -f $(DESTDIR)$(ZSH_COMPLETION_DIR)/{_matrix-link,_matrix-linkd,_matrix-link-gtk}
	rm -f $(DESTDIR)$(FISH_COMPLETION_DIR)/{matrix-link,matrix-linkd,matrix-link-gtk}.fish
	rm -f $(DESTDIR)$(DATADIR)/dbus-1/interfaces/io.github.matrix_linkd.Linkd1.{Manager,Flow}.xml
	rm -f $(DESTDIR)$(DATADIR)/dbus-1/services/io.github.matrix_linkd.Linkd1.service
	rm -f $(DESTDIR)$(SYSTEMD_USER_DIR)/matrix-linkd.service
	rm -rf $(DESTDIR)$(DATADIR)/doc/matrix-linkd

clean:
	$(CARGO) clean
