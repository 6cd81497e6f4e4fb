# tests/conformance/: iscsi-test-cu, one suite per run, on a rackdisk LUN and on tgt's rdwr
# store with the same bytes; fails when a test passes on rdwr and fails on rackdisk.
# `make conformance` (part of `make test`, ~1 min) runs the backing-store suites;
# `make conformance-full` runs every SCSI.* suite.
.PHONY: conformance conformance-full
TEST_TARGETS += conformance
conformance: $(BUILD)/bs_rackdisk.so $(BUILD)/tests/mkdisk
	$(PYTHON) tests/conformance/conformance.py
conformance-full: $(BUILD)/bs_rackdisk.so $(BUILD)/tests/mkdisk
	$(PYTHON) tests/conformance/conformance.py --full
