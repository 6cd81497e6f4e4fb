# cluster/: the Redis chunk directory, fetch leases, the peer chunk server and client, and
# the fetcher's peer hook (issue 5). cluster/cluster.mk (fetcher, seed) is separate.
CLUSTER_SRCS += cluster/directory.c cluster/lease.c cluster/peer_server.c cluster/peering.c \
	cluster/peer_client.c cluster/peers.c

# Test driver for the cluster integration tests (tests/integration/test_cluster*.py).
CLUSTER_NODE := $(BUILD)/tests/cluster_node
EXTRA_ALL += $(CLUSTER_NODE)
$(CLUSTER_NODE): tests/tools/cluster_node.c $(RD_LIBS)
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) $< -o $@ $(LDFLAGS) $(RD_LIBS) $(LDLIBS)
