# moonstream: build the C core (moonstream.core), run the specs, install.
# Variables use ?= so luarocks and users can override them; flags the code
# needs live in MS_CFLAGS, which luarocks' CFLAGS does not replace.

LUA_VERSION ?= 5.4
LUA ?= lua$(LUA_VERSION)
LUA_INCDIR ?= /usr/include/lua$(LUA_VERSION)
CC ?= cc
CFLAGS ?= -O2 -g
LDFLAGS ?=
PREFIX ?= /usr/local
LIBFLAG ?= -shared
BUSTED ?= busted

MS_CFLAGS = -std=gnu11 -fPIC -Wall -Wextra -Wshadow -Wmissing-prototypes \
            -Wno-unused-parameter -I$(LUA_INCDIR) -MMD -MP
MS_LIBS = -lmicrohttpd -lleveldb -lyajl -lcurl -lcrypto -lsystemd -lhiredis -lpthread

SRC := $(wildcard csrc/*.c)
OBJ := $(SRC:csrc/%.c=build/obj/%.o)
ASAN_OBJ := $(SRC:csrc/%.c=build-asan/obj/%.o)
SANITIZE = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

# Debian packages, by the command that needs them (README "Installing"); each
# target installs its list when a package is missing (needs root).
# Building and running the server (make all, make run, make install):
RUN_PACKAGES = build-essential lua5.4 liblua5.4-dev libmicrohttpd-dev libleveldb-dev libyajl-dev \
               uthash-dev libcurl4-openssl-dev libssl-dev lua-filesystem lua-argparse \
               lua-yaml libsystemd-dev libhiredis-dev \
               lua-lpeg lua-rex-pcre2
# Packing and installing the rock (make rock):
ROCK_PACKAGES = luarocks git zip unzip
# The tests (make test, test-asan, test-valgrind, fuzz, crash, hostile, soak);
# Node.js and npm come through $(NODE) below:
TEST_PACKAGES = $(ROCK_PACKAGES) lua-busted lua-cjson lua-socket curl python3 valgrind clang-14 \
                libclang-rt-14-dev prometheus lua-luv redis-server
# The benchmarks (make bench, bench-1m, bench/fanout/run, bench/profile):
BENCH_PACKAGES = wrk curl python3 valgrind

# The version, from the one place it is written.
VERSION := $(shell sed -n 's/^ *VERSION = "\([^"]*\)",/\1/p' lua/moonstream/init.lua)
ROCKSPEC = moonstream-$(VERSION)-1.rockspec
SRC_ROCK = moonstream-$(VERSION)-1.src.rock

.PHONY: all deps test-deps bench-deps node-deps run test src-rock test-asan test-valgrind install rock clean bench bench-1m fuzz crash hostile soak cluster-check

all: build/moonstream/core.so

build/moonstream/core.so: $(OBJ)
	@mkdir -p $(@D)
	$(CC) $(LIBFLAG) -o $@ $(OBJ) $(LDFLAGS) $(MS_LIBS)

build/obj/%.o: csrc/%.c
	@mkdir -p $(@D)
	$(CC) $(CFLAGS) $(MS_CFLAGS) -c -o $@ $<

build-asan/moonstream/core.so: $(ASAN_OBJ)
	@mkdir -p $(@D)
	$(CC) -shared $(SANITIZE) -o $@ $(ASAN_OBJ) $(MS_LIBS)

build-asan/obj/%.o: csrc/%.c
	@mkdir -p $(@D)
	$(CC) -O1 -g $(SANITIZE) $(MS_CFLAGS) -c -o $@ $<

# Installs the Debian packages of a list that are missing.
define install_packages
@missing=$$(for p in $(1); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
if [ -n "$$missing" ]; then \
  echo "installing Debian packages:" $$missing; \
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
fi
endef

deps:
	$(call install_packages,$(RUN_PACKAGES))

test-deps: deps
	$(call install_packages,$(TEST_PACKAGES))

bench-deps: deps
	$(call install_packages,$(BENCH_PACKAGES))

# Node.js and npm, from Debian unless some node is there already (a
# NodeSource nodejs carries its own npm and conflicts with Debian's npm).
NODE = command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }

# Builds and starts the server on the embedded defaults (127.0.0.1:6020, ./data).
run: deps all
	./bin/moonstream start

# Installs with luarocks from this checkout (Debian's Lua packages are
# invisible to luarocks, hence --deps-mode=none; RUN_PACKAGES provide them),
# then packs $(SRC_ROCK) from the committed sources (see src-rock).
rock: deps
	$(call install_packages,$(ROCK_PACKAGES))
	luarocks --lua-version=$(LUA_VERSION) make --deps-mode=none $(ROCKSPEC)
	$(MAKE) -s src-rock

# The source rock of HEAD, offline: what `luarocks pack $(ROCKSPEC)` makes
# from its git source (the rockspec, unchanged, beside the sources in the
# folder its URL names), taken from this checkout with git archive instead of
# a clone over the network. Uncommitted changes are not in it.
SRC_ROCK_DIR ?= .
src-rock:
	@tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	git archive --prefix=moonstream/ HEAD | tar -x -C "$$tmp" && \
	cp $(ROCKSPEC) "$$tmp/" && \
	rm -f "$(SRC_ROCK_DIR)/$(SRC_ROCK)" && out=$$(cd "$(SRC_ROCK_DIR)" && pwd)/$(SRC_ROCK) && \
	(cd "$$tmp" && zip -qr "$$out" $(ROCKSPEC) moonstream) && echo "packed $$out"

# Node.js packages the specs use (the real @deepstream/client, ws), from the npm registry.
NODE_DEPS = spec/support/node/node_modules/.package-lock.json
$(NODE_DEPS): spec/support/node/package.json spec/support/node/package-lock.json
	@$(NODE)
	cd spec/support/node && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

node-deps: $(NODE_DEPS)

# All specs, again under AddressSanitizer + UBSan, and the HTTP spec under valgrind.
test: test-deps all build-asan/moonstream/core.so $(NODE_DEPS)
	@bash spec/support/test-all

test-asan: test-deps build-asan/moonstream/core.so
	@bash spec/support/run-specs build-asan/moonstream/core.so asan

test-valgrind: test-deps all
	@bash spec/support/run-specs build/moonstream/core.so valgrind

# Benchmarks (run by hand, never by the tests): moonstream against the
# deepstream reference and a bare libmicrohttpd server; writes bench/RESULTS.md.
bench: bench-deps all
	@$(NODE)
	nice -n 10 bench/run

# Read throughput and start-up time with 1 M records against 1 k (slower: loads 1 M records).
bench-1m: bench-deps all
	nice -n 10 bench/run-1m

# Reliability (README "Reliability"). Long forms by default; CI runs
# the short forms from .ci/run. All traffic stays on 127.0.0.1.
FUZZ_SECONDS ?= 60
CRASH_CYCLES ?= 100
SOAK_SECONDS ?= 600

fuzz: test-deps
	bash fuzz/run $(FUZZ_SECONDS)

crash: test-deps all
	python3 tests/crash.py --cycles $(CRASH_CYCLES)

hostile: test-deps all
	python3 tests/hostile.py

soak: test-deps all
	python3 tests/soak.py --seconds $(SOAK_SECONDS)

# Cluster mode: the lost-update checker (three nodes, one Redis; README "Cluster").
CLUSTER_SECONDS ?= 30
cluster-check: test-deps all
	python3 tests/cluster_lost_update.py --self-test
	python3 tests/cluster_lost_update.py --seconds $(CLUSTER_SECONDS)
	python3 tests/cluster_lost_update.py --seconds $(CLUSTER_SECONDS) --kill-node
	python3 tests/cluster_lost_update.py --seconds $(CLUSTER_SECONDS) --kill-redis
	python3 tests/cluster_partition.py

install: all
	install -d $(DESTDIR)$(PREFIX)/lib/lua/$(LUA_VERSION)/moonstream \
	           $(DESTDIR)$(PREFIX)/share/lua/$(LUA_VERSION)/moonstream $(DESTDIR)$(PREFIX)/bin
	install -m 644 build/moonstream/core.so $(DESTDIR)$(PREFIX)/lib/lua/$(LUA_VERSION)/moonstream/
	cp -r lua/moonstream/. $(DESTDIR)$(PREFIX)/share/lua/$(LUA_VERSION)/moonstream/
	install -m 755 bin/moonstream $(DESTDIR)$(PREFIX)/bin/moonstream

clean:
	rm -rf build build-asan

-include $(OBJ:.o=.d) $(ASAN_OBJ:.o=.d)
