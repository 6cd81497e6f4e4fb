/*
 * peers.h - the fetcher's peer hook: ask the directory who holds a chunk, fetch it from
 * a live holder (same rack first), and coordinate seed fetches across the cluster with
 * leases (DESIGN.md sec. 5).
 *
 * peers_fetch(), behind struct fetcher_peer_ops:
 *   1. live holders from the directory, same rack first, peers that failed recently
 *      last; try up to max_tries of them. A 404 means a stale directory entry: the
 *      holder that answered it removes its own (directory_not_held), not we.
 *   2. nobody could serve it: take the chunk's lease. Won -> look up once more (a holder
 *      may have announced just before), else -ENOENT: the fetcher goes to the seed and
 *      the lease is released when the chunk is announced.
 *   3. another node holds the lease: poll (every poll_ms) for a holder to appear and
 *      fetch from it; if the lease holder's heartbeat is gone, break its lease and take
 *      it over; after lease_wait_ms (or the caller's deadline) stop waiting -> -ENOENT.
 * Steps 1-3 together get half of the time left before the caller's deadline, and a holder
 * that failed is not asked again in the same call: holders alive in the directory whose
 * servers stall must leave the seed time to serve.
 * Redis down at any step -> -ENOENT at once: the seed serves.
 * Readahead (FETCHER_PEER_NO_LEASE) does step 1 only: it never goes to the seed, so it
 * must not hold the lease that makes other nodes wait; a reader that joins the fill ends
 * it at once (the abort flag), and the fill goes on as the reader's, steps 1-3. A fill
 * that won the lease and then failed releases it (peers_abandon), so waiters take over
 * without waiting out the TTL.
 *
 * Thread safety: every call may be made from any thread at once.
 */
#ifndef RACKDISK_CLUSTER_PEERS_H
#define RACKDISK_CLUSTER_PEERS_H

#include <stdint.h>

#include "cluster/directory.h"
#include "cluster/fetcher.h"
#include "cluster/peer_client.h"

struct peers;

struct peers_opts {
	struct directory *dir;       /* borrowed */
	struct peer_client *client;  /* borrowed */
	const char *rack;            /* this node's rack (default "default") */
	uint32_t lease_wait_ms;      /* longest wait for another node's seed fetch (10000) */
	uint32_t poll_ms;            /* poll interval while waiting (default 50) */
	unsigned max_tries;          /* holders tried per attempt (default 3) */
	uint32_t penalty_ms;         /* a failed peer is tried last for this long (5000) */
};

struct peers_stats {
	uint64_t calls;
	uint64_t peer_hits;           /* chunks obtained from a peer */
	uint64_t peer_bytes;
	uint64_t no_holder;           /* nobody held it: went on to the lease */
	uint64_t peer_failures;       /* holders that failed (transport, timeout, refused) */
	uint64_t bad_data;            /* holders that sent wrong bytes */
	uint64_t stale;               /* holders that said 404 */
	uint64_t directory_down;      /* Redis unreachable: straight to the seed */
	uint64_t leases_won;          /* we go to the seed for the cluster */
	uint64_t lease_recheck_hits;  /* a holder appeared just as we took the lease */
	uint64_t lease_waits;         /* waited for another node's seed fetch */
	uint64_t lease_wait_hits;     /* ... and then got it from that node */
	uint64_t lease_wait_timeouts; /* ... and gave up at the bound: went to the seed */
	uint64_t lease_takeovers;     /* fetched for the cluster after waiting on a lease
					 whose holder died, stalled or gave it up */
	uint64_t leases_abandoned;    /* released because our seed fetch failed */
	uint64_t lease_wait_ns;       /* total time spent waiting */
};

/* One peer as seen by this node. */
struct peers_peer_stats {
	int64_t node_id;
	char name[NAME_MAX_LEN + 1];
	char addr[DIRECTORY_ADDR_MAX + 1];
	char rack[NAME_MAX_LEN + 1];
	uint64_t ok, failures, bad_data, not_found, bytes;
};

int peers_create(const struct peers_opts *o, struct peers **out);
void peers_destroy(struct peers *p);

/* The hook for fetcher_set_peer_ops(); p must outlive the fetcher. */
struct fetcher_peer_ops peers_fetcher_ops(struct peers *p);

/* 0: chunk *h is in the store; -ENOENT: go to the seed; -ETIMEDOUT: deadline passed;
 * -ECANCELED: peers_cancel(). */
int peers_fetch(struct peers *p, const struct chunk_hash *h, void *buf, uint32_t len,
		uint64_t deadline_ns);
/* Step 1 only, for readahead (FETCHER_PEER_NO_LEASE): 0, or -ENOENT when no holder
 * could serve it; never takes a lease, so never makes other nodes wait. Ends with -EINTR
 * as soon as *abort (NULL: never) is true, a transfer under way included (the fetcher
 * sets it when a reader joins the readahead fill). */
int peers_fetch_from_holders(struct peers *p, const struct chunk_hash *h, void *buf,
			     uint32_t len, uint64_t deadline_ns, const atomic_bool *abort);
/* The fill that called peers_fetch for *h ends without the chunk: release our lease on
 * it, if we took one, so that waiting nodes take over at once. */
void peers_abandon(struct peers *p, const struct chunk_hash *h);
/* Shutdown (fetcher_stop, through the hook's cancel op): every call under way, lease waits
 * included, and every later one returns -ECANCELED at once. */
void peers_cancel(struct peers *p);

void peers_get_stats(struct peers *p, struct peers_stats *st);
/* Every peer this node has fetched from (or tried), in *out (malloc'd, the caller frees):
 * their count, or -ENOMEM. */
int peers_list_all(struct peers *p, struct peers_peer_stats **out);

#endif
