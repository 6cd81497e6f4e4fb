# tests/rack/rack.mk: the rack simulation (network namespaces; tests/rack/rack.py), the
# boot-trace replayer on libiscsi and the boot-storm benchmark.
#   make bench-storm        M VMs per rack x K racks replaying a boot trace at once, cold,
#                           with the chunk directory and without it ("no peers"); boot time
#                           against the number of racks. STORM_ARGS adds options.
#   make rack-cleanup       removes namespaces a crashed run left (rdrack-*)
EXTRA_ALL += $(BUILD)/tests/rack/rdreplay

$(BUILD)/tests/rack/rdreplay: $(call obj,tests/rack/replay.c) $(LIBCOMMON)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) $(filter %.o,$^) -o $@ $(LIBCOMMON) -liscsi $(LDLIBS)

STORM_ARGS ?=
.PHONY: bench-storm rack-cleanup
BENCH_TARGETS += bench-storm
bench-storm: $(BUILD)/rackdisk $(BUILD)/rackdiskd $(BUILD)/bs_rackdisk.so \
		$(BUILD)/tests/rack/rdreplay
	$(PYTHON) tests/rack/storm.py $(STORM_ARGS)

rack-cleanup:
	$(PYTHON) tests/rack/rack.py cleanup-stale
