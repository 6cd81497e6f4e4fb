# tests/bench/cache_disk.mk: the disk's read and write paths against a plain file.
$(BUILD)/tests/bench/bench_disk: tests/bench/bench_disk.c $(RD_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $< -o $@ $(LDFLAGS) $(RD_LIBS) $(LDLIBS)

.PHONY: bench-disk
# The writes run twice: in /tmp (whatever filesystem it is), and on a fresh ext4 with a
# journal, where the overlay skips the map for first writes (bench_disk.c says why).
bench-disk: $(BUILD)/tests/bench/bench_disk
	$(BUILD)/tests/bench/bench_disk 2>/dev/null
	tests/bench/on_ext4_journal.sh $(BUILD)/tests/bench/bench_disk -W -l "[ext4 with journal] " 2>/dev/null

BENCH_TARGETS += bench-disk
