/*
 * test_fetcher.c - the fetcher and the seed client against directory repositories and
 * a closed loopback port (no server needed): single flight, deadlines, hash checks,
 * readahead, the background queue bound and the peer hook.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

#include <cmocka.h>

#include "cache/chunkstore.h"
#include "cluster/fetcher.h"
#include "cluster/seed.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/util.h"
#include "images/manifest.h"
#include "tests/unit/seed_fixture.h"

#define CHUNK (64 * 1024)
#define MS    1000000ULL

struct env {
	char root[256];
	char repo[300];
	char store_dir[300];
	struct chunkstore *cs;
	struct fetcher *f;
};

/* ---- repository crafting ---------------------------------------------------------- */

static void fill_random(void *buf, size_t len, unsigned seed)
{
	uint8_t *p = buf;

	for (size_t i = 0; i < len; i++) {
		seed = seed * 1103515245u + 12345u;
		p[i] = (uint8_t)(seed >> 16);
	}
}

static void put_chunk(const char *repo, const void *data, size_t len, struct chunk_hash *h)
{
	hash_compute(data, len, h);
	seed_put_chunk_as(repo, h, data, len);
}

static void make_chunk(const char *repo, unsigned seed, struct chunk_hash *h, void *data)
{
	fill_random(data, CHUNK, seed);
	put_chunk(repo, data, CHUNK, h);
}

/* ---- fixtures --------------------------------------------------------------------- */

static int env_setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));
	struct chunkstore_opts so = {0};

	assert_non_null(e);
	snprintf(e->root, sizeof(e->root), "/tmp/rd-test-fetcher-XXXXXX");
	assert_non_null(mkdtemp(e->root));
	snprintf(e->repo, sizeof(e->repo), "%s/repo", e->root);
	snprintf(e->store_dir, sizeof(e->store_dir), "%s/store", e->root);
	assert_int_equal(mkdir_p(e->repo, 0755), 0);
	assert_int_equal(mkdir_p(e->store_dir, 0755), 0);
	so.dir = e->store_dir;
	assert_int_equal(chunkstore_open(&so, &e->cs), 0);
	*state = e;
	return 0;
}

static int env_teardown(void **state)
{
	struct env *e = *state;
	char cmd[600];

	/* the tests' peer hooks live on their stacks: unhook before the stop calls cancel,
	 * as peering_stop() does in the daemon */
	if (e->f)
		fetcher_set_peer_ops(e->f, NULL);
	fetcher_destroy(e->f);
	chunkstore_close(e->cs);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", e->root);
	assert_int_equal(system(cmd), 0);
	free(e);
	return 0;
}

static void env_fetcher(struct env *e, const char *url, struct fetcher_opts *o)
{
	struct fetcher_opts d = {0};

	if (!o)
		o = &d;
	o->seed_url = url ? url : e->repo;
	o->store = e->cs;
	if (!o->retry_initial_ms)
		o->retry_initial_ms = 10;
	if (!o->retry_max_ms)
		o->retry_max_ms = 50;
	if (!o->readahead_chunks)
		o->no_readahead = true;
	assert_int_equal(fetcher_create(o, &e->f), 0);
}

static struct fetcher_stats stats(struct env *e)
{
	struct fetcher_stats st;

	fetcher_get_stats(e->f, &st);
	return st;
}

static bool store_has_file(struct env *e, const struct chunk_hash *h)
{
	char path[512];

	chunkstore_path(e->cs, h, path, sizeof(path));
	return access(path, F_OK) == 0;
}

/* The chunk as stored equals data. */
static void assert_stored(struct env *e, const struct chunk_hash *h, const void *data)
{
	char path[512], *buf = NULL;
	size_t len = 0;

	assert_true(chunkstore_contains(e->cs, h));
	chunkstore_path(e->cs, h, path, sizeof(path));
	assert_int_equal(read_file(path, 2 * CHUNK, &buf, &len), 0);
	assert_int_equal(len, CHUNK);
	assert_memory_equal(buf, data, CHUNK);
	free(buf);
}

/* ---- a controllable peer hook ------------------------------------------------------ */

struct peer_ctl {
	pthread_mutex_t lock;
	unsigned calls;
	unsigned no_lease_calls; /* calls with FETCHER_PEER_NO_LEASE */
	unsigned abandons;
	uint64_t sleep_ms; /* each call sleeps this long, then... */
	int rc;		   /* ...returns this (0: inserts data first) */
	struct chunkstore *cs;
	const void *data;
	bool until_cancel;   /* instead: waits (at most 5 s) for the cancel op */
	bool cancelled;
	unsigned cancels;
	bool until_abort;    /* a FETCHER_PEER_NO_LEASE call waits (at most 5 s) for *abort */
	unsigned aborts;     /* ... which then returns -EINTR */
	uint64_t returned_ns; /* when a call last returned */
	pthread_cond_t cond;
};

/* Receives into the worker's buffer (len bytes, written whole) and stores from it, as
 * peers_fetch does. */
