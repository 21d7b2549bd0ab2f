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
MS_LIBS = -lmicrohttpd -lleveldb -lyajl -lcurl -lcrypto -lwslay -lpthread

SRC := $(wildcard csrc/*.c)
OBJ := $(SRC:csrc/%.c=build/obj/%.o)
ASAN_OBJ := $(SRC:csrc/%.c=build-asan/obj/%.o)
SANITIZE = -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined

# Debian packages needed to build and test (the README's set-up commands use them).
DEB_PACKAGES = build-essential lua5.4 liblua5.4-dev libmicrohttpd-dev libleveldb-dev \
               libyajl-dev uthash-dev libcurl4-openssl-dev lua-busted luarocks \
               lua-filesystem lua-yaml lua-socket libssl-dev libwslay-dev curl python3 valgrind \
               wrk clang libclang-rt-14-dev lua-lpeg lua-rex-pcre2

.PHONY: all deps node-deps run test test-asan test-valgrind install rock clean bench bench-1m fuzz crash hostile soak

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

# Installs the Debian packages above when one is missing (needs root).
deps:
	@missing=$$(for p in $(DEB_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:" $$missing; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi

# Builds and starts the server on the embedded defaults (127.0.0.1:6020, ./data).
run: deps all
	./bin/moonstream start

# Installs with luarocks from this checkout (Debian's lua-cjson is invisible to
# luarocks, hence --deps-mode=none; the Debian packages above provide the rest).
rock: deps
	luarocks --lua-version=$(LUA_VERSION) make --deps-mode=none moonstream-scm-1.rockspec

# Node.js packages the specs use (the real @deepstream/client, ws), from the npm registry.
NODE_DEPS = spec/support/node/node_modules/.package-lock.json
$(NODE_DEPS): spec/support/node/package.json spec/support/node/package-lock.json
	@command -v npm >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm; }
	cd spec/support/node && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

node-deps: $(NODE_DEPS)

# All specs, again under AddressSanitizer + UBSan, and the HTTP spec under valgrind.
test: deps all build-asan/moonstream/core.so $(NODE_DEPS)
	@bash spec/support/test-all

test-asan: deps build-asan/moonstream/core.so
	@bash spec/support/run-specs build-asan/moonstream/core.so asan

test-valgrind: deps all
	@bash spec/support/run-specs build/moonstream/core.so valgrind

# Benchmarks (run by hand, never by the tests): moonstream against the
# deepstream reference and a bare libmicrohttpd server; writes bench/RESULTS.md.
bench: deps all
	nice -n 10 bench/run

# Read throughput and start-up time with 1 M records against 1 k (slower: loads 1 M records).
bench-1m: deps all
	nice -n 10 bench/run-1m

# Reliability (issue 6; README "Reliability"). Long forms by default; CI runs
# the short forms from .ci/run. All traffic stays on 127.0.0.1.
FUZZ_SECONDS ?= 60
CRASH_CYCLES ?= 100
SOAK_SECONDS ?= 600

fuzz: deps
	bash fuzz/run $(FUZZ_SECONDS)

crash: deps all
	python3 tests/crash.py --cycles $(CRASH_CYCLES)

hostile: deps all
	python3 tests/hostile.py

soak: deps all
	python3 tests/soak.py --seconds $(SOAK_SECONDS)

install: all
	install -d $(DESTDIR)$(PREFIX)/lib/lua/$(LUA_VERSION)/moonstream \
	           $(DESTDIR)$(PREFIX)/share/lua/$(LUA_VERSION)/moonstream $(DESTDIR)$(PREFIX)/bin
	install -m 644 build/moonstream/core.so $(DESTDIR)$(PREFIX)/lib/lua/$(LUA_VERSION)/moonstream/
	cp -r lua/moonstream/. $(DESTDIR)$(PREFIX)/share/lua/$(LUA_VERSION)/moonstream/
	install -m 755 bin/moonstream $(DESTDIR)$(PREFIX)/bin/moonstream

clean:
	rm -rf build build-asan

-include $(OBJ:.o=.d) $(ASAN_OBJ:.o=.d)
