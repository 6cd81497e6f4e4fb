/*
 * fetcher.c - single-flight chunk fills: local store -> peer hook -> seed (see fetcher.h).
 *
 * A *fill* is the work of making one chunk present. At most one fill per hash exists at
 * a time (the in-flight table); every caller that misses on that hash waits on the
 * fill's condition variable with its own deadline. A fill is carried out by one of a
 * fixed pool of worker threads, which bounds the parallel seed requests. A fill retries
 * until the latest deadline of anyone waiting for it, so a caller that gives up early
 * does not cut short the fill for the others, and a fill nobody waits for ends.
 *
 * Queues: demand fills (someone is blocked) are served before background fills
 * (readahead and PRE-FETCH), and background fills never occupy the last worker, so a
 * burst of readahead cannot delay a VM's blocked read by a whole seed round trip. The
 * background queue is bounded; what does not fit is dropped and counted.
 *
 * Invariants (tested in tests/unit/cluster/test_fetcher.c):
 *  1. Nothing is inserted into the store unless it decoded to exactly len bytes whose
 *     SHA-256 is the requested hash (chunkobj_decode inside seed_get_chunk).
 *  2. One hash has at most one fill in the table; a fill leaves the table in the same
 *     critical section that publishes its result, so a caller either joins it or, after
 *     it is gone, finds the chunk in the store (or starts a new fill).
 *  3. A caller never waits past its own deadline.
 *  4. A fill is freed only when it is done and no caller references it (refs == 0).
 */
#include "cluster/fetcher.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/queue.h>
#include <time.h>

#include "cluster/seed.h"
#include "common/hugebuf.h"
#include "common/log.h"
#include "common/util.h"
#include "images/manifest.h"

#define FILL_BUCKETS   1024
#define RA_STREAMS     4  /* sequential streams tracked per image */
#define RA_SCAN_FACTOR 64 /* zero chunks skipped per wanted chunk, at most */
/* An access up to RA_BEHIND chunks behind a stream's last one still belongs to it (and
 * neither advances nor resets it): a reader with several reads in flight reports them
 * out of order, and a reset stream would start its ramp again. */
#define RA_BEHIND      8
/*
 * A stream earns readahead after RA_MIN_RUN forward accesses, and its window then doubles
 * from one chunk per access up to readahead_chunks. A boot reads many short runs: a fixed
 * window queued readahead_chunks past the end of each of them, which made the seed send
 * 1.1-1.45x the chunks a boot storm read (tests/rack/storm.py). A whole-disk read reaches
 * the full window after a few chunks.
 */
#define RA_MIN_RUN 3
/*
 * In a cluster (a peer hook is set) readahead takes a chunk only from a peer that holds
 * it; a chunk no appliance holds comes from the seed only when a reader asks for it. So
 * the seed sends the cluster the chunks its VMs read and no speculative ones (the
 * product's promise: a boot storm costs the seed one copy of the bytes read). A reader
 * that joins such a fill clears peer_only and sets peer_abort, which ends the holder
 * phase under way: that phase had the readahead's deadline (30 s), and holders that
 * stall would keep the reader past its own. The fill goes on as the reader's demand
 * fill, on the reader's deadline: a peer phase of half its time left, then the lease and
 * the seed.
 * A standalone appliance has no other source and reads ahead from the seed.
 */
#define FILL_NO_PEER 2 /* fill_run: a peer_only fill found no peer */
/*
 * Peer-only readahead costs the seed nothing, so its window (peer_readahead_chunks) is
 * wider: a reader with several reads in flight keeps that many chunks in demand fills
 * already, and a window no wider than its queue depth never runs ahead of it (a 1 MiB x
 * 8 initiator over 1 MiB chunks: tests/rack/peer_bench.py). The ramp is the same.
 */
#define RA_PEER_DEFAULT 16
#define LOG_WINDOW_NS  (10ULL * 1000000000ULL)
#define LOG_BURST      5 /* warnings per window; the rest are counted and summarised */

const double fetcher_latency_bounds[16] = {
	0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
	0.25,	0.5,   1.0,    2.5,   5.0,  10.0,  30.0, __builtin_inf(),
};

enum fill_queue { Q_NONE, Q_DEMAND, Q_BACKGROUND };