static int peer_fetch(void *arg, const struct chunk_hash *h, void *buf, uint32_t len,
		      uint64_t deadline_ns, unsigned flags, const atomic_bool *abort)
{
	struct peer_ctl *p = arg;

	pthread_mutex_lock(&p->lock);
	p->calls++;
	p->no_lease_calls += !!(flags & FETCHER_PEER_NO_LEASE);
	if (p->until_abort && (flags & FETCHER_PEER_NO_LEASE)) {
		uint64_t until = now_ns() + 5000 * MS;
		bool stop = false;

		while (!(stop = abort && atomic_load(abort)) && now_ns() < until) {
			struct timespec ts = {0, 10 * 1000000L};

			pthread_mutex_unlock(&p->lock);
			nanosleep(&ts, NULL);
			pthread_mutex_lock(&p->lock);
		}
		p->aborts += stop;
		pthread_mutex_unlock(&p->lock);
		return stop ? -EINTR : -ENOENT;
	}
	if (p->until_cancel) {
		uint64_t until = now_ns() + 5000 * MS;

		while (!p->cancelled && now_ns() < until) {
			struct timespec ts = {0, 10 * 1000000L};

			pthread_mutex_unlock(&p->lock);
			nanosleep(&ts, NULL);
			pthread_mutex_lock(&p->lock);
		}
		p->returned_ns = now_ns();
		pthread_mutex_unlock(&p->lock);
		return -ECANCELED;
	}
	pthread_mutex_unlock(&p->lock);
	usleep((useconds_t)(p->sleep_ms * 1000));
	if (p->rc == 0) {
		memcpy(buf, p->data, len);
		assert_int_equal(chunkstore_insert(p->cs, h, buf, len), 0);
	}
	return p->rc;
}

static void peer_abandon(void *arg, const struct chunk_hash *h)
{
	struct peer_ctl *p = arg;

	pthread_mutex_lock(&p->lock);
	p->abandons++;
	pthread_mutex_unlock(&p->lock);
}

static void peer_cancel(void *arg)
{
	struct peer_ctl *p = arg;

	pthread_mutex_lock(&p->lock);
	p->cancels++;
	p->cancelled = true;
	pthread_mutex_unlock(&p->lock);
}

static unsigned peer_count(struct peer_ctl *p, const unsigned *field)
{
	unsigned v;

	pthread_mutex_lock(&p->lock);
	v = *field;
	pthread_mutex_unlock(&p->lock);
	return v;
}

static void set_peer(struct env *e, struct peer_ctl *p)
{
	struct fetcher_peer_ops ops = {.arg = p, .fetch = peer_fetch, .abandon = peer_abandon,
				       .cancel = peer_cancel};

	pthread_mutex_init(&p->lock, NULL);
	p->cs = e->cs;
	fetcher_set_peer_ops(e->f, &ops);
}

/* ---- tests -------------------------------------------------------------------------- */

static void test_fetch_from_directory_repo(void **state)
{
	struct env *e = *state;
	static uint8_t data[CHUNK];
	struct chunk_hash h;
	char url[400];

	make_chunk(e->repo, 1, &h, data);
	snprintf(url, sizeof(url), "file://%s", e->repo);
	env_fetcher(e, url, NULL);
	assert_false(chunkstore_contains(e->cs, &h));
	assert_int_equal(fetcher_fetch(e->f, &h, CHUNK, now_ns() + 5000 * MS), 0);
	assert_stored(e, &h, data);
	assert_int_equal(stats(e).fetches[FETCH_SRC_SEED], 1);
	assert_int_equal(stats(e).bytes[FETCH_SRC_SEED], CHUNK);
	/* Second time it is local, and the seed is not asked again. */
	assert_int_equal(fetcher_fetch(e->f, &h, CHUNK, now_ns() + 5000 * MS), 0);
	assert_int_equal(stats(e).fetches[FETCH_SRC_LOCAL], 1);
	assert_int_equal(stats(e).seed_requests, 1);
	assert_int_equal(stats(e).inflight, 0);
}

/* The peer phase spent the fill's deadline (a lease wait on another node's seed fetch):
 * the fill ends there. It went on to an unleased seed GET that nobody waited for, a
 * second seed copy of the chunk the lease holder was fetching. No peer failed either:
 * the fetcher counted the hook's -ETIMEDOUT in failures[peer]. */
static void test_peer_phase_past_the_deadline_starts_no_seed_fetch(void **state)
{
	struct env *e = *state;
	static uint8_t data[CHUNK];
	struct peer_ctl peer = {.sleep_ms = 500, .rc = -ETIMEDOUT};
	struct chunk_hash h;
	uint64_t until;

	make_chunk(e->repo, 9, &h, data);
	env_fetcher(e, NULL, NULL);
	set_peer(e, &peer);
	assert_int_equal(fetcher_fetch(e->f, &h, CHUNK, now_ns() + 300 * MS), -ETIMEDOUT);
	until = now_ns() + 5000 * MS; /* the fill ends after the peer call returns */
	while (stats(e).inflight && now_ns() < until)
		usleep(10000);
	assert_int_equal(stats(e).inflight, 0);
	assert_int_equal(peer.calls, 1);
	assert_int_equal(stats(e).seed_requests, 0);
	assert_int_equal(stats(e).failures[FETCH_SRC_PEER], 0);
	assert_false(chunkstore_contains(e->cs, &h));
	/* a retry (the initiator's, after BUSY) is a new fill with a new deadline */
	peer.rc = -ENOENT;
	peer.sleep_ms = 0;
	assert_int_equal(fetcher_fetch(e->f, &h, CHUNK, now_ns() + 5000 * MS), 0);
	assert_int_equal(stats(e).seed_requests, 1);
}

struct racer {
	struct env *e;
	const struct chunk_hash *h;
	pthread_barrier_t *bar;
	int rc;
	pthread_t tid;
};

