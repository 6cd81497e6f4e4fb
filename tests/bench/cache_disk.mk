# tests/bench/cache_disk.mk: the disk's read and write paths against a plain file.
$(BUILD)/tests/bench/bench_disk: tests/bench/bench_disk.c $(RD_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $< -o $@ $(LDFLAGS) $(RD_LIBS) $(LDLIBS)

.PHONY: bench-disk
bench-disk: $(BUILD)/tests/bench/bench_disk
	$(BUILD)/tests/bench/bench_disk 2>/dev/null

BENCH_TARGETS += bench-disk
