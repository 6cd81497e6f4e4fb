/*
 * directory.h - the cluster's chunk directory in Redis (DESIGN.md sec. 5).
 *
 * Which appliance holds which chunk, which appliances are alive, and who is pulling a
 * chunk from the seed right now. Redis holds soft state only: every key can be rebuilt
 * from the appliances, so an outage of Redis costs speed (fetches go to the seed), never
 * data, and never blocks a caller: while the connection is down every call fails at
 * once with -ENOTCONN, a background thread reconnects, and on reconnect the node
 * registers again and re-announces its whole store if Redis lost its entries (a new
 * run_id, or the mark of its last full announce gone from its node record: then also
 * at the first announce or withdraw, or heartbeat, that finds our node record gone or
 * naming the node Redis gave our id to since, which are refused); else it
 * re-sends only the announces and withdraws that failed meanwhile. A reply timeout drops
 * a connection too, so a slow Redis costs a reconnect, not a full re-announce.
 *
 * Keys, all under the configured prefix P (default "rackdisk:"):
 *   P nodes:next          INCR counter handing out node ids (1, 2, ...)
 *   P nodes:byname        hash  name -> node id (a restarted node keeps its id)
 *   P node:<id>           hash  name, addr, rack (for listings); listed: the instance of
 *                         the process whose full announce Redis still holds
 *   P alive:<id>          string "rack addr name instance", with a TTL: the heartbeat
 *                         (instance: random per process; a second appliance with the
 *                         same name finds it live under another address and stays out)
 *   P chunk:<hex>         set of node ids holding the chunk (an intset: ids are small)
 *   P lease:<hex>         string "id:instance", with a TTL: that node is fetching the
 *                         chunk from the seed; others wait for it to announce the chunk
 *
 * Thread safety: every call may be made from any thread at once. The callers share one
 * connection, serialized (commands are sub-millisecond on a LAN and pipelined where it
 * matters); a call waits for its turn at most the command timeout, then fails with
 * -EAGAIN. The background thread has a connection of its own for the heartbeat and the
 * lease renewals, so a busy node neither looks dead nor loses its leases.
 */
#ifndef RACKDISK_CLUSTER_DIRECTORY_H
#define RACKDISK_CLUSTER_DIRECTORY_H

#include <stdbool.h>
#include <stdint.h>

#include "cache/chunkstore.h"
#include "common/hash.h"
#include "common/util.h"

struct directory;

struct directory_opts {
	const char *url;           /* redis://[[user]:password@]host[:port][/db] (host: a name,
				    * IPv4, or [IPv6] in brackets) or unix:///path */
	const char *prefix;        /* key prefix (default "rackdisk:") */
	const char *node_name;     /* unique in the cluster (name_is_valid) */
	const char *rack;          /* rack label (default "default") */
	const char *advertise;     /* host:port peers use to reach this node's peer server */
	uint32_t connect_timeout_ms; /* default 200 */
	uint32_t command_timeout_ms; /* default 500 */
	uint32_t heartbeat_ttl_ms;   /* default 10000 */
	uint32_t heartbeat_interval_ms; /* default 3000; also the reconnect interval */
	uint32_t lease_ttl_ms;       /* default 3000: a dead lease holder is taken over after this */
	uint32_t lease_renew_ms;     /* default 1000 */
	uint32_t announce_batch;     /* commands per pipelined round trip (default 4096) */
};

struct directory_stats {
	bool connected;
	int64_t node_id;             /* -1 until registered */
	uint64_t commands, errors;   /* round trips made / failed (incl. fast fails when down) */
	uint64_t fast_fails;         /* calls refused at once because the connection is down */
	uint64_t busy_fails;         /* calls that gave up waiting for the busy connection */
	uint64_t reconnects;         /* successful (re)connections */
	uint64_t announces, withdraws, bulk_announced;
	uint64_t replayed;           /* entries synced again after their announce/withdraw failed */
	uint64_t lookups, lookup_holders;
	uint64_t leases_taken, leases_busy, leases_released, leases_renewed, leases_expired;
	uint64_t stale_removed;      /* our stale entries dropped after we answered a 404 */
	uint64_t bad_nodes;          /* malformed node entries met by directory_list_nodes:
				      * bad name (left out), address or rack (shown empty);
				      * and holders directory_lookup left out: a heartbeat
				      * it cannot read */
	bool name_conflict;          /* kept out: another live appliance has our node name */
};

/* One live holder of a chunk, as returned by directory_lookup(). The fields hold the
 * longest values directory_create() accepts (a name and a rack are name_is_valid, an
 * address at most DIRECTORY_ADDR_MAX characters). */
