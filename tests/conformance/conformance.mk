# tests/conformance/: iscsi-test-cu, one suite per run, on a rackdisk LUN and on tgt's rdwr
# store with the same bytes; fails when a test passes on rdwr and fails on rackdisk.
# `make conformance` (part of `make test`) runs every SCSI.* suite (~1 min here);
# `make conformance-quick` only the backing-store suites.
.PHONY: conformance conformance-quick
TEST_TARGETS += conformance
conformance: $(BUILD)/bs_rackdisk.so $(BUILD)/tests/mkdisk
	$(PYTHON) tests/conformance/conformance.py --full
conformance-quick: $(BUILD)/bs_rackdisk.so $(BUILD)/tests/mkdisk
	$(PYTHON) tests/conformance/conformance.py
