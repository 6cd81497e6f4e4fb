/*
 * peers.c - the fetcher's peer hook (see peers.h for the algorithm).
 *
 * Every loop here is bounded twice: by a deadline (the caller's, and lease_wait_ms for
 * waits) and by a count of iterations, so a misbehaving directory cannot spin us.
 */
#include "cluster/peers.h"

#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/log.h"
#include "common/util.h"

#define MAX_HOLDERS 16

struct peer_health {
	struct peers_peer_stats s;
	uint64_t last_fail_ns;
};

struct peers {
	struct directory *dir;
	struct peer_client *client;
	char rack[NAME_MAX_LEN + 1];     /* ours, compared with each holder's */
	uint32_t lease_wait_ms, poll_ms, penalty_ms;
	unsigned max_tries;
	pthread_mutex_t lock;            /* guards health */
	struct peer_health *health;
	size_t nhealth, cap_health;
	struct peers_stats st;           /* __atomic updates */
	atomic_bool cancelled;           /* peers_cancel(): every call ends at once */
	uint64_t takeover_log_ns, takeover_log_skipped; /* takeover_log(), __atomic */
};

#define ST_ADD(p, field, n) __atomic_fetch_add(&(p)->st.field, (n), __ATOMIC_RELAXED)

/* Finds or adds a peer's record; lock held. NULL when out of memory. */
static struct peer_health *health_of(struct peers *p, const struct directory_holder *hd)
{
	size_t i;

	for (i = 0; i < p->nhealth; i++)
		if (p->health[i].s.node_id == hd->node_id)
			goto found;
	if (p->nhealth == p->cap_health) {
		size_t cap = p->cap_health ? p->cap_health * 2 : 16;
		struct peer_health *v = realloc(p->health, cap * sizeof(*v));

		if (!v)
			return NULL;
		p->health = v;
		p->cap_health = cap;
	}
	memset(&p->health[i], 0, sizeof(p->health[i]));
	p->health[i].s.node_id = hd->node_id;
	p->nhealth++;
found:
	/* the address may change when a node restarts elsewhere */
	snprintf(p->health[i].s.name, sizeof(p->health[i].s.name), "%s", hd->name);
	snprintf(p->health[i].s.addr, sizeof(p->health[i].s.addr), "%s", hd->addr);
	snprintf(p->health[i].s.rack, sizeof(p->health[i].s.rack), "%s", hd->rack);
	return &p->health[i];
}

static void note_result(struct peers *p, const struct directory_holder *hd, int rc,
			uint32_t len)
{
	struct peer_health *ph;

	pthread_mutex_lock(&p->lock);
	ph = health_of(p, hd);
	if (ph) {
		if (rc == 0) {
			ph->s.ok++;
			ph->s.bytes += len;
		} else if (rc == -ENOENT) {
			ph->s.not_found++;
		} else {
			ph->s.failures++;
			ph->s.bad_data += rc == -EBADMSG;
			ph->last_fail_ns = now_ns();
		}
	}
	pthread_mutex_unlock(&p->lock);
}

/* Lower is tried first: same rack before other racks, healthy before recently failed. */
static int holder_rank(struct peers *p, const struct directory_holder *hd, uint64_t now)
{
	int rank = strcmp(hd->rack, p->rack) ? 2 : 0;
	size_t i;

	pthread_mutex_lock(&p->lock);
	for (i = 0; i < p->nhealth; i++) {
		struct peer_health *ph = &p->health[i];

		if (ph->s.node_id == hd->node_id && ph->last_fail_ns &&
		    now - ph->last_fail_ns < p->penalty_ms * 1000000ULL)
			rank += 4;
	}
	pthread_mutex_unlock(&p->lock);
	return rank;
}

/* Random order within a rank spreads the load over equal holders. */
static void order_holders(struct peers *p, struct directory_holder *v, int n)
{
	int rank[MAX_HOLDERS], i, j;
	uint64_t now = now_ns();
	unsigned seed = (unsigned)now ^ (unsigned)(uintptr_t)&seed;

	for (i = n - 1; i > 0; i--) {
		struct directory_holder t;

		j = rand_r(&seed) % (i + 1);
		t = v[i];
		v[i] = v[j];
		v[j] = t;
	}
	for (i = 0; i < n; i++)
		rank[i] = holder_rank(p, &v[i], now);
	for (i = 1; i < n; i++) { /* stable insertion sort by rank */
		struct directory_holder t = v[i];
		int r = rank[i];

		for (j = i - 1; j >= 0 && rank[j] > r; j--) {
			v[j + 1] = v[j];
			rank[j + 1] = rank[j];
		}
		v[j + 1] = t;
		rank[j + 1] = r;
	}
}