static void *race_fetch(void *arg)
{
	struct racer *r = arg;

	pthread_barrier_wait(r->bar);
	r->rc = fetcher_fetch(r->e->f, r->h, CHUNK, now_ns() + 10000 * MS);
	return NULL;
}

static void test_single_flight(void **state)
{
	enum { N = 16 };
	struct env *e = *state;
	static uint8_t data[CHUNK];
	struct peer_ctl peer = {.sleep_ms = 300, .rc = -ENOENT};
	struct racer r[N];
	pthread_barrier_t bar;
	struct chunk_hash h;
	struct fetcher_stats st;

	make_chunk(e->repo, 2, &h, data);
	env_fetcher(e, NULL, NULL);
	/* A slow peer lookup holds the fill open so that every thread finds it in flight. */
	set_peer(e, &peer);
	pthread_barrier_init(&bar, NULL, N);
	for (int i = 0; i < N; i++) {
		r[i] = (struct racer){.e = e, .h = &h, .bar = &bar};
		assert_int_equal(pthread_create(&r[i].tid, NULL, race_fetch, &r[i]), 0);
	}
	for (int i = 0; i < N; i++) {
		pthread_join(r[i].tid, NULL);
		assert_int_equal(r[i].rc, 0);
	}
	st = stats(e);
	assert_int_equal(peer.calls, 1);
	assert_int_equal(st.seed_requests, 1);
	assert_int_equal(st.fetches[FETCH_SRC_SEED], 1);
	assert_int_equal(st.coalesced + st.fetches[FETCH_SRC_LOCAL], N - 1);
	assert_true(st.coalesced >= N / 2);
	assert_stored(e, &h, data);
	pthread_barrier_destroy(&bar);
}

static void *late_fetch(void *arg)
{
	struct racer *r = arg;

	r->rc = fetcher_fetch(r->e->f, r->h, CHUNK, now_ns() + 5000 * MS);
	return NULL;
}

/* A waiter whose deadline passes leaves; the fill goes on for a waiter with more time.
 * The peer phase takes 2 s, so a waiter that stayed for the fill would take that long. */
static void test_waiter_deadline_fill_continues(void **state)
{
	struct env *e = *state;
	static uint8_t data[CHUNK];
	struct peer_ctl peer = {.sleep_ms = 2000, .rc = -ENOENT};
	struct racer late;
	struct chunk_hash h;
	uint64_t t0, el;

	make_chunk(e->repo, 3, &h, data);
	env_fetcher(e, NULL, NULL);
	set_peer(e, &peer);
	t0 = now_ns();
	late = (struct racer){.e = e, .h = &h};
	assert_int_equal(fetcher_fetch(e->f, &h, CHUNK, t0 + 150 * MS), -ETIMEDOUT);
	el = now_ns() - t0;
	assert_true(el >= 150 * MS);
	assert_true(el < 1200 * MS);
	assert_int_equal(stats(e).timeouts, 1);
	assert_int_equal(pthread_create(&late.tid, NULL, late_fetch, &late), 0);
	pthread_join(late.tid, NULL);
	assert_int_equal(late.rc, 0);
	assert_int_equal(peer.calls, 1);
	assert_int_equal(stats(e).coalesced, 1);
	assert_stored(e, &h, data);
}

/* A seed that refuses connections: retried with backoff, error at the deadline. */
static void test_dead_seed_deadline(void **state)
{
	struct env *e = *state;
	static uint8_t data[CHUNK];
	struct chunk_hash h;
	struct fetcher_stats st;
	uint64_t t0, el;

	fill_random(data, CHUNK, 4);
	hash_compute(data, CHUNK, &h);
	/* Port 1 on loopback: nothing listens there, so connect is refused at once. */
	env_fetcher(e, "http://127.0.0.1:1/repo", NULL);
	t0 = now_ns();
	assert_int_equal(fetcher_fetch(e->f, &h, CHUNK, t0 + 400 * MS), -ETIMEDOUT);
	el = now_ns() - t0;
	/* at the deadline, not after more retries (slack for a loaded machine) */
	assert_true(el < 1500 * MS);
	st = stats(e);
	assert_true(st.failures[FETCH_SRC_SEED] >= 2);
	assert_true(st.retries >= 1);
	assert_int_equal(st.fetches[FETCH_SRC_SEED], 0);
	assert_false(store_has_file(e, &h));
}

static void expect_never_stored(struct env *e, const struct chunk_hash *h)
{
	struct fetcher_stats st;
	uint64_t t0 = now_ns();

	assert_int_equal(fetcher_fetch(e->f, h, CHUNK, t0 + 300 * MS), -ETIMEDOUT);
	assert_true(now_ns() - t0 < 1500 * MS);
	st = stats(e);
	assert_true(st.bad_hash[FETCH_SRC_SEED] >= 2); /* retried, each time refused */
	assert_true(st.failures[FETCH_SRC_SEED] >= st.bad_hash[FETCH_SRC_SEED]);
	assert_int_equal(st.fetches[FETCH_SRC_SEED], 0);
	assert_false(chunkstore_contains(e->cs, h));
	assert_false(store_has_file(e, h));
}

/* An object that decompresses cleanly to other bytes than its name says. */
static void test_bad_hash_never_stored(void **state)
{
	struct env *e = *state;
	static uint8_t good[CHUNK], other[CHUNK];
	struct chunk_hash h;

	fill_random(good, CHUNK, 5);
	hash_compute(good, CHUNK, &h);
	fill_random(other, CHUNK, 6);
	seed_put_chunk_as(e->repo, &h, other, CHUNK);
	env_fetcher(e, NULL, NULL);
	expect_never_stored(e, &h);
}