struct fill {
	struct chunk_hash h;
	uint32_t len;
	uint64_t start_ns;
	uint64_t deadline_ns; /* latest deadline of any waiter; guarded by f->lock */
	int result;
	bool done;
	bool background; /* running on a background slot */
	bool peer_only;  /* readahead in a cluster: from a peer or not at all (see RA_MIN_RUN) */
	atomic_bool peer_abort; /* set with peer_only cleared: the peer-only call ends */
	enum fill_queue queued;
	unsigned refs;	     /* waiters + 1 while in the table */
	pthread_cond_t cond; /* broadcast when done */
	struct fill *hnext;
	TAILQ_ENTRY(fill) q;
};
TAILQ_HEAD(fill_list, fill);

struct ra_stream {
	uint64_t last; /* last chunk index seen */
	uint64_t next; /* first index not yet queued for readahead */
	uint64_t used; /* LRU stamp */
	unsigned run;  /* consecutive forward accesses */
};

struct ra_image {
	const struct manifest *m;
	struct ra_stream s[RA_STREAMS];
	struct ra_image *next;
};

struct ratelimit {
	uint64_t window_start;
	unsigned n;
	uint64_t suppressed;
};

struct fetcher {
	struct fetcher_opts o;
	struct chunkstore *store;
	struct seed *seed;
	pthread_mutex_t lock;	  /* everything below */
	pthread_condattr_t cattr; /* CLOCK_MONOTONIC */
	pthread_cond_t work;	  /* queues changed or stopping */
	pthread_cond_t stop;	  /* stopping (wakes workers sleeping in backoff) */
	bool stopping;
	struct fill *table[FILL_BUCKETS];
	struct fill_list demand, background;
	unsigned nbackground; /* queued background fills */
	unsigned bg_running, bg_limit;
	struct fetcher_peer_ops peer;
	bool have_peer;
	struct fetcher_stats st;
	struct ra_image *images;
	uint64_t ra_clock;
	struct ratelimit rl_corrupt, rl_transport, rl_gave_up, rl_store; /* a budget per kind */
	pthread_t *threads;
	unsigned nthreads;
};

/* ---- small helpers ---------------------------------------------------------------- */

static void deadline_to_ts(uint64_t ns, struct timespec *ts)
{
	ts->tv_sec = (time_t)(ns / 1000000000ULL);
	ts->tv_nsec = (long)(ns % 1000000000ULL);
}

static unsigned fill_bucket(const struct chunk_hash *h)
{
	uint32_t v;

	memcpy(&v, h->b, sizeof(v));
	return v % FILL_BUCKETS;
}

static void record_latency(struct fetcher *f, enum fetch_source src, uint64_t ns)
{
	double s = (double)ns / 1e9;
	unsigned i = 0;

	while (i < 15 && s > fetcher_latency_bounds[i])
		i++;
	f->st.latency_count[src][i]++;
	f->st.latency_sum[src] += s;
}

/*
 * Warnings about degraded paths, at most LOG_BURST per window and kind so a dead seed
 * under a read storm does not flood the journal (nor hide a corrupt object behind a
 * storm of timeouts); the count of those held back is reported with the next one that
 * gets through. Called with f->lock held.
 */
static bool warn_allowed(struct ratelimit *rl, uint64_t *suppressed)
{
	uint64_t now = now_ns();

	if (now - rl->window_start >= LOG_WINDOW_NS) {
		rl->window_start = now;
		rl->n = 0;
	}
	if (rl->n >= LOG_BURST) {
		rl->suppressed++;
		return false;
	}
	rl->n++;
	*suppressed = rl->suppressed;
	rl->suppressed = 0;
	return true;
}

static const char *err_name(int err)
{
	switch (err) {
	case -EBADMSG:
		return "corrupt";
	case -EMSGSIZE:
		return "wrong size";
	case -EILSEQ:
		return "wrong hash";
	case -EFBIG:
		return "oversized";
	case -ETIMEDOUT:
		return "timed out";
	case -ECONNREFUSED:
		return "connection refused";
	case -EACCES:
		return "access denied";
	case -EKEYREJECTED:
		return "TLS verification failed";
	default:
		return strerror(-err);
	}
}

/* ---- the in-flight table and the queues (f->lock held) ----------------------------- */

static struct fill *fill_lookup(struct fetcher *f, const struct chunk_hash *h)
{
	for (struct fill *fl = f->table[fill_bucket(h)]; fl; fl = fl->hnext)
		if (hash_equal(&fl->h, h))
			return fl;
	return NULL;
}

static void fill_unlink(struct fetcher *f, struct fill *fl)
{
	struct fill **pp = &f->table[fill_bucket(&fl->h)];

	while (*pp != fl)
		pp = &(*pp)->hnext;
	*pp = fl->hnext;
	f->st.inflight--;
}

