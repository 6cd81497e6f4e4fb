# tests/bench/iscsi.mk: warm iSCSI reads, rackdisk LUN vs tgt rdwr on the same bytes.
.PHONY: bench-iscsi-warm
BENCH_TARGETS += bench-iscsi-warm
bench-iscsi-warm: $(BUILD)/bs_rackdisk.so $(BUILD)/tests/mkdisk
	$(PYTHON) tests/bench/iscsi_warm.py