static void test_corrupt_and_wrong_size_never_stored(void **state)
{
	struct env *e = *state;
	static uint8_t good[CHUNK];
	struct chunk_hash h1, h2;
	char junk[1000];

	/* Bytes that are no zstd frame at all. */
	fill_random(good, CHUNK, 7);
	hash_compute(good, CHUNK, &h1);
	fill_random(junk, sizeof(junk), 8);
	seed_write_object(e->repo, &h1, junk, sizeof(junk));
	env_fetcher(e, NULL, NULL);
	expect_never_stored(e, &h1);
	/* A valid frame of the first half of the chunk: wrong size. */
	fill_random(good, CHUNK, 9);
	hash_compute(good, CHUNK, &h2);
	seed_put_chunk_as(e->repo, &h2, good, CHUNK / 2);
	assert_int_equal(fetcher_fetch(e->f, &h2, CHUNK, now_ns() + 200 * MS), -ETIMEDOUT);
	assert_false(store_has_file(e, &h2));
}

static void test_missing_object_is_prompt_error(void **state)
{
	struct env *e = *state;
	static uint8_t data[CHUNK];
	struct chunk_hash h;
	uint64_t t0;

	fill_random(data, CHUNK, 10);
	hash_compute(data, CHUNK, &h);
	env_fetcher(e, NULL, NULL);
	t0 = now_ns();
	assert_int_equal(fetcher_fetch(e->f, &h, CHUNK, t0 + 5000 * MS), -EIO);
	assert_true(now_ns() - t0 < 1000 * MS);
	assert_int_equal(stats(e).not_found, 1);
	assert_int_equal(fetcher_fetch(e->f, &h, 0, t0 + 5000 * MS), -EINVAL);
}

/*
 * A store that cannot take chunks (full, everything pinned) fails every fill of a read
 * storm; the log gets a sample of those errors with a count of the rest, not a line each.
 */
static void test_store_failures_are_logged_sparingly(void **state)
{
	struct env *e = *state;
	struct chunkstore_opts so = {0};
	static uint8_t data[CHUNK];
	struct chunk_hash pinned, h;
	struct chunk_ref *ref;
	char path[400], line[512];
	unsigned lines = 0;
	bool summary = false;
	int saved, fd;
	FILE *log;

	chunkstore_close(e->cs);
	so.dir = e->store_dir;
	so.capacity = CHUNK;
	assert_int_equal(chunkstore_open(&so, &e->cs), 0);
	fill_random(data, CHUNK, 100);
	hash_compute(data, CHUNK, &pinned);
	assert_int_equal(chunkstore_insert(e->cs, &pinned, data, CHUNK), 0);
	assert_int_equal(chunkstore_get(e->cs, &pinned, &ref), 0);
	env_fetcher(e, NULL, NULL);

	snprintf(path, sizeof(path), "%s/stderr", e->root);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	fflush(stderr);
	saved = dup(2);
	assert_true(saved >= 0);
	assert_int_equal(dup2(fd, 2), 2);
	for (unsigned i = 0; i < 12; i++) {
		make_chunk(e->repo, 200 + i, &h, data);
		assert_true(fetcher_fetch(e->f, &h, CHUNK, now_ns() + 2000 * MS) < 0);
	}
	fflush(stderr);
	assert_int_equal(dup2(saved, 2), 2);
	close(saved);
	close(fd);
	chunkstore_put(e->cs, ref);

	log = fopen(path, "r");
	assert_non_null(log);
	while (fgets(line, sizeof(line), log)) {
		if (!strstr(line, "cannot store chunk"))
			continue;
		lines++;
		if (!strstr(line, "(0 similar suppressed)"))
			summary = true;
	}
	fclose(log);
	assert_true(lines >= 1);
	assert_true(lines <= 5);  /* LOG_BURST in fetcher.c */
	assert_false(summary);    /* the burst fits one window: nothing held back is reported yet */
}

static void test_peer_hook_before_seed(void **state)
{
	struct env *e = *state;
	static uint8_t data[CHUNK];
	struct peer_ctl peer = {.rc = 0, .data = data};
	struct chunk_hash h;

	fill_random(data, CHUNK, 11);
	hash_compute(data, CHUNK, &h); /* not in the repository: only the peer has it */
	env_fetcher(e, NULL, NULL);
	peer.data = data;
	set_peer(e, &peer);
	assert_int_equal(fetcher_fetch(e->f, &h, CHUNK, now_ns() + 2000 * MS), 0);
	assert_int_equal(stats(e).fetches[FETCH_SRC_PEER], 1);
	assert_int_equal(stats(e).seed_requests, 0);
	assert_stored(e, &h, data);
}

/* A fill that asked the hook for the seed's lease and then failed gives it back; a full
 * store reported by the hook is final (no seed download that could not be stored). */
