# matrix-linkd — build, test, demo, install.
#
#   make demo    the daemon on a private bus against the local homeserver stack, a full link end to end
#   make test    every test: unit, the real daemon on a private bus, and end-to-end over the real stack
#   make bench   benchmark figures (full flow, requests, idle cost) against matrix-sdk's own flow
#   make lint    rustfmt and clippy, as CI runs them
#   make install PREFIX=/usr/local DESTDIR=...

SHELL := /bin/bash
CARGO ?= cargo
PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
DATADIR ?= $(PREFIX)/share
SYSTEMD_USER_DIR ?= $(PREFIX)/lib/systemd/user
TARGET := target/debug

.PHONY: all deps build test test-unit test-integration test-stack lint demo bench fuzz fuzz-short fuzz-deps install uninstall clean stack-start stack-stop

all: build

# System packages the tests and the demo use (Debian). Idempotent: installs only what is missing.
deps:
	@bash .ci/deps.sh

build:
	$(CARGO) build --workspace --all-targets

# Unit tests, a short fuzz run of the parsers, the real daemon on private buses (mock homeserver),
# then end to end over the real stack.
test: deps build test-unit fuzz-short test-integration test-stack

test-unit:
	$(CARGO) test --workspace --lib --bins

test-integration:
	$(CARGO) test -p matrix-linkd-tests --test flows --test failures --test bus --test desktop --test cli --test boundaries --test sandbox --test interop --test concurrency

# End to end over the real stack (Synapse + OAuth server on 127.0.0.1), started and stopped here;
# the interop cells again against a stack whose server name has no `.well-known`.
test-stack:
	stack/with-stack.sh $(CARGO) test -p matrix-linkd-tests --test stack_sdk --test stack_js --test stack_failures --test stack_rendezvous --test stack_device_grant --test stack_latest --test stack_balancer --test stack_delegation
	$(LOCALHOST_STACK) stack/with-stack.sh env LINKD_STACK=localhost $(CARGO) test -p matrix-linkd-tests --test stack_sdk --test stack_js

# A second stack like many real deployments: the server name `localhost`, no `.well-known`.
LOCALHOST_STACK := STACK_NAME=localhost SYNAPSE_PORT=48008 OAUTH_PORT=48080 SERVER_NAME=localhost SERVE_WELLKNOWN=false

# The main job: a stack of its own (ports 19008/19080), a private bus, the daemon, a full link.
demo: deps build
	STACK_NAME=demo SYNAPSE_PORT=19008 OAUTH_PORT=19080 stack/with-stack.sh $(TARGET)/linkd-demo

# Figures (not a test): full-flow time by phase, rendezvous requests, idle cost; see BENCHMARKS.md.
bench: deps build
	stack/with-stack.sh $(TARGET)/linkd-bench

# Fuzzing (cargo-fuzz, libFuzzer) of the QR parser, the message decoder and the channel decoders.
# The toolchain is stable; RUSTC_BOOTSTRAP lets cargo-fuzz pass its sanitizer flags.
FUZZ_TARGETS := qr_parse message_decode channel_open engine_messages
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

install:
	$(CARGO) build --release -p matrix-linkd -p matrix-linkd-client
	install -Dm755 target/release/matrix-linkd $(DESTDIR)$(BINDIR)/matrix-linkd
	install -Dm755 target/release/matrix-link $(DESTDIR)$(BINDIR)/matrix-link
	install -Dm644 dbus/io.github.matrix_linkd.Linkd1.Manager.xml $(DESTDIR)$(DATADIR)/dbus-1/interfaces/io.github.matrix_linkd.Linkd1.Manager.xml
	install -Dm644 dbus/io.github.matrix_linkd.Linkd1.Flow.xml $(DESTDIR)$(DATADIR)/dbus-1/interfaces/io.github.matrix_linkd.Linkd1.Flow.xml
	install -d $(DESTDIR)$(DATADIR)/dbus-1/services $(DESTDIR)$(SYSTEMD_USER_DIR)
	sed 's|@bindir@|$(BINDIR)|g' systemd/io.github.matrix_linkd.Linkd1.service.in > $(DESTDIR)$(DATADIR)/dbus-1/services/io.github.matrix_linkd.Linkd1.service
	sed 's|@bindir@|$(BINDIR)|g' systemd/matrix-linkd.service.in > $(DESTDIR)$(SYSTEMD_USER_DIR)/matrix-linkd.service
	install -Dm644 config/config.toml $(DESTDIR)$(DATADIR)/doc/matrix-linkd/config.toml

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/matrix-linkd $(DESTDIR)$(BINDIR)/matrix-link
	rm -f $(DESTDIR)$(DATADIR)/dbus-1/interfaces/io.github.matrix_linkd.Linkd1.{Manager,Flow}.xml
	rm -f $(DESTDIR)$(DATADIR)/dbus-1/services/io.github.matrix_linkd.Linkd1.service
	rm -f $(DESTDIR)$(SYSTEMD_USER_DIR)/matrix-linkd.service
	rm -rf $(DESTDIR)$(DATADIR)/doc/matrix-linkd

clean:
	$(CARGO) clean
