# tests/tools/mkdisk: builds disk directories for the target tests (tests/integration,
# tests/conformance, tests/bench/iscsi.mk).
ifneq ($(wildcard cache/disk.c),)
EXTRA_ALL += $(BUILD)/tests/mkdisk
endif

$(BUILD)/tests/mkdisk: $(call obj,tests/tools/mkdisk.c) $(RD_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $(filter %.o,$^) -o $@ $(RD_LIBS) $(LDLIBS)