static void test_failed_fill_abandons_lease(void **state)
{
	struct env *e = *state;
	static uint8_t data[CHUNK];
	struct peer_ctl peer = {.rc = -ENOENT, .data = data};
	struct chunk_hash h;

	fill_random(data, CHUNK, 12);
	hash_compute(data, CHUNK, &h); /* not in the repository: the seed says 404 */
	env_fetcher(e, NULL, NULL);
	set_peer(e, &peer);
	assert_int_equal(fetcher_fetch(e->f, &h, CHUNK, now_ns() + 2000 * MS), -EIO);
	assert_int_equal(peer_count(&peer, &peer.abandons), 1);
	assert_int_equal(stats(e).seed_requests, 1);
	peer.rc = -ENOSPC;
	assert_int_equal(fetcher_fetch(e->f, &h, CHUNK, now_ns() + 2000 * MS), -ENOSPC);
	assert_int_equal(stats(e).seed_requests, 1);
	assert_int_equal(peer_count(&peer, &peer.abandons), 2);
	/* a fill that succeeds keeps nothing to abandon */
	make_chunk(e->repo, 13, &h, data);
	peer.rc = -ENOENT;
	assert_int_equal(fetcher_fetch(e->f, &h, CHUNK, now_ns() + 2000 * MS), 0);
	assert_int_equal(peer_count(&peer, &peer.abandons), 2);
}

static bool wait_contains(struct env *e, const struct chunk_hash *h, uint64_t ms)
{
	uint64_t end = now_ns() + ms * MS;

	while (now_ns() < end) {
		if (chunkstore_contains(e->cs, h))
			return true;
		usleep(5000);
	}
	return chunkstore_contains(e->cs, h);
}

/* A manifest of nch chunks of CHUNK bytes, each published in e's repository (chunk i from
 * seed + i), except the zero chunks [zero_from, zero_to). */
static struct manifest *test_image(struct env *e, unsigned nch, unsigned seed, unsigned zero_from,
				   unsigned zero_to)
{
	static uint8_t data[CHUNK];
	struct manifest *m;

	assert_int_equal(manifest_new((uint64_t)nch * CHUNK, CHUNK, &m), 0);
	for (unsigned i = 0; i < nch; i++) {
		if (i >= zero_from && i < zero_to)
			continue;
		make_chunk(e->repo, seed + i, &m->hashes[i], data);
		m->zero[i] = 0;
	}
	return m;
}

static void test_readahead_sequential(void **state)
{
	enum { NCH = 16, RA = 3 };
	struct env *e = *state;
	struct fetcher_opts o = {.readahead_chunks = RA};
	struct manifest *m;
	struct fetcher_stats st;

	/* Chunks 3 and 4 are zero: skipped, and not counted in the window. */
	m = test_image(e, NCH, 100, 3, 5);
	env_fetcher(e, NULL, &o);
	/* A random access does not trigger readahead. */
	fetcher_note_access(e->f, m, 10);
	usleep(100000);
	assert_int_equal(stats(e).readahead, 0);
	/* Two forward accesses are not a stream yet (RA_MIN_RUN = 3). */
	for (unsigned i = 0; i < 2; i++) {
		fetcher_note_access(e->f, m, i);
		assert_int_equal(fetcher_fetch(e->f, &m->hashes[i], CHUNK, now_ns() + 2000 * MS),
				 0);
	}
	usleep(100000);
	assert_int_equal(stats(e).readahead, 0);
	/* The third earns a window of one non-zero chunk: 5 (3 and 4 are zero, free). */
	fetcher_note_access(e->f, m, 2);
	assert_true(wait_contains(e, &m->hashes[5], 3000));
	assert_int_equal(stats(e).readahead, 1);
	/* The reader skips the prefetched chunk (no miss) and continues at 6: window 2. */
	fetcher_note_access(e->f, m, 6);
	assert_true(wait_contains(e, &m->hashes[7], 3000));
	assert_true(wait_contains(e, &m->hashes[8], 3000));
	assert_int_equal(stats(e).readahead, 3);
	/* Then at 9: the window would be 4, capped at readahead_chunks (RA = 3). */
	fetcher_note_access(e->f, m, 9);
	assert_true(wait_contains(e, &m->hashes[12], 3000));
	st = stats(e);
	assert_int_equal(st.readahead, 3 + RA);
	usleep(100000);
	assert_false(chunkstore_contains(e->cs, &m->hashes[13]));
	fetcher_forget_image(e->f, m);
	manifest_free(m);
}

/*
 * Zero chunks are never reported (the module serves them), so a reader reading in order
 * past a run of them is seen jumping over it: that jump continues its stream. A jump over
 * a non-zero chunk does not: that reader skipped data, and a new stream starts.
 */
static void test_readahead_continues_over_zero_chunks(void **state)
{
	enum { NCH = 24, RA = 4 };
	struct env *e = *state;
	struct fetcher_opts o = {.readahead_chunks = RA};
	struct manifest *m;

	m = test_image(e, NCH, 500, 1, 7); /* zero chunks 1-6 */
	env_fetcher(e, NULL, &o);
	/* 0, then 7 over the zero run, then 8: the third forward access of one stream. */
	fetcher_note_access(e->f, m, 0);
	fetcher_note_access(e->f, m, 7);
	usleep(50000);
	assert_int_equal(stats(e).readahead, 0);
	fetcher_note_access(e->f, m, 8);
	assert_true(wait_contains(e, &m->hashes[9], 3000));
	assert_int_equal(stats(e).readahead, 1);
	/* 12 skips 10 and 11 (data; 10 was not queued): a new stream, no readahead. */
	fetcher_note_access(e->f, m, 12);
	fetcher_note_access(e->f, m, 13);
	usleep(100000);
	assert_int_equal(stats(e).readahead, 1);
	assert_false(chunkstore_contains(e->cs, &m->hashes[14]));
	fetcher_forget_image(e->f, m);
	manifest_free(m);
}

