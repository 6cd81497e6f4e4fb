# tests/bench/publish.mk: `make bench-publish` (also part of `make bench`).
# BENCH_PUBLISH_MIB sets the image size (default 1024).
BENCH_TARGETS += bench-publish
BENCH_PUBLISH_MIB ?= 1024

.PHONY: bench-publish
bench-publish: $(BUILD)/rackdisk
	@bash tests/bench/bench_publish.sh $(BENCH_PUBLISH_MIB)