#define DIRECTORY_ADDR_MAX 127
struct directory_holder {
	int64_t node_id;
	char name[NAME_MAX_LEN + 1];
	char addr[DIRECTORY_ADDR_MAX + 1]; /* host:port of its peer server */
	char rack[NAME_MAX_LEN + 1];
};

/* A node, as returned by directory_list_nodes(). */
struct directory_node {
	int64_t node_id;
	char name[NAME_MAX_LEN + 1];
	char addr[DIRECTORY_ADDR_MAX + 1];
	char rack[NAME_MAX_LEN + 1];
	bool alive;
	int64_t ttl_ms;              /* heartbeat time left, -1 if none */
};

/*
 * Creates the directory client and starts its background thread (connect, register,
 * heartbeat, lease renewal, reconnect). Never fails because Redis is unreachable: the
 * thread keeps trying. -EINVAL for a bad URL or option.
 */
int directory_create(const struct directory_opts *o, struct directory **out);

/*
 * Gives the directory the store to re-announce, in full, after each (re)connection
 * (the bulk announce at start is the first of those); the background thread announces
 * it at once if connected (directory_wait_ready() waits for that). Call once the store
 * is open; the store must outlive the directory or directory_leave().
 */
void directory_attach_store(struct directory *d, struct chunkstore *store);

/* Hooks to pass in chunkstore_opts.hooks: announce after store, withdraw before eviction. */
struct chunkstore_hooks directory_store_hooks(struct directory *d);

/* Stops heartbeats and deletes this node's heartbeat so peers stop asking it at once. */
void directory_leave(struct directory *d);
void directory_destroy(struct directory *d);

/* Waits (bounded) until connected, registered and the attached store announced: 0, or
 * -ETIMEDOUT. */
int directory_wait_ready(struct directory *d, uint32_t timeout_ms);

int64_t directory_node_id(struct directory *d);

/* This node holds / no longer holds chunk *h. Announcing also releases our lease on it. */
int directory_announce(struct directory *d, const struct chunk_hash *h);
int directory_withdraw(struct directory *d, const struct chunk_hash *h);

/*
 * Live holders of *h other than this node: up to max entries into out. Returns the
 * number found (>= 0) or a negative errno (-ENOTCONN when Redis is down, -EAGAIN when
 * the connection stayed busy for the command timeout).
 */
int directory_lookup(struct directory *d, const struct chunk_hash *h,
		     struct directory_holder *out, int max);

/*
 * This node answered a peer 404 for *h: drops its own entry from the chunk's set unless
 * the chunk is in the attached store again (lazy repair of a stale entry). Only a holder
 * repairs its own entry: a peer's removal after a 404 could land after the holder had
 * fetched the chunk again and announced it, and leave it unlisted.
 */
int directory_not_held(struct directory *d, const struct chunk_hash *h);

/* All registered nodes, alive or not: up to max. Returns the count or -errno. */
int directory_list_nodes(struct directory *d, struct directory_node *out, int max);

/*
 * Fetch leases. directory_lease_acquire(): 0 when this node now holds the lease on *h
 * (it then goes to the seed; the lease is renewed in the background until the chunk is
 * announced or hold_until_ns (CLOCK_MONOTONIC) passes, so a stalled fetch lets the lease
 * expire), -EBUSY with *holder set when another node holds it, or another -errno.
 */
int directory_lease_acquire(struct directory *d, const struct chunk_hash *h,
			    uint64_t hold_until_ns, int64_t *holder);
/* Releases our lease on *h if we still hold it (compare-and-delete). */
int directory_lease_release(struct directory *d, const struct chunk_hash *h);
/* Who holds the lease on *h: 0 and *holder (0 when nobody, or nobody can: a malformed
 * value or one without a TTL, which acquiring takes as free), or -errno. */
int directory_lease_holder(struct directory *d, const struct chunk_hash *h, int64_t *holder);
/* True when node id's heartbeat is alive; -errno on failure. */
int directory_node_alive(struct directory *d, int64_t node_id);
/* Deletes the lease on *h only if node id still holds it and its heartbeat is gone,
 * checked atomically (taking over a dead holder), or if nobody can hold it: -ENOENT if
 * it did not. */
int directory_lease_break(struct directory *d, const struct chunk_hash *h, int64_t node_id);

void directory_get_stats(struct directory *d, struct directory_stats *st);

/* Parses a redis:// URL (exposed for tests and config checking). */
struct directory_url {
	char host[256];
	char socket[256];            /* unix:///path: the socket's path (host is then "") */
	int port;
	char user[128];
	char password[256];
	int db;
};
int directory_parse_url(const char *url, struct directory_url *out);

#endif
