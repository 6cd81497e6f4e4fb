# tests/bench/cluster_appliances.mk: the cluster on real appliances (redis-server, nginx,
# three rackdiskd+tgtd): peer throughput through iSCSI (rdreplay, a discarding reader that
# verifies every read) vs curl on A's peer listener, and seed fetches per chunk with three
# appliances reading at once. `make bench-cluster-appliances`.
.PHONY: bench-cluster-appliances
BENCH_TARGETS += bench-cluster-appliances
bench-cluster-appliances: $(BUILD)/rackdisk $(BUILD)/rackdiskd $(BUILD)/bs_rackdisk.so \
		$(BUILD)/tests/rack/rdreplay
	$(PYTHON) tests/bench/cluster_appliances.py
