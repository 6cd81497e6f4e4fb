# tests/bench/cache_store.mk: chunk store benchmarks (each prints its baseline beside it).
#   bench-cache-store-open   open time of a store of BENCH_STORE_FILES chunk files vs `find | wc -l`
#   bench-cache-store-evict  S3-FIFO vs LRU hit ratio on a boot-set + scan trace (simulated)
#   bench-cache-store-read   cached chunk reads: buffered vs O_DIRECT vs pread of a raw file
BENCH_STORE_FILES ?= 1000000
BENCH_STORE_DIR   ?= /var/tmp
BENCH_STORE_BINS  := $(patsubst tests/bench/%.c,$(BUILD)/tests/bench/%,\
		     $(wildcard tests/bench/bench_store_*.c))

$(BUILD)/tests/bench/bench_store_%: tests/bench/bench_store_%.c $(RD_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $< -o $@ $(LDFLAGS) $(RD_LIBS) $(LDLIBS)

.PHONY: bench-cache-store bench-cache-store-open bench-cache-store-evict bench-cache-store-read
bench-cache-store: bench-cache-store-evict bench-cache-store-read bench-cache-store-open

bench-cache-store-open: $(BUILD)/tests/bench/bench_store_open
	$< --files $(BENCH_STORE_FILES) --dir $(BENCH_STORE_DIR)

bench-cache-store-evict: $(BUILD)/tests/bench/bench_store_evict
	$<

bench-cache-store-read: $(BUILD)/tests/bench/bench_store_read
	$< --dir $(BENCH_STORE_DIR)

BENCH_TARGETS += bench-cache-store-evict bench-cache-store-read bench-cache-store-open