static struct fill *fill_new(struct fetcher *f, const struct chunk_hash *h, uint32_t len,
			     uint64_t deadline_ns)
{
	struct fill *fl = calloc(1, sizeof(*fl));
	unsigned b = fill_bucket(h);

	if (!fl)
		return NULL;
	fl->h = *h;
	fl->len = len;
	fl->start_ns = now_ns();
	fl->deadline_ns = deadline_ns;
	fl->refs = 1;
	atomic_init(&fl->peer_abort, false);
	pthread_cond_init(&fl->cond, &f->cattr);
	fl->hnext = f->table[b];
	f->table[b] = fl;
	f->st.inflight++;
	return fl;
}

static void fill_unref(struct fill *fl)
{
	if (--fl->refs > 0)
		return;
	pthread_cond_destroy(&fl->cond);
	free(fl);
}

static void enqueue(struct fetcher *f, struct fill *fl, enum fill_queue q)
{
	if (q == Q_DEMAND) {
		TAILQ_INSERT_TAIL(&f->demand, fl, q);
	} else {
		TAILQ_INSERT_TAIL(&f->background, fl, q);
		f->nbackground++;
	}
	fl->queued = q;
	pthread_cond_signal(&f->work);
}

/* A background fill that a caller now blocks on jumps to the demand queue. */
static void promote(struct fetcher *f, struct fill *fl)
{
	if (fl->queued != Q_BACKGROUND)
		return;
	TAILQ_REMOVE(&f->background, fl, q);
	f->nbackground--;
	TAILQ_INSERT_TAIL(&f->demand, fl, q);
	fl->queued = Q_DEMAND;
	pthread_cond_signal(&f->work);
}

/* Publishes a fill's outcome (invariant 2: unlink and result in one critical section). */
static void fill_complete(struct fetcher *f, struct fill *fl, int result, enum fetch_source src)
{
	fill_unlink(f, fl);
	fl->result = result;
	fl->done = true;
	if (result == 0) {
		f->st.fetches[src]++;
		f->st.bytes[src] += fl->len;
		record_latency(f, src, now_ns() - fl->start_ns);
	}
	pthread_cond_broadcast(&fl->cond);
	fill_unref(fl);
}

/* ---- one fill, run by a worker ----------------------------------------------------- */

/* A worker's buffers are hugebufs: mapped once, with one fault per 2 MiB, and kept. */
struct worker_ctx {
	struct fetcher *f;
	struct hugebuf chunk; /* the chunk, as received from a peer or decompressed */
	struct hugebuf rx;    /* the seed's compressed object */
	unsigned seed;        /* rand_r state for backoff jitter */
};

/* Sleeps for the backoff before the next attempt; false when the fill must end now
 * (deadline too close or stopping). Called and returns with f->lock held. */
static bool backoff_wait(struct worker_ctx *w, struct fill *fl, uint64_t *backoff_ms)
{
	struct fetcher *f = w->f;
	uint64_t now = now_ns(), left, sleep_ns, until;
	struct timespec ts;

	/* The next attempt must start before the deadline, with a little time to run. */
	if (f->stopping || now + 20 * 1000000ULL >= fl->deadline_ns)
		return false;
	left = fl->deadline_ns - now;
	/* Jitter in [b/2, b] spreads the retries of many appliances after a seed outage. */
	sleep_ns =
		(*backoff_ms / 2 + (uint64_t)rand_r(&w->seed) % (*backoff_ms / 2 + 1)) * 1000000ULL;
	/* A backoff that would overshoot is cut short once, for a last attempt just before
	 * the deadline (halving instead would fire a burst of attempts near the end). */
	sleep_ns = MIN(sleep_ns, left - 10 * 1000000ULL);
	*backoff_ms = MIN(*backoff_ms * 2, f->o.retry_max_ms);
	until = now + sleep_ns;
	deadline_to_ts(until, &ts);
	while (!f->stopping && now_ns() < until)
		if (pthread_cond_timedwait(&f->stop, &f->lock, &ts) == ETIMEDOUT)
			break;
	if (f->stopping)
		return false;
	f->st.retries++;
	return true;
}

/* Tries the peer hook; 0 when the chunk is now in the store. Lock not held. *leased is
 * set when the hook was asked without FETCHER_PEER_NO_LEASE. */
