/*
 * peer_server.h - serves this appliance's cached chunks to its peers (DESIGN.md sec. 5).
 *
 *   GET|HEAD /v1/chunks/<64 hex>   Authorization: Bearer <cluster token>
 *   200 the chunk's bytes, sent from the chunk file with sendfile (zero-copy)
 *   400 malformed path or hash; 401 no token; 403 wrong token; 404 not here;
 *   405 other methods. Errors carry a one-line text body, never chunk data.
 *
 * The chunk is pinned in the store (chunkstore_get/put) from the request until the
 * response is finished, so it is not evicted mid-transfer. After a 404 the not_held hook
 * runs, outside the response's path: the directory repairs this node's own entry.
 * Thread safety: the server runs its own threads; stats may be read from any thread.
 */
#ifndef RACKDISK_CLUSTER_PEER_SERVER_H
#define RACKDISK_CLUSTER_PEER_SERVER_H

#include <stddef.h>
#include <stdint.h>

#include "cache/chunkstore.h"

struct peer_server;

struct peer_server_opts {
	const char *listen;          /* "host:port" or "[v6]:port"; port 0 picks a free one */
	const char *token;           /* the cluster's shared token (required, non-empty) */
	struct chunkstore *store;    /* owner-mode store; borrowed */
	unsigned threads;            /* default 4 */
	/* Connections are counted before any token is checked, so one client holding idle
	 * sockets could lock every peer out: each address gets at most max_per_ip of them,
	 * and a connection idle (mid-request or between requests) for idle_timeout_s is
	 * closed. A peer opens about one connection per fetch worker, plus its idle pool. */
	unsigned max_connections;    /* default 256; at least max_per_ip */
	unsigned max_per_ip;         /* default 64 */
	unsigned idle_timeout_s;     /* default 60; rackdiskd passes the peer timeout */
	/* Optional: called from a server thread once a 404 has been sent for *h, so the
	 * directory can drop this node's entry for a chunk it does not have. */
	void (*not_held)(void *arg, const struct chunk_hash *h);
	void *not_held_arg;
};

enum peer_status {
	PEER_ST_200, PEER_ST_400, PEER_ST_401, PEER_ST_403, PEER_ST_404, PEER_ST_405,
	PEER_ST_500, PEER_ST_COUNT
};
extern const int peer_status_code[PEER_ST_COUNT];

struct peer_server_stats {
	uint64_t requests;
	uint64_t bytes;                        /* chunk bytes sent in completed responses */
	uint64_t responses[PEER_ST_COUNT];     /* by status */
	uint64_t aborted;                      /* responses cut short by the client */
};

int peer_server_start(const struct peer_server_opts *o, struct peer_server **out);
void peer_server_stop(struct peer_server *s);

/* The port actually bound (useful with port 0). */
int peer_server_port(struct peer_server *s);

void peer_server_get_stats(struct peer_server *s, struct peer_server_stats *st);

/*
 * Reads the cluster token from path: the file's first line, surrounding whitespace
 * removed. -EINVAL if empty or longer than len - 1; -errno if unreadable.
 */
int peer_token_load(const char *path, char *buf, size_t len);

#endif
