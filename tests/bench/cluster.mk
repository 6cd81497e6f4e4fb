# tests/bench/cluster.mk: peer transfer throughput (our peer client vs curl against our
# peer server, same run). `make bench` runs it; `make bench-peer` alone.
BENCH_TARGETS += bench-peer
.PHONY: bench-peer

$(BUILD)/tests/bench/bench_peer: tests/bench/bench_peer.c $(RD_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $< -o $@ $(LDFLAGS) $(RD_LIBS) $(LDLIBS)

bench-peer: $(BUILD)/tests/bench/bench_peer
	$(BUILD)/tests/bench/bench_peer --chunks 192 --rounds 3
