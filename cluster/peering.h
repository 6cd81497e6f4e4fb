/*
 * peering.h - this appliance's membership in the cluster, in one object: the Redis
 * directory, the peer chunk server, the peer client and the fetcher's peer hook, created
 * and stopped in the order their references require (DESIGN.md sec. 5).
 *
 * rackdiskd, when [cluster] redis is set:
 *   peering_create(&opts, &p)                     directory client (connects in the
 *                                                 background; Redis down is not an error)
 *   chunkstore_open(.hooks = peering_store_hooks(p))
 *   fetcher_create(...)
 *   peering_start(p, store, fetcher)              bulk announce, peer server, client,
 *                                                 fetcher_set_peer_ops
 *   ... run ...
 *   peering_stop(p)                               leave the directory, stop serving,
 *                                                 unhook the fetcher
 *   fetcher_destroy(); chunkstore_close()         (the store's hooks still use p)
 *   peering_destroy(p)
 *
 * Thread safety: stats and listings may be read from any thread at any time between
 * peering_start() and peering_destroy().
 */
#ifndef RACKDISK_CLUSTER_PEERING_H
#define RACKDISK_CLUSTER_PEERING_H

#include <stdbool.h>
#include <stdint.h>

#include "cache/chunkstore.h"
#include "cluster/directory.h"
#include "cluster/fetcher.h"
#include "cluster/peer_client.h"
#include "cluster/peer_server.h"
#include "cluster/peers.h"

struct peering;

struct peering_opts {
	const char *redis_url;        /* redis://[[user]:password@]host[:port][/db] */
	const char *prefix;           /* Redis key prefix (default "rackdisk:") */
	const char *node_name;        /* [node] name */
	const char *rack;             /* [node] rack (default "default") */
	const char *listen;           /* peer server, host:port (default 0.0.0.0:7480) */
	const char *advertise;        /* host:port peers dial (required) */
	const char *token;            /* the cluster token itself (see peer_token_load) */
	uint32_t lease_wait_ms;       /* longest wait for another node's seed fetch (10000) */
	uint32_t lease_ttl_ms;        /* a dead lease holder is taken over after (3000) */
	uint32_t heartbeat_ttl_ms;    /* a dead node is ignored after (10000) */
	uint32_t peer_timeout_ms;     /* one peer request at most (5000) */
	uint32_t redis_timeout_ms;    /* one Redis command at most (500) */
	unsigned server_threads;      /* peer server threads (4) */
	/* Fetch workers of a node ([seed] workers; the cluster's nodes are expected to share
	 * it): a peer holds up to that many connections to our listener at once, plus its
	 * idle pool, and the listener's per-address limit must let them all in (8). */
	unsigned peer_workers;
};

struct peering_stats {
	struct directory_stats dir;
	struct peer_server_stats server;
	struct peer_client_stats client;
	struct peers_stats peers;
};

/* A node of the cluster as this appliance sees it (rackdisk peers). */
struct peering_peer {
	struct directory_node node;  /* from the directory (alive, address, rack) */
	bool self;
	/* what this node fetched from it (zero if never) */
	uint64_t ok, failures, bad_data, not_found, bytes;
};

int peering_create(const struct peering_opts *o, struct peering **out);
struct chunkstore_hooks peering_store_hooks(struct peering *p);
int peering_start(struct peering *p, struct chunkstore *store, struct fetcher *f);
void peering_stop(struct peering *p);
void peering_destroy(struct peering *p);

void peering_get_stats(struct peering *p, struct peering_stats *st);

/* Every registered node (directory) merged with this node's per-peer counters. Returns
 * the count (<= max) or a negative errno (-ENOTCONN when Redis is down). */
int peering_list(struct peering *p, struct peering_peer *out, int max);

/* The directory, e.g. for directory_wait_ready() in tests. */
struct directory *peering_directory(struct peering *p);

#endif