/*
 * A reader with several reads in flight reports them out of order (HIT lines from many
 * tgtd threads): accesses a little behind a stream belong to it, so they neither reset
 * it nor push it out of the table, and the next forward access keeps the window.
 */
static void test_readahead_out_of_order(void **state)
{
	enum { NCH = 24, RA = 4 };
	struct env *e = *state;
	struct fetcher_opts o = {.readahead_chunks = RA};
	struct manifest *m;
	uint64_t before;

	m = test_image(e, NCH, 300, 0, 0);
	env_fetcher(e, NULL, &o);
	for (unsigned i = 0; i <= 6; i++)
		fetcher_note_access(e->f, m, i);
	/* Runs 3..7 queued 3, 4-5, 6-9, 10 (window 1, 2, 4, 4): through chunk 10. */
	assert_true(wait_contains(e, &m->hashes[10], 3000));
	before = stats(e).readahead;
	assert_int_equal(before, 8);
	/* More accesses behind the stream than it has slots: without the tolerance each
	 * would start a stream and the last would evict the reader's own. */
	for (unsigned i = 5; i >= 2; i--)
		fetcher_note_access(e->f, m, i);
	usleep(50000);
	assert_int_equal(stats(e).readahead, before);
	/* The stream goes on: 7 keeps the full window and queues 11. */
	fetcher_note_access(e->f, m, 7);
	assert_true(wait_contains(e, &m->hashes[11], 3000));
	assert_int_equal(stats(e).readahead, before + 1);
	fetcher_forget_image(e->f, m);
	manifest_free(m);
}

/*
 * In a cluster, readahead takes chunks only from peers: with no peer holding them it
 * drops them (the seed sends nothing speculative), and a reader that joins a readahead
 * fill still gets the chunk from the seed.
 */
static void test_cluster_readahead_peer_only(void **state)
{
	enum { NCH = 8, RA = 4 };
	struct env *e = *state;
	struct fetcher_opts o = {.readahead_chunks = RA};
	struct peer_ctl peer = {.sleep_ms = 0, .rc = -ENOENT};
	struct manifest *m;
	struct fetcher_stats st;

	m = test_image(e, NCH, 300, 0, 0);
	env_fetcher(e, NULL, &o);
	set_peer(e, &peer);
	for (unsigned i = 0; i < 3; i++) {
		fetcher_note_access(e->f, m, i);
		assert_int_equal(fetcher_fetch(e->f, &m->hashes[i], CHUNK, now_ns() + 2000 * MS),
				 0);
	}
	/* The third access queued chunk 3 as readahead; no peer has it: dropped. */
	for (unsigned i = 0; i < 100 && stats(e).readahead_no_peer < 1; i++)
		usleep(10000);
	st = stats(e);
	assert_int_equal(st.readahead, 1);
	assert_int_equal(st.readahead_no_peer, 1);
	assert_false(chunkstore_contains(e->cs, &m->hashes[3]));
	assert_int_equal(st.fetches[FETCH_SRC_SEED], 3);
	/* the readahead asked the hook without the lease; the three reads with it */
	assert_int_equal(peer_count(&peer, &peer.no_lease_calls), 1);
	assert_int_equal(peer_count(&peer, &peer.calls), 4);
	assert_int_equal(peer_count(&peer, &peer.abandons), 0);
	/* A reader asking for it gets it from the seed. */
	assert_int_equal(fetcher_fetch(e->f, &m->hashes[3], CHUNK, now_ns() + 2000 * MS), 0);
	assert_true(chunkstore_contains(e->cs, &m->hashes[3]));
	/* A reader that joins a readahead fill still queued or running takes it to the seed. */
	peer.sleep_ms = 300;
	fetcher_note_access(e->f, m, 4); /* run 4: window 2 -> chunks 5, 6 */
	assert_int_equal(fetcher_fetch(e->f, &m->hashes[4], CHUNK, now_ns() + 2000 * MS), 0);
	assert_int_equal(fetcher_fetch(e->f, &m->hashes[5], CHUNK, now_ns() + 3000 * MS), 0);
	assert_true(chunkstore_contains(e->cs, &m->hashes[5]));
	fetcher_forget_image(e->f, m);
	manifest_free(m);
}

/*
 * A reader that joins a readahead fill in a cluster ends the hook's peer-only call (the
 * abort flag) and is served within its own deadline. That call went on for as long as the
 * readahead's 30 s allowed (holders that stall), and the fill kept that deadline too, so
 * the reader timed out where a fill of its own would have reached the seed.
 */
