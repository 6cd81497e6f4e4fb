# tests/bench/iscsi_cold.mk: cold whole-disk read through iSCSI (empty cache, fresh
# appliance) vs curl of the raw image from the same nginx, same run.
.PHONY: bench-iscsi-cold
BENCH_TARGETS += bench-iscsi-cold
bench-iscsi-cold: $(BUILD)/bs_rackdisk.so $(BUILD)/rackdiskd $(BUILD)/rackdisk
	$(PYTHON) tests/bench/iscsi_cold.py
