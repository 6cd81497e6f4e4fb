# tests/bench/iscsi_cold.mk: cold whole-disk read through iSCSI (empty cache, fresh
# appliance) vs curl of the raw image from the same nginx, same run; two variants: seed on
# loopback (with tgt rdwr as a reference) and seed in a network namespace behind
# `tc tbf rate $(BENCH_SEED_RATE)` (default 1gbit). Needs root (ip netns, tc).
# BENCH_COLD_ARGS passes options to iscsi_cold.py, e.g. --tgtd-in-service, --depth 32.
.PHONY: bench-iscsi-cold
BENCH_TARGETS += bench-iscsi-cold
bench-iscsi-cold: $(BUILD)/bs_rackdisk.so $(BUILD)/rackdiskd $(BUILD)/rackdisk
	$(PYTHON) tests/bench/iscsi_cold.py $(BENCH_COLD_ARGS)
