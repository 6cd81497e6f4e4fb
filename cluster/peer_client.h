/*
 * peer_client.h - fetches chunks from peer appliances' peer servers (DESIGN.md sec. 5).
 *
 * libcurl easy handles are pooled so each keeps its keep-alive connections between
 * requests. Every chunk is checked against its hash before it is stored: a peer that
 * sends other bytes (or another length) is a failed source, never data.
 *
 * Thread safety: every call may be made from any thread at once.
 */
#ifndef RACKDISK_CLUSTER_PEER_CLIENT_H
#define RACKDISK_CLUSTER_PEER_CLIENT_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/chunkstore.h"
#include "common/hash.h"

struct peer_client;

/* Idle handles a client keeps by default, each with its keep-alive connection. */
#define PEER_CLIENT_POOL 16

struct peer_client_opts {
	struct chunkstore *store;      /* owner-mode store; borrowed (may be NULL for _get) */
	const char *token;             /* the cluster token */
	uint32_t connect_timeout_ms;   /* default 500 */
	uint32_t request_timeout_ms;   /* one request, at most (default 10000) */
	unsigned pool_size;            /* idle handles kept (default PEER_CLIENT_POOL) */
};

struct peer_client_stats {
	uint64_t requests, ok, bytes;
	uint64_t connects;             /* new connections (keep-alive keeps this low) */
	uint64_t not_found;            /* 404: the peer no longer has it */
	uint64_t bad_data;             /* wrong hash or length */
	uint64_t timeouts, errors;     /* transport errors, other statuses */
};

int peer_client_create(const struct peer_client_opts *o, struct peer_client **out);
void peer_client_destroy(struct peer_client *pc);

/*
 * Fetches chunk *h (len bytes) from the peer server at addr ("host:port") into buf (the
 * caller's scratch, len bytes), checks its hash and inserts it into the store. Returns 0,
 * -ENOENT (the peer does not have it), -EBADMSG (wrong bytes or length), -ETIMEDOUT
 * (deadline_ns, CLOCK_MONOTONIC, passed), -EACCES (token refused), -ECONNREFUSED / -EIO
 * (transport), -ECANCELED (peer_client_cancel), or the store's error.
 */
int peer_client_fetch(struct peer_client *pc, const char *addr, const struct chunk_hash *h,
		      void *buf, uint32_t len, uint64_t deadline_ns);

/* Same, into buf[0..len) without storing (benchmarks, tools, and callers that tell the
 * peer's failures from their own store's: peer_client_keep stores what this got). */
int peer_client_get(struct peer_client *pc, const char *addr, const struct chunk_hash *h,
		    void *buf, uint32_t len, uint64_t deadline_ns);
int peer_client_keep(struct peer_client *pc, const struct chunk_hash *h, const void *buf,
		     uint32_t len);
/* peer_client_get that also ends, with -EINTR, once *abort (NULL: never) is true: checked
 * before the request and, while it runs, by libcurl's progress callback (at least once a
 * second while the peer is silent). */
int peer_client_get_abortable(struct peer_client *pc, const char *addr,
			      const struct chunk_hash *h, void *buf, uint32_t len,
			      uint64_t deadline_ns, const atomic_bool *abort);

/* Shutdown: requests under way end at once with -ECANCELED, and so does every later one. */
void peer_client_cancel(struct peer_client *pc);

void peer_client_get_stats(struct peer_client *pc, struct peer_client_stats *st);

#endif
