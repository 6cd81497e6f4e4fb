# tests/fault/: crash tests. `make test-crash` (in `make test`) SIGKILLs a disk writer 200
# times; `make soak` runs it 3000 times.
FAULT_BINS := $(BUILD)/tests/fault/crash_disk

$(BUILD)/tests/fault/%: tests/fault/%.c $(RD_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $< -o $@ $(LDFLAGS) $(RD_LIBS) $(LDLIBS)

.PHONY: test-crash soak-crash
test-crash: $(FAULT_BINS)
	$(BUILD)/tests/fault/crash_disk -n 200 -t 300

soak-crash: $(FAULT_BINS)
	$(BUILD)/tests/fault/crash_disk -n 3000 -t 3600

TEST_TARGETS += test-crash
SOAK_TARGETS += soak-crash