/* Holders one peers_fetch() call has tried and that failed: not asked again in it. A
 * holder that answered 404 is not among them: its entry is gone from the directory, so if
 * a later lookup names it again, it has announced the chunk since (the lease holder we
 * wait for answers 404 until its seed fetch lands). */
struct tried {
	int64_t id[MAX_HOLDERS];
	unsigned n;
};

static bool tried_has(const struct tried *t, int64_t id)
{
	for (unsigned i = 0; i < t->n; i++)
		if (t->id[i] == id)
			return true;
	return false;
}

/*
 * Looks the chunk up and tries its holders, but not those in *t (the holders this call
 * tried already; failures are added). 0: fetched. -ENOENT: no holder could serve.
 * -ENOTCONN (etc.): the directory failed. -ETIMEDOUT: deadline passed. -ECANCELED:
 * peers_cancel(). -EINTR: *abort (NULL: never) became true; the holder being asked then
 * has not failed, it was not given its time.
 */
static int try_holders(struct peers *p, const struct chunk_hash *h, void *buf,
		       uint32_t len, uint64_t deadline_ns, struct tried *t,
		       const atomic_bool *abort)
{
	struct directory_holder v[MAX_HOLDERS];
	int n, i, rc = -ENOENT;
	unsigned tries = 0;

	if (atomic_load(&p->cancelled))
		return -ECANCELED;
	n = directory_lookup(p->dir, h, v, MAX_HOLDERS);
	if (n < 0)
		return n;
	order_holders(p, v, n);
	for (i = 0; i < n && tries < p->max_tries; i++) {
		if (tried_has(t, v[i].node_id))
			continue;
		if (atomic_load(&p->cancelled))
			return -ECANCELED;
		if (abort && atomic_load(abort))
			return -EINTR;
		if (now_ns() >= deadline_ns)
			return -ETIMEDOUT;
		tries++;
		rc = peer_client_get_abortable(p->client, v[i].addr, h, buf, len, deadline_ns,
					       abort);
		if (rc == -ECANCELED || rc == -EINTR)
			return rc;
		note_result(p, &v[i], rc, len);
		if (rc != 0 && rc != -ENOENT && t->n < MAX_HOLDERS)
			t->id[t->n++] = v[i].node_id;
		if (rc == 0) {
			/* the peer served good bytes: a failure to keep them is ours, not its */
			rc = peer_client_keep(p->client, h, buf, len);
			if (rc == -ENOSPC) /* our own store is full: no other peer helps */
				return rc;
			if (rc) { /* the seed path meets the same store and reports it */
				log_error("peers: cannot store a chunk from node %lld: %s",
					  (long long)v[i].node_id, strerror(-rc));
				return -ENOENT;
			}
			ST_ADD(p, peer_hits, 1);
			ST_ADD(p, peer_bytes, len);
			return 0;
		}
		if (rc == -ENOENT) {
			ST_ADD(p, stale, 1);
		} else if (rc == -EBADMSG) {
			ST_ADD(p, bad_data, 1);
		} else {
			ST_ADD(p, peer_failures, 1);
		}
	}
	return -ENOENT;
}

static bool dir_error(int rc)
{
	return rc < 0 && rc != -ENOENT && rc != -EBUSY && rc != -ETIMEDOUT && rc != -ECANCELED;
}

/*
 * We hold the lease now. A holder may have announced the chunk (and released its lease)
 * between our last lookup and our acquire: look once more, so that race never costs a
 * second seed fetch. 0: fetched from a peer (lease released). -ENOENT: go to the seed.
 */
static int won_lease(struct peers *p, const struct chunk_hash *h, void *buf, uint32_t len,
		     uint64_t deadline_ns, struct tried *t)
{
	int rc = try_holders(p, h, buf, len, deadline_ns, t, NULL);

	if (rc == 0) {
		directory_lease_release(p->dir, h);
		ST_ADD(p, lease_recheck_hits, 1);
		return 0;
	}
	if (rc == -ECANCELED)
		return rc; /* the fill ends and abandons the lease */
	ST_ADD(p, leases_won, 1);
	return rc == -ENOSPC ? rc : -ENOENT; /* at peer_dl too: we hold the lease */
}

