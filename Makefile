# rackdisk top-level Makefile.
#
# Each folder contributes fragments, <folder>/*.mk, that appends its sources to
# the variables below; this file owns the flags, the pattern rules and the targets that
# tie the folders together. Objects and binaries go under build/.

PREFIX      ?= /usr/local
TGT_MODDIR  ?= /usr/lib/tgt/backing-store
BUILD       ?= build
CC          ?= gcc
PYTHON      ?= /usr/bin/python3

# The tgt source tree of the installed tgt version (fetched by `make deps`).
TGT_SRC     ?= $(BUILD)/deps/tgt

WARN     := -Wall -Wextra -Werror -Wno-unused-parameter -Wshadow -Wstrict-prototypes
CFLAGS   ?= -O2 -g
CFLAGS   += -std=gnu11 -fPIC -D_GNU_SOURCE $(WARN)
CPPFLAGS += -I. -MMD -MP
PKGS     := libcrypto libzstd libcurl jansson hiredis libmicrohttpd inih
PKG_CFLAGS := $(shell pkg-config --cflags $(PKGS) 2>/dev/null)
PKG_LIBS   := $(shell pkg-config --libs $(PKGS) 2>/dev/null)
CPPFLAGS += $(PKG_CFLAGS)
LDLIBS   += $(PKG_LIBS) -laio -lpthread -lm

# Sanitizer build: `make test-asan` rebuilds everything into build-asan/.
ifeq ($(SANITIZE),1)
BUILD    := build-asan
CFLAGS   += -O1 -fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=undefined
LDFLAGS  += -fsanitize=address,undefined
endif

# Per-folder fragments (<folder>/*.mk, tests/<kind>/*.mk) append to these.
COMMON_SRCS  :=
IMAGES_SRCS  :=
CACHE_SRCS   :=
CLUSTER_SRCS :=
TARGET_SRCS  :=
PROGRAMS     :=
EXTRA_ALL    :=
UNIT_TESTS   :=

obj = $(patsubst %.c,$(BUILD)/obj/%.o,$(1))

LIBCOMMON  := $(BUILD)/libcommon.a
LIBIMAGES  := $(BUILD)/libimages.a
LIBCACHE   := $(BUILD)/libcache.a
LIBCLUSTER := $(BUILD)/libcluster.a
LIBTARGET  := $(BUILD)/libtarget.a
# Link order: dependants first (appliance -> target, cluster -> cache -> images -> common).
RD_LIBS    := $(LIBTARGET) $(LIBCLUSTER) $(LIBCACHE) $(LIBIMAGES) $(LIBCOMMON)

BENCH_TARGETS :=
SOAK_TARGETS  :=

# Extra test targets run by `make test` (crash tests, fuzz smoke runs, ...).
TEST_TARGETS  :=

# The included .mk files define rules too; plain `make` must still mean `make all`.
.DEFAULT_GOAL := all

include $(sort $(wildcard */*.mk)) $(sort $(wildcard tests/*/*.mk))


.PHONY: all deps build test test-unit test-integration test-asan fuzz bench bench-publish \
	soak demo install clean format

all: deps
	@$(MAKE) --no-print-directory build

build: $(PROGRAMS) $(EXTRA_ALL)

deps:
	@bash scripts/deps.sh

$(BUILD)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c $< -o $@

define make_lib
$(1): $(call obj,$(2))
	@mkdir -p $$(dir $$@)
	@rm -f $$@
	$$(AR) rcs $$@ $$^
endef
$(eval $(call make_lib,$(LIBCOMMON),$(COMMON_SRCS)))
$(eval $(call make_lib,$(LIBIMAGES),$(IMAGES_SRCS)))
$(eval $(call make_lib,$(LIBCACHE),$(CACHE_SRCS)))
$(eval $(call make_lib,$(LIBCLUSTER),$(CLUSTER_SRCS)))
$(eval $(call make_lib,$(LIBTARGET),$(TARGET_SRCS)))