static int try_peer(struct worker_ctx *w, struct fill *fl, uint64_t deadline_ns,
		    unsigned flags, bool *leased)
{
	struct fetcher *f = w->f;
	struct fetcher_peer_ops peer;
	bool have;
	int r;

	pthread_mutex_lock(&f->lock);
	peer = f->peer;
	have = f->have_peer;
	pthread_mutex_unlock(&f->lock);
	if (!have)
		return -ENOENT;
	if (!(flags & FETCHER_PEER_NO_LEASE))
		*leased = true;
	r = peer.fetch(peer.arg, &fl->h, w->chunk.p, fl->len, deadline_ns, flags,
		       (flags & FETCHER_PEER_NO_LEASE) ? &fl->peer_abort : NULL);
	if (r == 0 || r == -ENOENT)
		return r;
	if (r == -ECANCELED) /* fetcher_stop: not the peer's failure */
		return -ESHUTDOWN;
	/* Our store is full, or the time the hook was given ran out (a lease wait on another
	 * node's seed fetch), or a reader joined a peer-only fill: no peer failed. A holder
	 * that did (a timeout included) is counted by the hook, which then answers -ENOENT
	 * or one of these. */
	if (r == -ENOSPC || r == -ETIMEDOUT || r == -EINTR)
		return r;
	pthread_mutex_lock(&f->lock);
	f->st.failures[FETCH_SRC_PEER]++;
	if (r == -EILSEQ || r == -EBADMSG || r == -EMSGSIZE)
		f->st.bad_hash[FETCH_SRC_PEER]++;
	pthread_mutex_unlock(&f->lock);
	return r;
}

/* One seed attempt: 0 stored, 1 retry, <0 final error. Lock not held. */
static int try_seed(struct worker_ctx *w, struct fill *fl)
{
	struct fetcher *f = w->f;
	char hex[HASH_HEX_LEN + 1];
	uint64_t supp = 0;
	int r;

	/*
	 * The request is bounded by request_timeout_ms, not by the deadline: a transfer that
	 * has started may finish after its waiters have given up, so the chunk is in the
	 * store when the command is retried (and a caller that waits in short slices does
	 * not cut every slow transfer short). Waiters never wait past their own deadlines.
	 */
	r = seed_get_chunk(f->seed, &fl->h, w->chunk.p, fl->len, &w->rx, 0);
	if (r == 0) {
		r = chunkstore_insert(f->store, &fl->h, w->chunk.p, fl->len);
		if (r == 0)
			return 0;
		/* a full or failing store fails every fill of a read storm: log a sample */
		pthread_mutex_lock(&f->lock);
		if (warn_allowed(&f->rl_store, &supp)) {
			hash_to_hex(&fl->h, hex);
			log_error("fetcher: cannot store chunk %s: %s (%lu similar suppressed)",
				  hex, strerror(-r), (unsigned long)supp);
		}
		pthread_mutex_unlock(&f->lock);
		return r;
	}
	if (r == -ECANCELED)
		return -ESHUTDOWN;
	hash_to_hex(&fl->h, hex);
	pthread_mutex_lock(&f->lock);
	f->st.failures[FETCH_SRC_SEED]++;
	if (seed_err_is_corrupt(r))
		f->st.bad_hash[FETCH_SRC_SEED]++;
	if (r == -ENOENT)
		f->st.not_found++;
	if (warn_allowed(seed_err_is_corrupt(r) ? &f->rl_corrupt : &f->rl_transport, &supp)) {
		if (r == -ENOENT)
			log_warn("seed: chunk %s not found at %s, giving up (%lu similar "
				 "suppressed)",
				 hex, seed_url(f->seed), (unsigned long)supp);
		else
			log_warn("seed: chunk %s %s from %s, retrying (%lu similar suppressed)",
				 hex, err_name(r), seed_url(f->seed), (unsigned long)supp);
	}
	pthread_mutex_unlock(&f->lock);
	/* A repository that lacks a chunk its manifest names is broken; waiting won't fix
	 * it, and the caller deserves a prompt error rather than a timeout. */
	if (r == -ENOENT)
		return -EIO;
	return 1;
}

/* A fill's deadline and peer_only flag, which joining readers change (under f->lock). */
static bool fill_peer_only(struct fetcher *f, struct fill *fl, uint64_t *deadline)
{
	bool po;

	pthread_mutex_lock(&f->lock);
	po = fl->peer_only;
	if (deadline)
		*deadline = fl->deadline_ns;
	pthread_mutex_unlock(&f->lock);
	return po;
}

