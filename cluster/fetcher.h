/*
 * fetcher.h - makes a missing chunk present in the local chunk store (DESIGN.md sec. 5).
 *
 * Order: local store -> (later: a live peer that holds it, through the peer hook) -> the
 * seed repository. Concurrent requests for one chunk within the appliance become one
 * fetch (single flight); every chunk's hash is checked before it is stored. Seed fetches
 * use keep-alive connections, run in parallel, are retried with backoff until the
 * caller's deadline, and a sequential access pattern triggers readahead.
 *
 * Thread safety: every call may be made from any thread at once.
 */
#ifndef RACKDISK_CLUSTER_FETCHER_H
#define RACKDISK_CLUSTER_FETCHER_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "cache/chunkstore.h"
#include "common/hash.h"

struct fetcher;

enum fetch_source { FETCH_SRC_LOCAL, FETCH_SRC_PEER, FETCH_SRC_SEED, FETCH_SRC_COUNT };

struct fetcher_opts {
	const char *seed_url;        /* repository location (http, https, file, directory) */
	struct chunkstore *store;    /* owner-mode store; borrowed */
	unsigned workers;            /* parallel seed fetches (default 8) */
	uint64_t retry_initial_ms;   /* first backoff (default 100) */
	uint64_t retry_max_ms;       /* backoff cap (default 2000) */
	uint64_t request_timeout_ms; /* one HTTP request (default 10000) */
	unsigned readahead_chunks;   /* chunks fetched ahead on sequential misses (default 4) */
	/* Added after the first version; 0 selects the default. */
	unsigned prefetch_queue;     /* background fills waiting for a worker (default 256) */
	uint64_t prefetch_timeout_ms; /* how long a background fill retries (default 30000) */
	uint64_t connect_timeout_ms; /* seed connect (default 3000) */
	bool no_readahead;           /* disables readahead (fetcher_note_access is a no-op) */
	const char *seed_ca_file;    /* PEM CA bundle for an https seed (NULL: the system's) */
	/* Readahead window in a cluster (a peer hook is set), where readahead takes chunks
	 * from peers only; 0: the larger of 16 and readahead_chunks. */
	unsigned peer_readahead_chunks;
};

struct fetcher_stats {
	uint64_t fetches[FETCH_SRC_COUNT];   /* chunks obtained, by source */
	uint64_t bytes[FETCH_SRC_COUNT];
	uint64_t failures[FETCH_SRC_COUNT];  /* attempts that failed (incl. bad hashes) */
	uint64_t bad_hash[FETCH_SRC_COUNT];
	uint64_t retries, timeouts, coalesced, readahead;
	/* fetch latency histogram, seconds: bucket upper bounds in fetcher_latency_bounds.
	 * Counts are per bucket (not cumulative): latency_count[s][i] counts fills whose
	 * latency was in (bound[i-1], bound[i]]. One sample per chunk obtained. */
	uint64_t latency_count[FETCH_SRC_COUNT][16];
	double latency_sum[FETCH_SRC_COUNT];
	/* Added after the first version. */
	uint64_t not_found;          /* seed answered 404: the chunk is not in the repository */
	uint64_t prefetches;         /* background fills queued (readahead + fetcher_prefetch) */
	uint64_t prefetch_dropped;   /* background fills dropped because the queue was full */
	uint64_t seed_requests;      /* HTTP requests to the seed */
	uint64_t seed_connects;      /* new seed connections (requests - connects were reused) */
	uint64_t inflight;           /* fills queued or running now */
	uint64_t readahead_no_peer;  /* cluster readahead fills dropped: no peer held the chunk */
};
extern const double fetcher_latency_bounds[16]; /* last one is +Inf */

int fetcher_create(const struct fetcher_opts *o, struct fetcher **out);

/* Shutdown, first step: every fetcher_fetch blocked now or called later returns
 * -ESHUTDOWN at once, transfers in progress are aborted and background fills end. Call
 * it, join the threads that use the fetcher, then fetcher_destroy(). */
void fetcher_stop(struct fetcher *f);
/* Calls fetcher_stop() if needed; no other call may be in progress or follow. */
void fetcher_destroy(struct fetcher *f);

/*
 * Blocks until chunk *h (len bytes) is in the store or deadline_ns (CLOCK_MONOTONIC)
 * passes. 0: present now. -ETIMEDOUT: deadline passed (the fill goes on for other
 * waiters until their deadlines, and a transfer in progress may complete into the store
 * after it). -EIO: every source failed hard (the seed has no such
 * chunk). Also -ENOSPC (store full of pinned chunks), -EINVAL (len 0 or over
 * CHUNK_SIZE_MAX), -ESHUTDOWN (fetcher being destroyed).
 */
int fetcher_fetch(struct fetcher *f, const struct chunk_hash *h, uint32_t len,
		  uint64_t deadline_ns);

/* Starts a background fill; returns at once. It may be dropped (counted) when the
 * background queue is full; a later fetcher_fetch of the chunk still works. */
void fetcher_prefetch(struct fetcher *f, const struct chunk_hash *h, uint32_t len);

/* Hint from a reader that chunk idx of a manifest was read (drives readahead). The
 * manifest is borrowed until fetcher_forget_image(). */
struct manifest;
void fetcher_note_access(struct fetcher *f, const struct manifest *m, uint64_t idx);
void fetcher_forget_image(struct fetcher *f, const struct manifest *m);

void fetcher_get_stats(struct fetcher *f, struct fetcher_stats *st);

/*
 * Peer hook (issue "The cluster"): tried before the seed. Receives the chunk into buf
 * (len bytes, the calling worker's) and stores it. Returns 0 with the chunk in the store,
 * -ENOENT when no peer has it (go to the seed), -ENOSPC when our store is full (final: no
 * seed fetch), -ETIMEDOUT when deadline_ns passed, or another negative errno. Only the
 * last kind counts in failures[FETCH_SRC_PEER]: a hook that asks several holders counts
 * their failures itself (peers.c, added in by appliance_fetch_stats) and answers -ENOENT.
 * flags: FETCHER_PEER_NO_LEASE for a readahead fill, which takes a chunk only from a
 * holder and never goes to the seed: it must not take the cluster's seed lease either.
 * abort: with that flag, a flag the fetcher sets when a reader joins the fill; the call
 * then returns -EINTR promptly (a transfer under way included, not counted as a failure)
 * and the fill goes on as the reader's, whose deadline governs. NULL without the flag.
 * abandon (optional): a fill that called fetch without that flag ended without the chunk
 * in the store (the seed failed, the deadline passed, the store is full): release what
 * fetch took for the seed fetch (the lease), so that other nodes stop waiting for it.
 * cancel (optional): fetcher_stop() calls it once; every fetch under way or later then
 * returns -ECANCELED promptly (shutdown does not wait out the peer phase).
 */
#define FETCHER_PEER_NO_LEASE 0x1u
struct fetcher_peer_ops {
	void *arg;
	int (*fetch)(void *arg, const struct chunk_hash *h, void *buf, uint32_t len,
		     uint64_t deadline_ns, unsigned flags, const atomic_bool *abort);
	void (*abandon)(void *arg, const struct chunk_hash *h);
	void (*cancel)(void *arg);
};
void fetcher_set_peer_ops(struct fetcher *f, const struct fetcher_peer_ops *ops);

#endif