static void test_reader_joining_readahead_ends_its_peer_call(void **state)
{
	enum { NCH = 4, RA = 4 };
	struct env *e = *state;
	struct fetcher_opts o = {.readahead_chunks = RA};
	static struct peer_ctl peer; /* static: see test_stop_wakes_waiters */
	struct fetcher_stats st;
	struct manifest *m;
	uint64_t until;

	peer = (struct peer_ctl){.rc = -ENOENT, .until_abort = true};
	m = test_image(e, NCH, 700, 0, 0);
	env_fetcher(e, NULL, &o);
	set_peer(e, &peer);
	/* the third access queues chunk 3 as readahead, which waits in the hook */
	for (unsigned i = 0; i < 3; i++)
		fetcher_note_access(e->f, m, i);
	until = now_ns() + 3000 * MS;
	while (peer_count(&peer, &peer.no_lease_calls) == 0 && now_ns() < until)
		usleep(5000);
	assert_int_equal(peer_count(&peer, &peer.no_lease_calls), 1);

	assert_int_equal(fetcher_fetch(e->f, &m->hashes[3], CHUNK, now_ns() + 2000 * MS), 0);
	assert_int_equal(peer_count(&peer, &peer.aborts), 1);
	/* then the reader's fill: the hook again, with the lease, and the seed */
	assert_int_equal(peer_count(&peer, &peer.calls), 2);
	assert_int_equal(peer_count(&peer, &peer.no_lease_calls), 1);
	st = stats(e);
	assert_int_equal(st.coalesced, 1);
	assert_int_equal(st.fetches[FETCH_SRC_SEED], 1);
	assert_int_equal(st.failures[FETCH_SRC_PEER], 0);
	assert_int_equal(st.readahead_no_peer, 0);
	fetcher_forget_image(e->f, m);
	manifest_free(m);
}

/*
 * In a cluster the window grows to peer_readahead_chunks, past readahead_chunks: with the
 * same ramp (1, 2, 4, 8 chunks from the third access on), accesses 0..7 queue through
 * chunk 15, where a standalone window of RA = 4 would stop at 11.
 */
static void test_cluster_readahead_window(void **state)
{
	enum { NCH = 40, RA = 4, PEER_RA = 8 };
	struct env *e = *state;
	struct fetcher_opts o = {.readahead_chunks = RA, .peer_readahead_chunks = PEER_RA};
	struct peer_ctl peer = {.sleep_ms = 0, .rc = -ENOENT};
	struct manifest *m;

	m = test_image(e, NCH, 500, 0, 0);
	env_fetcher(e, NULL, &o);
	set_peer(e, &peer);
	for (unsigned i = 0; i <= 7; i++)
		fetcher_note_access(e->f, m, i);
	/* Queued: 3 | 4-5 | 6-8 | 9-13 | 14 | 15 = 13 fills, none of them from the seed. */
	for (unsigned i = 0; i < 300 && stats(e).readahead_no_peer < 13; i++)
		usleep(10000);
	assert_int_equal(stats(e).readahead, 13);
	assert_int_equal(stats(e).readahead_no_peer, 13);
	assert_int_equal(stats(e).fetches[FETCH_SRC_SEED], 0);
	fetcher_forget_image(e->f, m);
	manifest_free(m);
}

static void test_background_queue_bounded(void **state)
{
	enum { N = 12 };
	struct env *e = *state;
	static uint8_t data[CHUNK];
	struct fetcher_opts o = {.workers = 1, .prefetch_queue = 3};
	struct peer_ctl peer = {.sleep_ms = 200, .rc = -ENOENT};
	struct chunk_hash h[N];
	struct fetcher_stats st;
	unsigned present = 0;

	for (unsigned i = 0; i < N; i++)
		make_chunk(e->repo, 200 + i, &h[i], data);
	env_fetcher(e, NULL, &o);
	set_peer(e, &peer);
	for (unsigned i = 0; i < N; i++)
		fetcher_prefetch(e->f, &h[i], CHUNK);
	st = stats(e);
	/* One may already be running on the worker; at most 3 wait; the rest are dropped. */
	assert_true(st.prefetches <= 4);
	assert_int_equal(st.prefetches + st.prefetch_dropped, N);
	for (unsigned i = 0; i < N; i++)
		present += wait_contains(e, &h[i], i < st.prefetches ? 3000 : 0);
	assert_int_equal(present, st.prefetches);
}

/* An attempt under way when its only waiter gives up still lands in the store. */
static void test_attempt_completes_after_waiter_left(void **state)
{
	struct env *e = *state;
	static uint8_t data[CHUNK];
	struct peer_ctl peer = {.sleep_ms = 400, .rc = -ENOENT};
	struct chunk_hash h;

	make_chunk(e->repo, 14, &h, data);
	env_fetcher(e, NULL, NULL);
	set_peer(e, &peer);
	assert_int_equal(fetcher_fetch(e->f, &h, CHUNK, now_ns() + 100 * MS), -ETIMEDOUT);
	assert_false(chunkstore_contains(e->cs, &h));
	assert_true(wait_contains(e, &h, 3000));
	assert_stored(e, &h, data);
	assert_int_equal(peer.calls, 1);
}

static void test_stop_wakes_waiters(void **state)
{
	struct env *e = *state;
	static uint8_t data[CHUNK];
	/* static: the worker is still in the hook when the test returns, and calls it
	 * (abandon) until the teardown's fetcher_destroy has joined it */
	static struct peer_ctl peer;
	struct racer r;
	struct chunk_hash h;
	uint64_t t0;

	peer = (struct peer_ctl){.sleep_ms = 2000, .rc = -ENOENT};
	make_chunk(e->repo, 15, &h, data);
	env_fetcher(e, NULL, NULL);
	set_peer(e, &peer);
	r = (struct racer){.e = e, .h = &h};
	assert_int_equal(pthread_create(&r.tid, NULL, late_fetch, &r), 0);
	/* the fill is in the peer hook (2 s) and the racer waits for it */
	for (int i = 0; i < 500 && !peer_count(&peer, &peer.calls); i++)
		usleep(10000);
	assert_int_equal(peer_count(&peer, &peer.calls), 1);
	t0 = now_ns();
	fetcher_stop(e->f);
	pthread_join(r.tid, NULL);
	assert_int_equal(r.rc, -ESHUTDOWN);
	assert_true(now_ns() - t0 < 1000 * MS); /* did not wait out the peer's 2 s */
	assert_int_equal(fetcher_fetch(e->f, &h, CHUNK, now_ns() + 1000 * MS), -ESHUTDOWN);
}