static int fill_attempts(struct worker_ctx *w, struct fill *fl, enum fetch_source *src,
			 bool *leased)
{
	struct fetcher *f = w->f;
	uint64_t backoff = f->o.retry_initial_ms, deadline;
	bool po;
	int r;

	for (;;) {
		po = fill_peer_only(f, fl, &deadline);
		if (now_ns() >= deadline)
			return -ETIMEDOUT;
		/* Another fill may have completed between our caller's check and now. */
		if (chunkstore_contains(f->store, &fl->h)) {
			*src = FETCH_SRC_LOCAL;
			return 0;
		}
		r = try_peer(w, fl, deadline, po ? FETCHER_PEER_NO_LEASE : 0, leased);
		if (r == 0) {
			*src = FETCH_SRC_PEER;
			return 0;
		}
		if (r == -ESHUTDOWN)
			return r;
		if (po) {
			if (fill_peer_only(f, fl, NULL))
				return FILL_NO_PEER;
			/* a reader joined (and ended the call with peer_abort, -EINTR): ask
			 * again as its fill, with half its time left and the seed's lease */
			continue;
		}
		/* The peer phase ran out of the deadline it was given (a lease wait). The seed
		 * now would be an unleased second copy of what the lease holder is fetching,
		 * for nobody: unless a reader that joined since moved the deadline, the fill
		 * ends here, and a retry finds the chunk from the holder. */
		if (r == -ETIMEDOUT)
			continue;
		if (r == -ENOSPC) /* our store is full: the seed's copy would not fit either */
			return r;
		r = try_seed(w, fl);
		if (r == 0) {
			*src = FETCH_SRC_SEED;
			return 0;
		}
		if (r < 0)
			return r;
		pthread_mutex_lock(&f->lock);
		r = backoff_wait(w, fl, &backoff) ? 0 : f->stopping ? -ESHUTDOWN : -ETIMEDOUT;
		pthread_mutex_unlock(&f->lock);
		if (r)
			return r;
	}
}

static int fill_run(struct worker_ctx *w, struct fill *fl, enum fetch_source *src)
{
	struct fetcher *f = w->f;
	struct fetcher_peer_ops peer;
	bool leased = false;
	int r;

	/* try_peer and try_seed receive the chunk into w->chunk. */
	r = hugebuf_reserve(&w->chunk, fl->len);
	if (r)
		return r;
	r = fill_attempts(w, fl, src, &leased);
	if (r < 0 && leased) {
		bool have;

		pthread_mutex_lock(&f->lock);
		peer = f->peer;
		have = f->have_peer; /* cleared by peering_stop: the directory is left */
		pthread_mutex_unlock(&f->lock);
		if (have && peer.abandon)
			peer.abandon(peer.arg, &fl->h);
	}
	return r;
}

static void warn_gave_up(struct fetcher *f, struct fill *fl)
{
	char hex[HASH_HEX_LEN + 1];
	uint64_t supp;

	if (!warn_allowed(&f->rl_gave_up, &supp))
		return;
	hash_to_hex(&fl->h, hex);
	log_warn("fetcher: chunk %s not obtained within its deadline (%.1f s)%s (%lu similar "
		 "suppressed)",
		 hex, (double)(now_ns() - fl->start_ns) / 1e9,
		 fl->background ? " by a background fill" : "", (unsigned long)supp);
}

/* Next fill for a worker, or NULL when stopping. f->lock held. */
static struct fill *next_fill(struct fetcher *f)
{
	struct fill *fl;

	for (;;) {
		if (f->stopping)
			return NULL;
		fl = TAILQ_FIRST(&f->demand);
		if (fl) {
			TAILQ_REMOVE(&f->demand, fl, q);
			break;
		}
		fl = TAILQ_FIRST(&f->background);
		if (fl && f->bg_running < f->bg_limit) {
			TAILQ_REMOVE(&f->background, fl, q);
			f->nbackground--;
			fl->background = true;
			f->bg_running++;
			break;
		}
		pthread_cond_wait(&f->work, &f->lock);
	}
	fl->queued = Q_NONE;
	return fl;
}

static void *worker_main(void *arg)
{
	struct worker_ctx w = {.f = arg};
	struct fetcher *f = arg;
	enum fetch_source src = FETCH_SRC_SEED;
	struct fill *fl;
	int r;

	w.seed = (unsigned)now_ns() ^ (unsigned)(uintptr_t)&w;
	pthread_mutex_lock(&f->lock);
	while ((fl = next_fill(f)) != NULL) {
		do {
			pthread_mutex_unlock(&f->lock);
			r = fill_run(&w, fl, &src);
			pthread_mutex_lock(&f->lock);
			/* else a reader joined after fill_run gave up: fetch it for the reader */
		} while (r == FILL_NO_PEER && !fl->peer_only);
		if (r == FILL_NO_PEER) {
			f->st.readahead_no_peer++;
			r = -ENOENT;
		}
		if (fl->background) {
			f->bg_running--;
			pthread_cond_signal(&f->work);
		}
		if (r == -ETIMEDOUT)
			warn_gave_up(f, fl);
		fill_complete(f, fl, r, src);
	}
	pthread_mutex_unlock(&f->lock);
	hugebuf_release(&w.chunk);
	hugebuf_release(&w.rx);
	return NULL;
}

