# tests/bench/iscsi.mk: warm iSCSI reads, a fully cached disk of a real appliance
# (rackdiskd + tgtd, seed on nginx) vs tgt rdwr on the same bytes in the same tgtd.
# BENCH_PERF=FILE also writes a perf profile of tgtd during the 1 MiB sequential run.
.PHONY: bench-iscsi-warm
BENCH_TARGETS += bench-iscsi-warm
bench-iscsi-warm: $(BUILD)/bs_rackdisk.so $(BUILD)/rackdiskd $(BUILD)/rackdisk
	$(PYTHON) tests/bench/iscsi_warm.py
