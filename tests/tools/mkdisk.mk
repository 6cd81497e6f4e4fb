# tests/tools/mkdisk: builds disk directories for the target tests (tests/integration,
# tests/conformance, tests/bench/iscsi.mk).
EXTRA_ALL += $(BUILD)/tests/mkdisk

$(BUILD)/tests/mkdisk: $(call obj,tests/tools/mkdisk.c) $(RD_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $(filter %.o,$^) -o $@ $(RD_LIBS) $(LDLIBS)

# tests/tools/iscsi_cmd: one SCSI command through libiscsi, status and sense as JSON.
EXTRA_ALL += $(BUILD)/tests/iscsi_cmd

$(BUILD)/tests/iscsi_cmd: $(call obj,tests/tools/iscsi_cmd.c) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $(filter %.o,$^) -o $@ $(LIBCOMMON) -liscsi $(LDLIBS)
