/*
 * directory_int.h - what directory.c shares with lease.c; not for other folders.
 */
#ifndef RACKDISK_CLUSTER_DIRECTORY_INT_H
#define RACKDISK_CLUSTER_DIRECTORY_INT_H

#include <hiredis/hiredis.h>
#include <pthread.h>

#include "cluster/directory.h"

#define DIR_KEY_MAX 256

/* Failed announces and withdraws remembered for a replay (32 bytes each); beyond this
 * many the store is announced in full instead. */
#define DIR_PENDING_MAX 65536

/* A lease this node holds, renewed by the directory thread until hold_until_ns. */
struct dir_lease {
	struct chunk_hash h;
	uint64_t hold_until_ns;
};

struct directory {
	/* configuration (owned copies) */
	char *prefix, *name, *rack, *advertise;
	char instance[17];          /* random per process (dir_new_instance) */
	/* our heartbeat: "rack addr name instance", each at its longest, 3 spaces */
	char alive_value[NAME_MAX_LEN + DIRECTORY_ADDR_MAX + NAME_MAX_LEN + 16 + 3 + 1];
	struct directory_url url;
	uint32_t connect_ms, command_ms, hb_ttl_ms, hb_interval_ms, lease_ttl_ms, lease_renew_ms;
	uint32_t batch;

	/*
	 * lock guards ctx and everything sent on it: the connection the callers share, one
	 * command (or pipeline) at a time. Callers wait for it at most command_ms (dir_lock),
	 * the directory thread in short turns (dir_lock_thread).
	 */
	pthread_mutex_t lock;
	redisContext *ctx;          /* NULL while disconnected: calls fail fast */

	/* The directory thread's own connection (that thread only; directory_leave uses it
	 * once the thread has stopped): registration, heartbeat, lease renewals. */
	redisContext *hk;
	/*
	 * This node's id for the callers: __atomic, -1 while it has none (not registered
	 * yet, kept out by a name conflict, or the id found lost: dir_id_lost). A new id is
	 * published under lock, with the shared connection it goes with (dir_reconnect);
	 * callers read it under lock. reg_id is the id of the last registration, that the
	 * heartbeat keeps alive (the directory thread's; -1 when none).
	 */
	int64_t node_id;
	int64_t reg_id;

	struct chunkstore *store;   /* borrowed, for the bulk re-announce */

	/*
	 * Chunks whose announce or withdraw failed (Redis down, slow or refusing): the thread
	 * syncs their entries with the store when it can (dir_replay) rather than announce
	 * the whole store again. More than DIR_PENDING_MAX: dropped, and pending_overflow
	 * makes the thread announce in full. pending_lock is a leaf: no lock is taken under it.
	 */
	pthread_mutex_t pending_lock;
	struct chunk_hash *pending;
	size_t npending, cap_pending;
	bool pending_overflow;

	/* leases we hold (few: at most one per seed fetch in flight) */
	pthread_mutex_t lease_lock;
	struct dir_lease *leases;
	size_t nleases, cap_leases;

	/* background thread; thread_lock guards stopping, ready, announce_due, announcing,
	 * conn_gen and store, and is never held across I/O */
	pthread_t thread;
	bool thread_started, stopping, left;
	bool ready;                 /* connected, registered and the store announced */
	bool announce_due;          /* a store was attached: the thread announces it */
	bool announcing;            /* ... and is at it (dir_announce_attached) */
	uint64_t conn_gen;          /* counts connection failures (dir_set_broken) */
	uint64_t next_hb_ns, next_renew_ns; /* the thread's timers (that thread only) */
	bool registered;            /* registered once (that thread only; lua_register) */
	/* that thread only: the store is owed a full announce (at start, after one failed,
	 * after a name conflict kept us out); Redis's run_id at the last registration ("":
	 * unknown, INFO refused), and whether that was logged */
	bool full_due;
	char run_id[48];
	bool run_id_warned;
	uint64_t conflict_log_ns;   /* last "name in use" error (that thread only) */
	pthread_mutex_t thread_lock;
	pthread_cond_t thread_cond;  /* wakes the thread */
	pthread_cond_t ready_cond;   /* ready, announce_due or announcing changed */

	uint64_t last_log_ns, suppressed; /* rate-limited failure log */
	uint64_t last_bad_node_log_ns;    /* rate-limited log of malformed node entries */
	struct directory_stats st;        /* updated with __atomic ops */
};

#define DIR_STAT_ADD(d, field, n) __atomic_fetch_add(&(d)->st.field, (n), __ATOMIC_RELAXED)

/* Key P<kind><hex of h> into buf. */
void dir_chunk_key(const struct directory *d, const char *kind, const struct chunk_hash *h,
		   char *buf, size_t len);

/*
 * Runs one command (printf-like hiredis format) on the shared connection. 0 and *out
 * (caller frees with freeReplyObject; may pass out NULL), -ENOTCONN when disconnected or
 * the connection broke (then dropped, the thread reconnects), -EAGAIN when it stayed
 * busy for the command timeout, -EIO on a Redis error reply. Caller must not hold d->lock.
 */
int dir_command(struct directory *d, redisReply **out, const char *fmt, ...);

/* Takes d->lock within the command timeout: 0, or -EAGAIN (counted as busy_fails). */
int dir_lock(struct directory *d);

/* Same, with d->lock already held by the caller (for pipelines and multi-step calls). */
int dir_command_locked(struct directory *d, redisReply **out, const char *fmt, ...);
int dir_pipeline_reply_locked(struct directory *d, redisReply **out);
void dir_fail_locked(struct directory *d, const char *what);

/* The directory thread's own connection: one pipelined reply (dropping the connection
 * when it broke), and dropping it. */
int dir_hk_reply(struct directory *d, redisReply **out);
void dir_hk_fail(struct directory *d, const char *what);

/* lease.c: renews held leases (called by the directory thread). */
void dir_leases_renew(struct directory *d);
/* lease.c: true (and the entry removed) if we held a lease on *h. */
bool dir_lease_forget(struct directory *d, const struct chunk_hash *h);

/* lease.c: our value of a lease, "<id>:<instance>". */
void dir_lease_value(const struct directory *d, int64_t id, char *buf, size_t len);

extern const char dir_lua_release[];

#endif