/* ---- public API ------------------------------------------------------------------ */

int fetcher_create(const struct fetcher_opts *o, struct fetcher **out)
{
	struct seed_opts so = {0};
	struct fetcher *f;
	int ret;

	if (!o || !o->store || !o->seed_url)
		return -EINVAL;
	f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	f->o = *o;
	f->store = o->store;
	if (!f->o.workers)
		f->o.workers = 8;
	if (!f->o.retry_initial_ms)
		f->o.retry_initial_ms = 100;
	if (!f->o.retry_max_ms)
		f->o.retry_max_ms = 2000;
	f->o.retry_max_ms = MAX(f->o.retry_max_ms, f->o.retry_initial_ms);
	if (!f->o.request_timeout_ms)
		f->o.request_timeout_ms = 10000;
	if (!f->o.prefetch_queue)
		f->o.prefetch_queue = 256;
	if (!f->o.prefetch_timeout_ms)
		f->o.prefetch_timeout_ms = 30000;
	if (!f->o.readahead_chunks)
		f->o.readahead_chunks = 4;
	if (!f->o.peer_readahead_chunks)
		f->o.peer_readahead_chunks = MAX(RA_PEER_DEFAULT, f->o.readahead_chunks);
	if (f->o.no_readahead)
		f->o.readahead_chunks = 0;
	f->bg_limit = f->o.workers > 1 ? f->o.workers - 1 : 1;
	pthread_mutex_init(&f->lock, NULL);
	pthread_condattr_init(&f->cattr);
	pthread_condattr_setclock(&f->cattr, CLOCK_MONOTONIC);
	pthread_cond_init(&f->work, &f->cattr);
	pthread_cond_init(&f->stop, &f->cattr);
	TAILQ_INIT(&f->demand);
	TAILQ_INIT(&f->background);
	so.url = o->seed_url;
	so.request_timeout_ms = f->o.request_timeout_ms;
	so.connect_timeout_ms = o->connect_timeout_ms;
	so.ca_file = o->seed_ca_file;
	ret = seed_open(&so, &f->seed);
	if (ret)
		goto fail;
	f->threads = calloc(f->o.workers, sizeof(*f->threads));
	if (!f->threads) {
		ret = -ENOMEM;
		goto fail;
	}
	for (; f->nthreads < f->o.workers; f->nthreads++) {
		ret = -pthread_create(&f->threads[f->nthreads], NULL, worker_main, f);
		if (ret)
			goto fail;
	}
	*out = f;
	return 0;
fail:
	fetcher_destroy(f);
	return ret;
}

void fetcher_stop(struct fetcher *f)
{
	struct fetcher_peer_ops peer;
	bool have;

	pthread_mutex_lock(&f->lock);
	f->stopping = true;
	peer = f->peer;
	have = f->have_peer;
	pthread_cond_broadcast(&f->work);
	pthread_cond_broadcast(&f->stop);
	for (unsigned b = 0; b < FILL_BUCKETS; b++)
		for (struct fill *fl = f->table[b]; fl; fl = fl->hnext)
			pthread_cond_broadcast(&fl->cond);
	pthread_mutex_unlock(&f->lock);
	if (f->seed)
		seed_cancel(f->seed);
	if (have && peer.cancel)
		peer.cancel(peer.arg);
}

void fetcher_destroy(struct fetcher *f)
{
	struct fill *fl;

	if (!f)
		return;
	fetcher_stop(f);
	for (unsigned i = 0; i < f->nthreads; i++)
		pthread_join(f->threads[i], NULL);
	/* Fills nobody ran: callers are gone by contract, so only the table holds them. */
	while ((fl = TAILQ_FIRST(&f->demand)) || (fl = TAILQ_FIRST(&f->background))) {
		TAILQ_REMOVE(fl->queued == Q_DEMAND ? &f->demand : &f->background, fl, q);
		fill_complete(f, fl, -ESHUTDOWN, FETCH_SRC_SEED);
	}
	while (f->images) {
		struct ra_image *im = f->images;

		f->images = im->next;
		free(im);
	}
	seed_close(f->seed);
	free(f->threads);
	pthread_cond_destroy(&f->work);
	pthread_cond_destroy(&f->stop);
	pthread_condattr_destroy(&f->cattr);
	pthread_mutex_destroy(&f->lock);
	free(f);
}

