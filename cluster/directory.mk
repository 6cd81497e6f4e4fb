# cluster/: the Redis chunk directory, fetch leases, the peer chunk server and client, and
# the fetcher's peer hook (issue 5). cluster/cluster.mk (fetcher, seed) is separate.
CLUSTER_SRCS += cluster/directory.c cluster/lease.c cluster/peer_server.c cluster/peering.c \
	cluster/peer_client.c cluster/peers.c
