# cluster/: seed client and fetcher (this fragment); the directory and peers add their
# own fragments.
CLUSTER_SRCS += cluster/seed.c cluster/fetcher.c

# Test driver for the seed integration tests (tests/integration/test_seed*.py).
FETCHTOOL := $(BUILD)/tests/fetchtool
EXTRA_ALL += $(FETCHTOOL)
$(FETCHTOOL): tests/tools/fetchtool.c $(RD_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $< -o $@ $(LDFLAGS) $(RD_LIBS) $(LDLIBS)

# `make bench` figure: cold whole-image read through the fetcher vs curl, same nginx.
BENCH_TARGETS += bench-seed
.PHONY: bench-seed
bench-seed: $(FETCHTOOL)
	$(PYTHON) tests/tools/seed_bench.py