int fetcher_fetch(struct fetcher *f, const struct chunk_hash *h, uint32_t len, uint64_t deadline_ns)
{
	uint64_t t0 = now_ns();
	struct timespec ts;
	struct fill *fl;
	int ret;

	if (len == 0 || len > CHUNK_SIZE_MAX)
		return -EINVAL;
	if (chunkstore_contains(f->store, h)) {
		pthread_mutex_lock(&f->lock);
		f->st.fetches[FETCH_SRC_LOCAL]++;
		f->st.bytes[FETCH_SRC_LOCAL] += len;
		record_latency(f, FETCH_SRC_LOCAL, now_ns() - t0);
		pthread_mutex_unlock(&f->lock);
		return 0;
	}
	pthread_mutex_lock(&f->lock);
	if (f->stopping) {
		ret = -ESHUTDOWN;
		goto out;
	}
	fl = fill_lookup(f, h);
	if (fl) {
		f->st.coalesced++;
		if (fl->peer_only) {
			/* The readahead's deadline bounded only its own holder phase, which
			 * ends now: from here the fill is this reader's, on its deadline. */
			fl->peer_only = false;
			fl->deadline_ns = deadline_ns;
			atomic_store(&fl->peer_abort, true);
		} else {
			fl->deadline_ns = MAX(fl->deadline_ns, deadline_ns);
		}
		promote(f, fl);
	} else {
		fl = fill_new(f, h, len, deadline_ns);
		if (!fl) {
			ret = -ENOMEM;
			goto out;
		}
		enqueue(f, fl, Q_DEMAND);
	}
	fl->refs++;
	deadline_to_ts(deadline_ns, &ts);
	while (!fl->done && !f->stopping)
		if (pthread_cond_timedwait(&fl->cond, &f->lock, &ts) == ETIMEDOUT && !fl->done)
			break;
	ret = fl->done ? fl->result : f->stopping ? -ESHUTDOWN : -ETIMEDOUT;
	if (ret == -ETIMEDOUT)
		f->st.timeouts++;
	fill_unref(fl);
out:
	pthread_mutex_unlock(&f->lock);
	return ret;
}

/* Queues a background fill unless one exists or the queue is full. f->lock held. */
static void prefetch_locked(struct fetcher *f, const struct chunk_hash *h, uint32_t len,
			    bool peer_only)
{
	struct fill *fl;

	if (f->stopping || fill_lookup(f, h))
		return;
	if (f->nbackground >= f->o.prefetch_queue) {
		f->st.prefetch_dropped++;
		return;
	}
	fl = fill_new(f, h, len, now_ns() + f->o.prefetch_timeout_ms * 1000000ULL);
	if (!fl) {
		f->st.prefetch_dropped++;
		return;
	}
	fl->peer_only = peer_only;
	f->st.prefetches++;
	enqueue(f, fl, Q_BACKGROUND);
}

void fetcher_prefetch(struct fetcher *f, const struct chunk_hash *h, uint32_t len)
{
	if (len == 0 || len > CHUNK_SIZE_MAX || chunkstore_contains(f->store, h))
		return;
	pthread_mutex_lock(&f->lock);
	prefetch_locked(f, h, len, false);
	pthread_mutex_unlock(&f->lock);
}

/* ---- readahead ------------------------------------------------------------------- */

static struct ra_image *ra_find(struct fetcher *f, const struct manifest *m, bool create)
{
	struct ra_image *im;

	for (im = f->images; im; im = im->next)
		if (im->m == m)
			return im;
	if (!create)
		return NULL;
	im = calloc(1, sizeof(*im));
	if (!im)
		return NULL;
	im->m = m;
	im->next = f->images;
	f->images = im;
	return im;
}

/* True when every chunk in [from, to) is a zero chunk (an empty range included), looking
 * at RA_SCAN_FACTOR chunks at most. */
static bool ra_zero_gap(const struct manifest *m, uint64_t from, uint64_t to)
{
	if (to <= from)
		return true;
	if (to - from > RA_SCAN_FACTOR)
		return false;
	for (uint64_t i = from; i < to; i++)
		if (!manifest_chunk_is_zero(m, i))
			return false;
	return true;
}