# Unit tests: tests/unit/<folder>/test_<module>.c, each one cmocka program linked against
# every library (static archives pull in only what a test uses).
UNIT_SRCS := $(sort $(wildcard tests/unit/*/test_*.c))
UNIT_BINS := $(patsubst tests/unit/%.c,$(BUILD)/tests/unit/%,$(UNIT_SRCS))
$(BUILD)/tests/unit/%: tests/unit/%.c $(RD_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $< -o $@ $(LDFLAGS) $(RD_LIBS) $(LDLIBS) -lcmocka

# Fault injection on the overlay map's writes and syncs (the test defines the wrappers).
$(BUILD)/tests/unit/cache/test_overlay_faults: LDFLAGS += -Wl,--wrap=pwrite64 -Wl,--wrap=fdatasync \
	-Wl,--wrap=fsync
$(BUILD)/tests/unit/cache/test_disk_faults: LDFLAGS += -Wl,--wrap=pwrite64

test-unit: $(UNIT_BINS)
	@bash scripts/run-unit.sh $(UNIT_BINS)

# The boot trace test boots $(BOOT_DIR)/boot.raw (tests/boottrace/boottrace.mk). Making it
# downloads a Debian kernel and busybox-static (apt-get download), so it is made here,
# before the tests, and never by a test.
test-integration: build $(BOOT_DIR)/boot.raw
	$(PYTHON) -m pytest -q -ra tests/integration

# `make test`: everything the default CI run checks, after installing what it needs.
test: deps
	@$(MAKE) --no-print-directory build
	@$(MAKE) --no-print-directory test-all

test-all: test-unit
	@$(MAKE) --no-print-directory $(TEST_TARGETS) test-integration

test-asan: deps
	@$(MAKE) --no-print-directory SANITIZE=1 build-asan-tests
	@bash scripts/run-unit.sh $(patsubst tests/unit/%.c,build-asan/tests/unit/%,$(UNIT_SRCS))

build-asan-tests: $(UNIT_BINS)

demo: deps
	@$(MAKE) --no-print-directory build
	@bash scripts/demo.sh

# The unit goes where systemd looks for installed (vendor) units, so that an operator's
# own copy in /etc/systemd/system, or a drop-in, survives the next install.
SYSTEMD_UNITDIR ?= $(PREFIX)/lib/systemd/system

install: build
	@inst=$$(dpkg-query -W -f='$${Version}' tgt 2>/dev/null); \
	built=$$(cat $(BUILD)/deps/tgt.version 2>/dev/null); \
	if [ -n "$$inst" ] && [ "$$inst" != "$$built" ]; then \
		echo "install: tgt $$inst is installed but the module was built against tgt" \
		     "'$$built': run make deps && make, then make install" >&2; exit 1; fi
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)$(TGT_MODDIR)
	install -m 0755 $(BUILD)/rackdisk $(DESTDIR)$(PREFIX)/bin/rackdisk
	if [ -f $(BUILD)/rackdiskd ]; then install -m 0755 $(BUILD)/rackdiskd $(DESTDIR)$(PREFIX)/sbin/rackdiskd; fi
	if [ -f $(BUILD)/bs_rackdisk.so ]; then install -m 0755 $(BUILD)/bs_rackdisk.so $(DESTDIR)$(TGT_MODDIR)/bs_rackdisk.so; fi
	install -d $(DESTDIR)$(SYSTEMD_UNITDIR) $(DESTDIR)/etc/rackdisk
	sed 's|/usr/local/|$(PREFIX)/|g' appliance/rackdiskd.service > $(DESTDIR)$(SYSTEMD_UNITDIR)/rackdiskd.service
	install -m 0644 appliance/rackdisk.conf.example $(DESTDIR)/etc/rackdisk/rackdisk.conf.example
	install -D -m 0644 README.md $(DESTDIR)$(PREFIX)/share/doc/rackdisk/README.md
	@if [ -z "$(DESTDIR)" ] && [ -d /run/systemd/system ]; then \
		systemctl daemon-reload && \
		if systemctl -q is-active rackdiskd; then echo "install: rackdiskd runs the" \
			"old daemon and module until: systemctl restart rackdiskd"; fi; fi

# bench-cache-store-open runs last: it removes a tree of 1M files, and on ext4 without a
# journal every inode created in the next few minutes skips the recently deleted ones
# (fs/ext4/ialloc.c, recently_deleted: 60 s, 360 s while the inode table is dirty), which
# slowed every chunk insert of the cold-read benchmarks after it.
BENCH_ORDER := $(filter-out bench-cache-store-open,$(BENCH_TARGETS)) \
	       $(filter bench-cache-store-open,$(BENCH_TARGETS))

bench: deps
	@$(MAKE) --no-print-directory build
	@BENCH_HOLD_PAGE_REPORTING=$(BENCH_HOLD_PAGE_REPORTING) $(PYTHON) tests/bench/report.py $(BENCH_ORDER)

soak: deps
	@$(MAKE) --no-print-directory build
	@$(MAKE) --no-print-directory $(SOAK_TARGETS)

format:
	clang-format -i $$(git ls-files '*.c' '*.h')

clean:
	rm -rf build build-asan

-include $(shell find $(BUILD) -name '*.d' 2>/dev/null)
