# tests/fuzz/: libFuzzer targets (clang, with ASan and UBSan) for the overlay map parser
# and the manifest parser. `make fuzz-smoke` (in `make test`) runs each for FUZZ_SMOKE_TIME
# seconds from the seed corpus in tests/fuzz/corpus/<target>/; `make fuzz` runs each for
# FUZZ_TIME seconds. New inputs go to $(BUILD)/fuzz/work/<target>/, crashes to
# $(BUILD)/fuzz/artifacts/; the committed corpus is only read.
FUZZ_CC         ?= clang
FUZZ_SMOKE_TIME ?= 15
FUZZ_TIME       ?= 600
FUZZ_SAN    := -fsanitize=address,undefined -fno-sanitize-recover=undefined
FUZZ_CFLAGS := -g -O1 -std=gnu11 -D_GNU_SOURCE -DFUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION \
	-fno-omit-frame-pointer $(FUZZ_SAN) -I. $(PKG_CFLAGS)
FUZZ_DIR    := $(BUILD)/fuzz
FUZZ_COMMON := common/hash.c common/util.c common/log.c
FUZZ_TARGETS := overlay_map manifest
fuzz_obj = $(patsubst %.c,$(FUZZ_DIR)/obj/%.o,$(1))

$(FUZZ_DIR)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(FUZZ_CC) $(FUZZ_CFLAGS) -fsanitize=fuzzer-no-link -c $< -o $@

$(FUZZ_DIR)/fuzz_overlay_map: $(call fuzz_obj,tests/fuzz/fuzz_overlay_map.c cache/overlay.c \
		$(FUZZ_COMMON))
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer $^ -o $@ -lcrypto -lpthread -lm

$(FUZZ_DIR)/fuzz_manifest: $(call fuzz_obj,tests/fuzz/fuzz_manifest.c images/manifest.c \
		$(FUZZ_COMMON))
	$(FUZZ_CC) $(FUZZ_SAN) -fsanitize=fuzzer $^ -o $@ -ljansson -lcrypto -lpthread -lm

FUZZ_BINS := $(addprefix $(FUZZ_DIR)/fuzz_,$(FUZZ_TARGETS))

# $(1): seconds per target.
define fuzz_run
	@set -e; for t in $(FUZZ_TARGETS); do \
		mkdir -p $(FUZZ_DIR)/work/$$t $(FUZZ_DIR)/artifacts; \
		echo "fuzz: $$t for $(1) s"; \
		$(FUZZ_DIR)/fuzz_$$t -max_total_time=$(1) -timeout=20 -rss_limit_mb=2048 \
			-print_final_stats=1 -artifact_prefix=$(FUZZ_DIR)/artifacts/$$t- \
			$(FUZZ_DIR)/work/$$t tests/fuzz/corpus/$$t 2>$(FUZZ_DIR)/$$t.log \
			|| { tail -40 $(FUZZ_DIR)/$$t.log; exit 1; }; \
		grep -E '^stat::number_of_executed_units|^stat::new_units_added' $(FUZZ_DIR)/$$t.log \
			| tr '\n' ' '; echo; \
	done
endef

.PHONY: fuzz-smoke fuzz fuzz-build
fuzz-build: $(FUZZ_BINS)

fuzz-smoke: $(FUZZ_BINS)
	$(call fuzz_run,$(FUZZ_SMOKE_TIME))

fuzz: $(FUZZ_BINS)
	$(call fuzz_run,$(FUZZ_TIME))

TEST_TARGETS += fuzz-smoke