/*
 * Updates the stream that idx continues and returns the index range [*from, *to) to
 * queue. An access continues a stream when it is the stream's chunk again, a little
 * behind it (RA_BEHIND), the next one, or any chunk up to the first one readahead has
 * not queued yet: a reader that reports only misses (no HIT, fetch_proto.h) is seen
 * jumping forward over the chunks readahead already fetched. Zero chunks are never
 * reported (the module serves them itself), so a jump over zero chunks alone continues
 * a stream too: a disk read in order after a run of them is still one stream.
 */
static bool ra_update(struct fetcher *f, struct ra_image *im, uint64_t idx, uint64_t *from,
		      uint64_t *to)
{
	const struct manifest *m = im->m;
	uint64_t end, scan_limit;
	struct ra_stream *s = NULL, *lru = &im->s[0];
	unsigned want = 0, window, cap;

	/* A stream idx continues forward first; only then one it is a little behind. */
	for (unsigned i = 0; i < RA_STREAMS && !s; i++) {
		struct ra_stream *c = &im->s[i];

		if (c->used && idx >= c->last && ra_zero_gap(m, MAX(c->last + 1, c->next), idx))
			s = c;
		if (c->used < lru->used)
			lru = c;
	}
	for (unsigned i = 0; i < RA_STREAMS && !s; i++) {
		struct ra_stream *c = &im->s[i];

		if (c->used && idx < c->last && idx + RA_BEHIND >= c->last)
			s = c;
	}
	if (!s) {
		s = lru;
		*s = (struct ra_stream){.last = idx, .next = idx + 1, .run = 1};
	} else if (idx > s->last) {
		s->run++;
		s->last = idx;
	}
	s->used = ++f->ra_clock;
	if (s->run < RA_MIN_RUN)
		return false;
	cap = f->have_peer ? f->o.peer_readahead_chunks : f->o.readahead_chunks;
	window = s->run - RA_MIN_RUN >= 31 ? cap : MIN(cap, 1u << (s->run - RA_MIN_RUN));
	/* The next `window` non-zero chunks after idx; zero chunks are free. */
	scan_limit = MIN(m->nchunks, idx + 1 + (uint64_t)window * RA_SCAN_FACTOR);
	for (end = idx + 1; end < scan_limit && want < window; end++)
		if (!manifest_chunk_is_zero(m, end))
			want++;
	*from = MAX(s->next, idx + 1);
	*to = end;
	if (*from >= *to)
		return false;
	s->next = end;
	return true;
}

void fetcher_note_access(struct fetcher *f, const struct manifest *m, uint64_t idx)
{
	uint64_t from, to;
	struct ra_image *im;
	bool go;

	if (!f->o.readahead_chunks || !m || idx >= m->nchunks)
		return;
	pthread_mutex_lock(&f->lock);
	im = ra_find(f, m, true);
	go = im && ra_update(f, im, idx, &from, &to);
	pthread_mutex_unlock(&f->lock);
	if (!go)
		return;
	for (uint64_t i = from; i < to; i++) {
		if (manifest_chunk_is_zero(m, i) || chunkstore_contains(f->store, &m->hashes[i]))
			continue;
		pthread_mutex_lock(&f->lock);
		uint64_t before = f->st.prefetches;
		prefetch_locked(f, &m->hashes[i], manifest_chunk_len(m, i), f->have_peer);
		f->st.readahead += f->st.prefetches - before;
		pthread_mutex_unlock(&f->lock);
	}
}

void fetcher_forget_image(struct fetcher *f, const struct manifest *m)
{
	struct ra_image **pp, *im;

	pthread_mutex_lock(&f->lock);
	for (pp = &f->images; *pp; pp = &(*pp)->next) {
		if ((*pp)->m == m) {
			im = *pp;
			*pp = im->next;
			free(im);
			break;
		}
	}
	pthread_mutex_unlock(&f->lock);
}

void fetcher_get_stats(struct fetcher *f, struct fetcher_stats *st)
{
	struct seed_stats ss;

	seed_get_stats(f->seed, &ss);
	pthread_mutex_lock(&f->lock);
	*st = f->st;
	pthread_mutex_unlock(&f->lock);
	st->seed_requests = ss.requests;
	st->seed_connects = ss.connects;
}

void fetcher_set_peer_ops(struct fetcher *f, const struct fetcher_peer_ops *ops)
{
	pthread_mutex_lock(&f->lock);
	if (ops && ops->fetch) {
		f->peer = *ops;
		f->have_peer = true;
	} else {
		f->have_peer = false;
	}
	pthread_mutex_unlock(&f->lock);
}
