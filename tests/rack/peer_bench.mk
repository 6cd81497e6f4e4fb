# tests/rack/peer_bench.mk: peer throughput over shaped links on the rack harness
# (tests/rack/peer_bench.py): 2 racks x 1 appliance, each appliance's link shaped both
# ways at BENCH_PEER_RATE (tc tbf); B reads via iSCSI a whole image cached on A, against
# curl fetching the same chunks from A's peer listener from B's namespace. Variants:
# sample image on a shared NIC and with a separate (unshaped) storage frontend to the
# initiators, random image on a shared NIC; each with its own baseline and ceiling.
#   make bench-peer-link [BENCH_PEER_RATE=1gbit] [PEER_BENCH_ARGS="--rounds 3 ..."]
#   PEER_BENCH_ARGS="--variants sample:separate" runs one variant (IMAGE:FRONTEND list)
BENCH_PEER_RATE ?= 1gbit
PEER_BENCH_ARGS ?=
.PHONY: bench-peer-link
BENCH_TARGETS += bench-peer-link
bench-peer-link: $(BUILD)/rackdisk $(BUILD)/rackdiskd $(BUILD)/bs_rackdisk.so \
		$(BUILD)/tests/rack/rdreplay
	$(PYTHON) tests/rack/peer_bench.py --rate $(BENCH_PEER_RATE) $(PEER_BENCH_ARGS)