static void sleep_until(uint64_t t_ns)
{
	uint64_t now = now_ns();
	struct timespec ts;

	if (t_ns <= now)
		return;
	ts.tv_sec = (t_ns - now) / 1000000000ULL;
	ts.tv_nsec = (t_ns - now) % 1000000000ULL;
	nanosleep(&ts, NULL);
}

/* "Taking over" a dead holder's lease: logged at most once a second, with the count of
 * the lines left out. */
static void takeover_log(struct peers *p, int64_t holder)
{
	uint64_t now = now_ns(), last = __atomic_load_n(&p->takeover_log_ns, __ATOMIC_RELAXED);

	if ((last && now - last < 1000000000ULL) ||
	    !__atomic_compare_exchange_n(&p->takeover_log_ns, &last, now, false,
					 __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
		__atomic_fetch_add(&p->takeover_log_skipped, 1, __ATOMIC_RELAXED);
		return;
	}
	log_info("peers: lease holder node %lld is gone; taking over (%llu similar lines left "
		 "out)", (long long)holder,
		 (unsigned long long)__atomic_exchange_n(&p->takeover_log_skipped, 0,
							  __ATOMIC_RELAXED));
}

/* Step 3: another node is fetching *h from the seed; wait for it, bounded by peer_dl
 * (the peer phase's share of the deadline) as well as lease_wait_ms. */
static int wait_for_lease(struct peers *p, const struct chunk_hash *h, void *buf,
			  uint32_t len, uint64_t deadline_ns, uint64_t peer_dl, int64_t holder,
			  struct tried *t)
{
	uint64_t start = now_ns();
	uint64_t until = MIN(peer_dl, start + p->lease_wait_ms * 1000000ULL);
	unsigned iter, max_iter = p->lease_wait_ms / MAX(p->poll_ms, 1u) + 16;
	int rc = -ENOENT;

	ST_ADD(p, lease_waits, 1);
	for (iter = 0; iter < max_iter && now_ns() < until; iter++) {
		int alive;

		if (atomic_load(&p->cancelled)) {
			rc = -ECANCELED;
			goto out;
		}
		alive = directory_node_alive(p->dir, holder);

		if (alive == 0) {
			/* the holder is dead: its lease would expire anyway; take over now */
			takeover_log(p, holder);
			directory_lease_break(p->dir, h, holder);
		} else {
			sleep_until(MIN(until, now_ns() + p->poll_ms * 1000000ULL));
			rc = try_holders(p, h, buf, len, until, t, NULL);
			if (rc == 0) {
				ST_ADD(p, lease_wait_hits, 1);
				goto out;
			}
			if (dir_error(rc) || rc == -ENOSPC || rc == -ECANCELED)
				goto out;
		}
		rc = directory_lease_acquire(p->dir, h, deadline_ns, &holder);
		if (rc == 0) {
			rc = won_lease(p, h, buf, len, peer_dl, t);
			/* it expired (the holder stalled), was broken (it died) or given up
			 * without the chunk: either way this node now fetches it for the
			 * cluster (counted once, and only then) */
			if (rc)
				ST_ADD(p, lease_takeovers, 1);
			goto out;
		}
		if (rc != -EBUSY)
			goto out;
		/* still taken after a break (another node was quicker, or the holder came
		 * back): poll as in the other branch, never spin on Redis */
		if (alive == 0)
			sleep_until(MIN(until, now_ns() + p->poll_ms * 1000000ULL));
	}
	ST_ADD(p, lease_wait_timeouts, 1);
	rc = now_ns() >= deadline_ns ? -ETIMEDOUT : -ENOENT;
out:
	ST_ADD(p, lease_wait_ns, now_ns() - start);
	return rc;
}

/*
 * The peer phase (holders, the recheck after winning the lease, lease waits) gets half of
 * the time left: holders whose heartbeat is alive but whose server stalls must leave the
 * seed enough of the deadline to serve.
 */
static uint64_t peer_deadline(uint64_t deadline_ns)
{
	uint64_t now = now_ns();

	return deadline_ns > now ? now + (deadline_ns - now) / 2 : deadline_ns;
}

int peers_fetch(struct peers *p, const struct chunk_hash *h, void *buf, uint32_t len,
		uint64_t deadline_ns)
{
	uint64_t peer_dl = peer_deadline(deadline_ns);
	struct tried t = {.n = 0};
	int64_t holder = 0;
	int rc;

	ST_ADD(p, calls, 1);
	rc = try_holders(p, h, buf, len, peer_dl, &t, NULL);
	if (rc == 0 || rc == -ENOSPC || rc == -ECANCELED)
		return rc;
	if (rc == -ETIMEDOUT) /* the peer phase's share is spent: the seed, unleased */
		return -ENOENT;
	if (dir_error(rc))
		goto seed;
	ST_ADD(p, no_holder, 1);
	rc = directory_lease_acquire(p->dir, h, deadline_ns, &holder);
	if (rc == 0)
		return won_lease(p, h, buf, len, peer_dl, &t);
	if (rc != -EBUSY)
		goto seed;
	rc = wait_for_lease(p, h, buf, len, deadline_ns, peer_dl, holder, &t);
	if (rc == 0 || rc == -ETIMEDOUT || rc == -ENOSPC || rc == -ECANCELED)
		return rc;
	if (!dir_error(rc))
		return -ENOENT;
seed:
	/* Redis trouble is never an I/O error: the seed serves (the failure is counted) */
	ST_ADD(p, directory_down, 1);
	return -ENOENT;
}

int peers_fetch_from_holders(struct peers *p, const struct chunk_hash *h, void *buf,
			     uint32_t len, uint64_t deadline_ns, const atomic_bool *abort)
{
	struct tried t = {.n = 0};
	int rc;

	ST_ADD(p, calls, 1);
	rc = try_holders(p, h, buf, len, deadline_ns, &t, abort);
	if (rc == 0 || rc == -ETIMEDOUT || rc == -ENOSPC || rc == -ECANCELED || rc == -EINTR)
		return rc;
	if (dir_error(rc))
		ST_ADD(p, directory_down, 1);
	return -ENOENT;
}

void peers_abandon(struct peers *p, const struct chunk_hash *h)
{
	if (directory_lease_release(p->dir, h) == 0)
		ST_ADD(p, leases_abandoned, 1);
}

void peers_cancel(struct peers *p)
{
	atomic_store(&p->cancelled, true);
	peer_client_cancel(p->client);
}

static int ops_fetch(void *arg, const struct chunk_hash *h, void *buf, uint32_t len,
		     uint64_t deadline_ns, unsigned flags, const atomic_bool *abort)
{
	if (flags & FETCHER_PEER_NO_LEASE)
		return peers_fetch_from_holders(arg, h, buf, len, deadline_ns, abort);
	return peers_fetch(arg, h, buf, len, deadline_ns);
}

static void ops_abandon(void *arg, const struct chunk_hash *h)
{
	peers_abandon(arg, h);
}

static void ops_cancel(void *arg)
{
	peers_cancel(arg);
}

struct fetcher_peer_ops peers_fetcher_ops(struct peers *p)
{
	struct fetcher_peer_ops ops = {.arg = p, .fetch = ops_fetch, .abandon = ops_abandon,
					  .cancel = ops_cancel};

	return ops;
}

int peers_create(const struct peers_opts *o, struct peers **out)
{
	struct peers *p;

	if (!o->dir || !o->client)
		return -EINVAL;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->dir = o->dir;
	p->client = o->client;
	snprintf(p->rack, sizeof(p->rack), "%s", o->rack && *o->rack ? o->rack : "default");
	p->lease_wait_ms = o->lease_wait_ms ? o->lease_wait_ms : 10000;
	p->poll_ms = o->poll_ms ? o->poll_ms : 50;
	p->max_tries = o->max_tries ? o->max_tries : 3;
	p->penalty_ms = o->penalty_ms ? o->penalty_ms : 5000;
	pthread_mutex_init(&p->lock, NULL);
	*out = p;
	return 0;
}

void peers_destroy(struct peers *p)
{
	if (!p)
		return;
	pthread_mutex_destroy(&p->lock);
	free(p->health);
	free(p);
}

void peers_get_stats(struct peers *p, struct peers_stats *st)
{
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	*st = p->st;
}

int peers_list_all(struct peers *p, struct peers_peer_stats **out)
{
	int n;

	pthread_mutex_lock(&p->lock);
	*out = malloc((p->nhealth ? p->nhealth : 1) * sizeof(**out));
	for (n = 0; *out && (size_t)n < p->nhealth; n++)
		(*out)[n] = p->health[n].s;
	pthread_mutex_unlock(&p->lock);
	return *out ? n : -ENOMEM;
}