/* fetcher_stop() cancels the peer hook: a worker in the peer phase (here one that would
 * take 5 s) returns at once, the fill ends -ESHUTDOWN without counting a peer failure,
 * and the lease the fetch took is abandoned. */
static void test_stop_cancels_the_peer_phase(void **state)
{
	struct env *e = *state;
	static uint8_t data[CHUNK];
	static struct peer_ctl peer; /* static: see test_stop_wakes_waiters */
	struct fetcher_stats st;
	struct racer r;
	struct chunk_hash h;
	uint64_t t0, until;

	peer = (struct peer_ctl){.until_cancel = true};
	make_chunk(e->repo, 16, &h, data);
	env_fetcher(e, NULL, NULL);
	set_peer(e, &peer);
	r = (struct racer){.e = e, .h = &h};
	assert_int_equal(pthread_create(&r.tid, NULL, late_fetch, &r), 0);
	until = now_ns() + 3000 * MS;
	while (peer_count(&peer, &peer.calls) == 0 && now_ns() < until)
		usleep(5000);
	assert_int_equal(peer_count(&peer, &peer.calls), 1);
	t0 = now_ns();
	fetcher_stop(e->f);
	pthread_join(r.tid, NULL);
	assert_int_equal(r.rc, -ESHUTDOWN);
	until = now_ns() + 3000 * MS;
	while (peer_count(&peer, &peer.abandons) == 0 && now_ns() < until)
		usleep(5000);
	assert_int_equal(peer_count(&peer, &peer.cancels), 1);
	assert_int_equal(peer_count(&peer, &peer.abandons), 1);
	pthread_mutex_lock(&peer.lock);
	assert_true(peer.returned_ns > t0 && peer.returned_ns - t0 < 1000 * MS);
	pthread_mutex_unlock(&peer.lock);
	fetcher_get_stats(e->f, &st);
	assert_int_equal(st.failures[FETCH_SRC_PEER], 0);
	assert_int_equal(st.failures[FETCH_SRC_SEED], 0);
}

/* The seed client alone: a local repository, a hash mismatch, a missing object. */
static void test_seed_client_errors(void **state)
{
	struct env *e = *state;
	static uint8_t data[CHUNK], out[CHUNK];
	struct seed_opts so = {.url = e->repo};
	struct hugebuf rx = {0};
	struct chunk_hash h, bad;
	struct seed *s;

	make_chunk(e->repo, 12, &h, data);
	fill_random(out, CHUNK, 13);
	hash_compute(out, CHUNK, &bad);
	seed_put_chunk_as(e->repo, &bad, data, CHUNK);
	assert_int_equal(seed_open(&so, &s), 0);
	assert_int_equal(seed_get_chunk(s, &h, out, CHUNK, &rx, 0), 0);
	assert_memory_equal(out, data, CHUNK);
	assert_int_equal(seed_get_chunk(s, &bad, out, CHUNK, &rx, 0), -EILSEQ);
	assert_true(seed_err_is_corrupt(-EILSEQ));
	hash_compute(out, 100, &bad);
	assert_int_equal(seed_get_chunk(s, &bad, out, CHUNK, &rx, 0), -ENOENT);
	/* A small chunk size that the object's size can't possibly fit. */
	assert_int_equal(seed_get_chunk(s, &h, out, 16, &rx, 0), -EFBIG);
	seed_close(s);
	hugebuf_release(&rx);
	/* the URL log lines name (seed_url) never shows a password */
	so.url = "http://user:s3cret@127.0.0.1:1/repo";
	assert_int_equal(seed_open(&so, &s), 0);
	assert_string_equal(seed_url(s), "http://127.0.0.1:1/repo");
	seed_close(s);
	so.url = "ftp://example/repo";
	assert_int_equal(seed_open(&so, &s), -EPROTONOSUPPORT);
	so.url = "file://relative";
	assert_int_equal(seed_open(&so, &s), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_fetch_from_directory_repo, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_single_flight, env_setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_peer_phase_past_the_deadline_starts_no_seed_fetch,
						env_setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_waiter_deadline_fill_continues, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_dead_seed_deadline, env_setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_bad_hash_never_stored, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_and_wrong_size_never_stored, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_missing_object_is_prompt_error, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_peer_hook_before_seed, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_readahead_sequential, env_setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_readahead_out_of_order, env_setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_readahead_continues_over_zero_chunks, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_cluster_readahead_window, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_failed_fill_abandons_lease, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_cluster_readahead_peer_only, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_reader_joining_readahead_ends_its_peer_call,
						env_setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_background_queue_bounded, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_attempt_completes_after_waiter_left, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_stop_cancels_the_peer_phase, env_setup,
						env_teardown),
		cmocka_unit_test_setup_teardown(test_stop_wakes_waiters, env_setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_seed_client_errors, env_setup, env_teardown),
		cmocka_unit_test_setup_teardown(test_store_failures_are_logged_sparingly, env_setup,
						env_teardown),
	};

	log_init("test_fetcher", LOG_LVL_ERROR, 0);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
