/*
 * test_peers.c - the fetcher's peer hook with whole nodes in one process (store,
 * directory, peer server, peer client, peers) and a real redis-server: fetch from a
 * holder, same rack first, a lying holder skipped, a stale holder repaired, concurrent
 * cold reads doing one "seed" fetch per chunk through the lease, a dead lease holder
 * taken over, a stalled one waited for no longer than the bound, and Redis down; and a
 * fetcher over the hook, as the daemon wires them: a full store is not a peer failure, and
 * a read that joins a readahead fill is served within its own deadline.
 */
#include <hiredis/hiredis.h>
#include <microhttpd.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <zstd.h>

#include <cmocka.h>

#include "cluster/directory.h"
#include "cluster/peer_client.h"
#include "cluster/peer_server.h"
#include "cluster/peers.h"
#include "cluster_fixture.h"
#include "common/log.h"
#include "delay_proxy.h"
#include "tests/unit/seed_fixture.h"
#include "images/manifest.h"

#define CHUNK (128 * 1024)
#define TOKEN "peers-token"
#define MS 1000000ULL

/* peers_fetch's receive buffer (the fetch worker's, in rackdiskd); one per thread, as the
 * cold-image test fetches from several at once. */
static __thread uint8_t scratch[CHUNK];

static struct fx_redis redis;

struct node {
	char sdir[64];
	struct chunkstore *cs;
	struct directory *d;
	struct peer_server *srv;
	struct peer_client *cli;
	struct peers *p;
};

/* Redis port the next dir_for() uses instead of the test's own (0: none), e.g. a proxy's. */
static int redis_port_override;
/* Capacity of the next node_new()'s store in bytes (0: unlimited). */
static uint64_t store_capacity;

static struct directory *dir_for(const char *name, const char *rack, const char *advertise)
{
	char url[128];
	struct directory_opts o = {
		.url = url, .node_name = name, .rack = rack, .advertise = advertise,
		.prefix = "tp:", .heartbeat_ttl_ms = 1500, .heartbeat_interval_ms = 300,
		.lease_ttl_ms = 600, .lease_renew_ms = 150,
	};
	struct directory *d = NULL;

	fx_redis_url(&redis, 0, url, sizeof(url));
	if (redis_port_override)
		snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0", redis_port_override);
	assert_int_equal(directory_create(&o, &d), 0);
	return d;
}

static void on_not_held(void *arg, const struct chunk_hash *h)
{
	directory_not_held(arg, h);
}

static struct node *node_new(const char *name, const char *rack, uint32_t lease_wait_ms)
{
	struct node *n = calloc(1, sizeof(*n));
	char addr[64];
	struct peer_server_opts so = {.listen = addr, .token = TOKEN, .threads = 2,
				      .not_held = on_not_held};
	struct peer_client_opts co = {.token = TOKEN, .request_timeout_ms = 3000};
	struct peers_opts po = {.rack = rack, .lease_wait_ms = lease_wait_ms, .poll_ms = 20};

	assert_non_null(n);
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", fx_free_port());
	/* the daemon's order: directory, store with its hooks, attach, server, client, peers */
	n->d = dir_for(name, rack, addr);
	n->cs = fx_store_open_cap(n->sdir, directory_store_hooks(n->d), store_capacity);
	assert_non_null(n->cs);
	directory_attach_store(n->d, n->cs);
	so.store = n->cs;
	so.not_held_arg = n->d;
	assert_int_equal(peer_server_start(&so, &n->srv), 0);
	co.store = n->cs;
	assert_int_equal(peer_client_create(&co, &n->cli), 0);
	po.dir = n->d;
	po.client = n->cli;
	assert_int_equal(peers_create(&po, &n->p), 0);
	assert_int_equal(directory_wait_ready(n->d, 5000), 0);
	return n;
}

static void node_free(struct node *n)
{
	peers_destroy(n->p);
	directory_leave(n->d);
	peer_server_stop(n->srv);
	peer_client_destroy(n->cli);
	chunkstore_close(n->cs);
	directory_destroy(n->d);
	fx_rm_rf(n->sdir);
	free(n);
}

static int setup(void **state)
{
	memset(&redis, 0, sizeof(redis));
	return fx_redis_start(&redis);
}

static int teardown(void **state)
{
	fx_redis_stop(&redis);
	fx_rm_rf(redis.dir);
	return 0;
}

/* peers_list_all() into the test's array of max (its peers are few). */
static int list_peers(struct peers *p, struct peers_peer_stats *out, int max)
{
	struct peers_peer_stats *v = NULL;
	int n = peers_list_all(p, &v);

	assert_true(n >= 0 && n <= max);
	memcpy(out, v, (size_t)n * sizeof(*v));
	free(v);
	return n;
}

static uint64_t served(struct node *n)
{
	struct peer_server_stats st;

	peer_server_get_stats(n->srv, &st);
	return st.bytes;
}

static void check_chunk(struct node *n, const struct chunk_hash *h, const void *data)
{
	struct chunk_ref *ref;
	uint8_t *buf = malloc(CHUNK);

	assert_int_equal(chunkstore_get(n->cs, h, &ref), 0);
	assert_int_equal(pread_full(chunk_ref_fd(ref), buf, CHUNK, 0), 0);
	assert_memory_equal(buf, data, CHUNK);
	chunkstore_put(n->cs, ref);
	free(buf);
}

static void test_fetch_from_holder(void **state)
{
	struct node *a = node_new("a", "r1", 2000), *b = node_new("b", "r1", 2000);
	static uint8_t data[CHUNK];
	struct peers_peer_stats ps[4];
	struct peers_stats st;
	struct chunk_hash h;

	fx_chunk(1, data, CHUNK, &h);
	assert_int_equal(chunkstore_insert(a->cs, &h, data, CHUNK), 0); /* announces */
	assert_int_equal(peers_fetch(b->p, &h, scratch, CHUNK, now_ns() + 5000 * MS), 0);
	check_chunk(b, &h, data);
	assert_int_equal(served(a), CHUNK);
	peers_get_stats(b->p, &st);
	assert_int_equal(st.peer_hits, 1);
	assert_int_equal(st.leases_won, 0);
	assert_int_equal(list_peers(b->p, ps, 4), 1);
	assert_string_equal(ps[0].name, "a");
	assert_int_equal(ps[0].ok, 1);
	assert_int_equal(ps[0].bytes, CHUNK);
	/* b announced it in turn: a third node may now get it from either */
	{
		struct directory_holder hd[4];

		assert_int_equal(directory_lookup(a->d, &h, hd, 4), 1);
		assert_string_equal(hd[0].name, "b");
	}
	node_free(a);
	node_free(b);
}

static void test_same_rack_first(void **state)
{
	struct node *far = node_new("far", "r2", 2000), *near = node_new("near", "r1", 2000);
	struct node *b = node_new("b", "r1", 2000);
	static uint8_t data[CHUNK];
	struct chunk_hash h;
	int i;

	for (i = 0; i < 8; i++) {
		fx_chunk(10 + i, data, CHUNK, &h);
		assert_int_equal(chunkstore_insert(far->cs, &h, data, CHUNK), 0);
		assert_int_equal(chunkstore_insert(near->cs, &h, data, CHUNK), 0);
		assert_int_equal(peers_fetch(b->p, &h, scratch, CHUNK, now_ns() + 5000 * MS), 0);
	}
	assert_int_equal(served(near), 8ULL * CHUNK);
	assert_int_equal(served(far), 0);
	/* the near peer goes away: the far one serves */
	node_free(near);
	fx_chunk(99, data, CHUNK, &h);
	assert_int_equal(chunkstore_insert(far->cs, &h, data, CHUNK), 0);
	assert_int_equal(peers_fetch(b->p, &h, scratch, CHUNK, now_ns() + 5000 * MS), 0);
	assert_int_equal(served(far), CHUNK);
	node_free(far);
	node_free(b);
}

static enum MHD_Result liar_cb(void *cls, struct MHD_Connection *c, const char *url,
			       const char *method, const char *version, const char *data,
			       size_t *dlen, void **con_cls)
{
	uint8_t *body = calloc(1, CHUNK);
	struct MHD_Response *r;
	enum MHD_Result ret;

	memset(body, 0x77, CHUNK);
	r = MHD_create_response_from_buffer(CHUNK, body, MHD_RESPMEM_MUST_FREE);
	ret = MHD_queue_response(c, 200, r);
	MHD_destroy_response(r);
	return ret;
}

static void test_lying_holder_skipped(void **state)
{
	struct node *a = node_new("a", "r2", 2000), *b = node_new("b", "r1", 2000);
	struct MHD_Daemon *liar;
	struct directory *ld;
	static uint8_t data[CHUNK];
	struct peers_peer_stats ps[4];
	struct peers_stats st;
	struct chunk_hash h;
	char addr[64];
	int i, n;

	liar = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, liar_cb, NULL,
				MHD_OPTION_END);
	assert_non_null(liar);
	snprintf(addr, sizeof(addr), "127.0.0.1:%u",
		 MHD_get_daemon_info(liar, MHD_DAEMON_INFO_BIND_PORT)->port);
	/* the liar is in b's rack, so b tries it first */
	ld = dir_for("liar", "r1", addr);
	assert_int_equal(directory_wait_ready(ld, 5000), 0);
	fx_chunk(20, data, CHUNK, &h);
	assert_int_equal(chunkstore_insert(a->cs, &h, data, CHUNK), 0);
	assert_int_equal(directory_announce(ld, &h), 0);
	assert_int_equal(peers_fetch(b->p, &h, scratch, CHUNK, now_ns() + 5000 * MS), 0);
	check_chunk(b, &h, data);
	peers_get_stats(b->p, &st);
	assert_int_equal(st.bad_data, 1);
	assert_int_equal(st.peer_hits, 1);
	n = list_peers(b->p, ps, 4);
	assert_int_equal(n, 2);
	for (i = 0; i < n; i++) {
		if (!strcmp(ps[i].name, "liar")) {
			assert_int_equal(ps[i].bad_data, 1);
			assert_int_equal(ps[i].failures, 1);
			assert_int_equal(ps[i].ok, 0);
		} else {
			assert_string_equal(ps[i].name, "a");
			assert_int_equal(ps[i].ok, 1);
		}
	}
	directory_destroy(ld);
	MHD_stop_daemon(liar);
	node_free(a);
	node_free(b);
}

/* Live holders of h that d's lookup sees, after waiting (bounded) for it to become want. */
static int holders_become(struct directory *d, const struct chunk_hash *h, int want)
{
	struct directory_holder hd[4];
	int n = -1, i;

	for (i = 0; i < 100 && (n = directory_lookup(d, h, hd, 4)) != want; i++)
		fx_sleep_ms(20);
	return n;
}

static void test_stale_holder_repaired(void **state)
{
	struct node *a = node_new("a", "r1", 2000), *b = node_new("b", "r1", 2000);
	struct directory_holder hd[4];
	struct directory_stats ds;
	static uint8_t data[CHUNK];
	struct peers_stats st;
	struct chunk_hash h;
	int i;

	fx_chunk(30, data, CHUNK, &h);
	/* a's entry without the chunk (e.g. a withdraw lost during a Redis outage) */
	assert_int_equal(directory_announce(a->d, &h), 0);
	assert_int_equal(directory_lookup(b->d, &h, hd, 4), 1);
	/* 404 from a; nobody else: b takes the lease and goes to the seed. a removes its
	 * entry after it has sent the 404, so b's recheck after winning the lease may still
	 * find it listed and ask it again (a second 404) on a loaded machine. */
	assert_int_equal(peers_fetch(b->p, &h, scratch, CHUNK, now_ns() + 5000 * MS), -ENOENT);
	peers_get_stats(b->p, &st);
	assert_true(st.stale == 1 || st.stale == 2);
	assert_int_equal(st.leases_won, 1);
	/* a, having answered the 404, removed its own entry (counted just after) */
	assert_int_equal(holders_become(b->d, &h, 0), 0);
	for (i = 0; i < 100; i++) {
		directory_get_stats(a->d, &ds);
		if (ds.stale_removed)
			break;
		fx_sleep_ms(10);
	}
	assert_int_equal(ds.stale_removed, 1);
	node_free(a);
	node_free(b);
}

struct late_holder {
	struct node *n;
	const struct chunk_hash *h;
	const uint8_t *data;
};

/* The lease holder's seed fetch lands: the chunk is stored (and announced), then the
 * lease is released, as a fetch worker does. */
static void *late_holder_main(void *arg)
{
	struct late_holder *lh = arg;

	fx_sleep_ms(400);
	if (chunkstore_insert(lh->n->cs, lh->h, lh->data, CHUNK) == 0)
		directory_lease_release(lh->n->d, lh->h);
	return NULL;
}

/* A holder that answered 404 was never asked again in that call: b, waiting on a's lease
 * after a stale entry of a's said 404, skipped a once a's seed fetch landed and a
 * announced the chunk, won the lease and went to the seed for a second copy. */
static void test_holder_that_said_404_is_asked_again(void **state)
{
	struct node *a = node_new("a", "r1", 5000), *b = node_new("b", "r1", 5000);
	static uint8_t data[CHUNK];
	struct late_holder lh = {.n = a, .data = data};
	struct peers_stats st;
	struct chunk_hash h;
	int64_t holder = -1;
	pthread_t t;

	fx_chunk(32, data, CHUNK, &h);
	lh.h = &h;
	/* a: a stale entry (a withdraw lost in an outage), and the lease for its seed fetch */
	assert_int_equal(directory_announce(a->d, &h), 0);
	assert_int_equal(directory_lease_acquire(a->d, &h, now_ns() + 10000 * MS, &holder), 0);
	assert_int_equal(pthread_create(&t, NULL, late_holder_main, &lh), 0);
	assert_int_equal(peers_fetch(b->p, &h, scratch, CHUNK, now_ns() + 8000 * MS), 0);
	pthread_join(t, NULL);
	check_chunk(b, &h, data);
	peers_get_stats(b->p, &st);
	/* a's first answer: 404 (again, if a poll came before a withdrew its entry) */
	assert_true(st.stale >= 1);
	assert_int_equal(st.lease_waits, 1);
	assert_int_equal(st.peer_hits, 1);   /* then a served it */
	assert_int_equal(st.leases_won, 0);  /* no second seed fetch */
	node_free(a);
	node_free(b);
}

/* Our own store failing to keep a peer's good chunk is our failure, not the peer's: it
 * was counted against the peer (penalised, rackdisk_peer_failures_total), and when the
 * store's error was ENOENT, taken for a 404 that removed the peer's valid entry. */
static void test_own_store_failure_is_not_the_peers(void **state)
{
	struct node *a = node_new("a", "r1", 2000), *b = node_new("b", "r1", 2000);
	struct directory_holder hd[4];
	struct peers_peer_stats ps[4];
	static uint8_t data[CHUNK];
	struct peers_stats st;
	struct chunk_hash h;

	fx_chunk(33, data, CHUNK, &h);
	assert_int_equal(chunkstore_insert(a->cs, &h, data, CHUNK), 0);
	assert_int_equal(directory_lookup(b->d, &h, hd, 4), 1);
	fx_rm_rf(b->sdir); /* b's store can no longer create files */
	assert_int_equal(peers_fetch(b->p, &h, scratch, CHUNK, now_ns() + 5000 * MS), -ENOENT);
	peers_get_stats(b->p, &st);
	assert_int_equal(st.stale, 0);
	assert_int_equal(st.peer_failures, 0);
	assert_int_equal(list_peers(b->p, ps, 4), 1);
	assert_int_equal(ps[0].ok, 2); /* asked again after b took the lease (the recheck) */
	assert_int_equal(ps[0].failures, 0);
	assert_int_equal(ps[0].not_found, 0);
	assert_int_equal(directory_lookup(b->d, &h, hd, 4), 1); /* a's entry stays */
	node_free(a);
	node_free(b);
}

/* A fetcher on node n as the daemon wires it: n's store, n's peers as the peer hook, and
 * the directory repository repo as the seed. */
static struct fetcher *fetcher_for(struct node *n, const char *repo, unsigned readahead)
{
	struct fetcher_opts fo = {.seed_url = repo, .store = n->cs,
				  .readahead_chunks = readahead, .no_readahead = !readahead};
	struct fetcher_peer_ops ops = peers_fetcher_ops(n->p);
	struct fetcher *f;

	assert_int_equal(fetcher_create(&fo, &f), 0);
	fetcher_set_peer_ops(f, &ops);
	return f;
}

static struct fetcher_stats fetcher_stats_of(struct fetcher *f)
{
	struct fetcher_stats st;

	fetcher_get_stats(f, &st);
	return st;
}

/*
 * A peer served good bytes and our full store refused them: the read fails with -ENOSPC
 * (no seed download that could not be stored either), and no peer failed. The fetcher
 * counted the hook's -ENOSPC in failures[peer], rackdisk_chunk_fetch_failures_total
 * {source="peer"}, which also receives the peers module's own count of failed holders.
 */
static void test_full_store_is_not_a_peer_failure(void **state)
{
	struct node *a = node_new("a", "r1", 2000), *b;
	char repo[] = "/tmp/rd-repo-XXXXXX";
	static uint8_t data[CHUNK];
	struct peers_peer_stats ps[4];
	struct chunk_hash pinned, h;
	struct chunk_ref *ref;
	struct fetcher_stats fs;
	struct peers_stats st;
	struct fetcher *f;

	store_capacity = CHUNK; /* b's store: room for one chunk, which a reader keeps open */
	b = node_new("b", "r1", 2000);
	store_capacity = 0;
	fx_chunk(34, data, CHUNK, &pinned);
	assert_int_equal(chunkstore_insert(b->cs, &pinned, data, CHUNK), 0);
	assert_int_equal(chunkstore_get(b->cs, &pinned, &ref), 0);
	fx_chunk(35, data, CHUNK, &h);
	assert_int_equal(chunkstore_insert(a->cs, &h, data, CHUNK), 0); /* a holds h */
	assert_non_null(mkdtemp(repo)); /* an empty seed: it must not be asked */
	f = fetcher_for(b, repo, 0);

	assert_int_equal(fetcher_fetch(f, &h, CHUNK, now_ns() + 5000 * MS), -ENOSPC);
	fs = fetcher_stats_of(f);
	assert_int_equal(fs.failures[FETCH_SRC_PEER], 0);
	assert_int_equal(fs.bad_hash[FETCH_SRC_PEER], 0);
	assert_int_equal(fs.seed_requests, 0);
	peers_get_stats(b->p, &st);
	assert_int_equal(st.peer_failures, 0);
	assert_int_equal(st.bad_data, 0);
	assert_int_equal(list_peers(b->p, ps, 4), 1);
	assert_string_equal(ps[0].name, "a");
	assert_int_equal(ps[0].ok, 1);
	assert_int_equal(ps[0].failures, 0);
	assert_int_equal(served(a), CHUNK);

	fetcher_stop(f);
	fetcher_destroy(f);
	chunkstore_put(b->cs, ref);
	fx_rm_rf(repo);
	node_free(a);
	node_free(b);
}

struct fetch_arg {
	struct node *n;
	const struct chunk_hash *h;
	int rc;
};

static void *fetch_main(void *arg)
{
	struct fetch_arg *f = arg;

	f->rc = peers_fetch(f->n->p, f->h, scratch, CHUNK, now_ns() + 10000 * MS);
	return NULL;
}

/*
 * A peer that got a 404 used to remove the holder's entry itself, unconditionally. When the
 * holder fetched the chunk again (and announced it) between the 404 and that removal, the
 * removal landed last: the holder had the chunk but the directory no longer named it. b's
 * commands reach Redis 300 ms late here (a proxy), which opens that window wide.
 */
static void test_refetched_chunk_stays_listed_after_a_404(void **state)
{
	struct fx_proxy px = {.target = redis.port, .up_ms = 300};
	struct node *a = node_new("a", "r1", 2000), *b, *c;
	static uint8_t data[CHUNK];
	struct peer_server_stats ss;
	struct fetch_arg f;
	struct chunk_hash h;
	pthread_t t;
	uint64_t t0;

	assert_int_equal(fx_proxy_start(&px), 0);
	redis_port_override = px.port;
	b = node_new("b", "r1", 2000);
	redis_port_override = 0;
	c = node_new("c", "r2", 2000);
	fx_chunk(31, data, CHUNK, &h);
	/* a is listed but has evicted h; b's lookup finds it */
	assert_int_equal(directory_announce(a->d, &h), 0);
	f = (struct fetch_arg){.n = b, .h = &h};
	assert_int_equal(pthread_create(&t, NULL, fetch_main, &f), 0);
	/* a answers 404, then fetches h again (announced), before b's next command lands */
	for (t0 = now_ns(); fx_ms_since(t0) < 5000; fx_sleep_ms(2)) {
		peer_server_get_stats(a->srv, &ss);
		if (ss.responses[PEER_ST_404])
			break;
	}
	assert_int_equal(ss.responses[PEER_ST_404], 1);
	assert_int_equal(chunkstore_insert(a->cs, &h, data, CHUNK), 0);
	pthread_join(t, NULL);
	/* whatever b did meanwhile has reached Redis: a holds h and is listed for it (b, which
	 * asks a again once a is listed again, may have got h from a and be listed too) */
	assert_true(chunkstore_contains(a->cs, &h));
	fx_sleep_ms(400);
	{
		struct directory_holder hd[4];
		int n = directory_lookup(c->d, &h, hd, 4), i, found = 0;

		for (i = 0; i < n; i++)
			found += hd[i].node_id == directory_node_id(a->d);
		assert_int_equal(found, 1);
		assert_int_equal(n, 1 + (f.rc == 0 && chunkstore_contains(b->cs, &h)));
	}
	node_free(b);
	fx_proxy_stop(&px);
	node_free(a);
	node_free(c);
}

/* ---- concurrent cold reads: the lease makes one node go to the "seed" ---- */

#define NCHUNKS 6
#define NNODES 3

static uint8_t cold[NCHUNKS][CHUNK];
static struct chunk_hash cold_h[NCHUNKS];
static int seed_fetches[NCHUNKS];
static pthread_barrier_t barrier;

struct reader {
	struct node *n;
	int rc;
};

static void *reader_main(void *arg)
{
	struct reader *r = arg;
	int i;

	pthread_barrier_wait(&barrier);
	for (i = 0; i < NCHUNKS && !r->rc; i++) {
		int rc = peers_fetch(r->n->p, &cold_h[i], scratch, CHUNK, now_ns() + 10000 * MS);

		if (rc == -ENOENT) {
			/* the seed: slow, so the others find the lease taken */
			__atomic_fetch_add(&seed_fetches[i], 1, __ATOMIC_RELAXED);
			fx_sleep_ms(150);
			rc = chunkstore_insert(r->n->cs, &cold_h[i], cold[i], CHUNK);
		}
		r->rc = rc;
	}
	return NULL;
}

/* Readahead asks holders only: no lease, so nobody waits for a seed fetch that never
 * comes. A demand fetch that took the lease and then failed gives it back. */
static void test_readahead_takes_no_lease_and_abandon_releases(void **state)
{
	struct node *a = node_new("a", "r1", 2000), *b = node_new("b", "r1", 2000);
	static uint8_t data[CHUNK];
	struct peers_stats st;
	struct chunk_hash h;
	int64_t holder = -1;
	uint64_t t0;

	fx_chunk(31, data, CHUNK, &h);
	assert_int_equal(peers_fetch_from_holders(b->p, &h, scratch, CHUNK,
						  now_ns() + 5000 * MS, NULL), -ENOENT);
	assert_int_equal(directory_lease_holder(a->d, &h, &holder), 0);
	assert_int_equal(holder, 0);
	/* b takes the lease for a seed fetch; a, asking for the chunk, would wait for it */
	assert_int_equal(peers_fetch(b->p, &h, scratch, CHUNK, now_ns() + 5000 * MS), -ENOENT);
	assert_int_equal(directory_lease_holder(a->d, &h, &holder), 0);
	assert_int_equal(holder, directory_node_id(b->d));
	/* b's seed fetch failed: released at once, and a's fetch takes the lease without a
	 * wait (lease_wait_ms is 2000 here) */
	peers_abandon(b->p, &h);
	peers_get_stats(b->p, &st);
	assert_int_equal(st.leases_abandoned, 1);
	assert_int_equal(directory_lease_holder(a->d, &h, &holder), 0);
	assert_int_equal(holder, 0);
	t0 = now_ns();
	assert_int_equal(peers_fetch(a->p, &h, scratch, CHUNK, now_ns() + 5000 * MS), -ENOENT);
	/* lease_waits == 0 is the proof that a did not wait; the time bound, with slack for
	 * a loaded machine, stays below the 2000 ms a wait for b's lease would take */
	assert_true(now_ns() - t0 < 1500 * MS);
	peers_get_stats(a->p, &st);
	assert_int_equal(st.lease_waits, 0);
	assert_int_equal(st.leases_won, 1);
	/* abandoning a lease this node does not hold changes nothing */
	peers_abandon(b->p, &h);
	assert_int_equal(directory_lease_holder(b->d, &h, &holder), 0);
	assert_int_equal(holder, directory_node_id(a->d));
	node_free(a);
	node_free(b);
}

static void test_one_seed_fetch_per_chunk(void **state)
{
	struct node *n[NNODES];
	struct reader r[NNODES];
	pthread_t t[NNODES];
	struct peers_stats st;
	uint64_t waits = 0, hits = 0;
	char name[16];
	int i;

	for (i = 0; i < NNODES; i++) {
		snprintf(name, sizeof(name), "n%d", i);
		n[i] = node_new(name, "r1", 5000);
	}
	for (i = 0; i < NCHUNKS; i++) {
		fx_chunk(40 + i, cold[i], CHUNK, &cold_h[i]);
		seed_fetches[i] = 0;
	}
	pthread_barrier_init(&barrier, NULL, NNODES);
	for (i = 0; i < NNODES; i++) {
		r[i].n = n[i];
		r[i].rc = 0;
		assert_int_equal(pthread_create(&t[i], NULL, reader_main, &r[i]), 0);
	}
	for (i = 0; i < NNODES; i++)
		pthread_join(t[i], NULL);
	pthread_barrier_destroy(&barrier);
	for (i = 0; i < NNODES; i++)
		assert_int_equal(r[i].rc, 0);
	for (i = 0; i < NCHUNKS; i++) {
		assert_int_equal(seed_fetches[i], 1);
		for (int j = 0; j < NNODES; j++)
			check_chunk(n[j], &cold_h[i], cold[i]);
	}
	for (i = 0; i < NNODES; i++) {
		peers_get_stats(n[i]->p, &st);
		waits += st.lease_waits;
		hits += st.peer_hits; /* lease_wait_hits are among them */
	}
	/* the other two nodes got every chunk from a peer */
	assert_int_equal(hits, (NNODES - 1) * NCHUNKS);
	assert_true(waits >= 1);
	for (i = 0; i < NNODES; i++)
		node_free(n[i]);
}

static void test_dead_lease_holder_taken_over(void **state)
{
	struct node *b = node_new("b", "r1", 5000);
	static uint8_t data[CHUNK];
	struct peers_stats st;
	struct chunk_hash h;
	int64_t holder = -1;
	int status;
	uint64_t t0;
	pid_t pid;

	fx_chunk(50, data, CHUNK, &h);
	/* node "dead" in a child: takes the lease (as for a seed fetch), then crashes */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct directory *d = dir_for("dead", "r1", "127.0.0.1:1");

		if (directory_wait_ready(d, 5000) ||
		    directory_lease_acquire(d, &h, now_ns() + 60000 * MS, &holder))
			_exit(1);
		_exit(0);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_int_equal(WEXITSTATUS(status), 0);
	assert_int_equal(directory_lease_holder(b->d, &h, &holder), 0);
	assert_true(holder > 0);
	t0 = now_ns();
	assert_int_equal(peers_fetch(b->p, &h, scratch, CHUNK, now_ns() + 10000 * MS), -ENOENT);
	/* lease TTL 600 ms: taken over long before the 5 s wait bound */
	assert_true(fx_ms_since(t0) < 3000);
	peers_get_stats(b->p, &st);
	assert_int_equal(st.lease_waits, 1);
	assert_int_equal(st.lease_takeovers, 1);
	assert_int_equal(st.leases_won, 1);
	assert_int_equal(st.lease_wait_timeouts, 0);
	assert_int_equal(directory_lease_holder(b->d, &h, &holder), 0);
	assert_int_equal(holder, directory_node_id(b->d));
	node_free(b);
}

static void test_stalled_lease_holder_bounded(void **state)
{
	struct node *a = node_new("a", "r1", 500), *b = node_new("b", "r1", 500);
	static uint8_t data[CHUNK];
	struct peers_stats st;
	struct chunk_hash h;
	int64_t holder;
	uint64_t t0, ms;

	fx_chunk(60, data, CHUNK, &h);
	/* a holds the lease and keeps renewing it, but never finishes */
	assert_int_equal(directory_lease_acquire(a->d, &h, now_ns() + 60000 * MS, &holder), 0);
	t0 = now_ns();
	assert_int_equal(peers_fetch(b->p, &h, scratch, CHUNK, now_ns() + 10000 * MS), -ENOENT);
	ms = fx_ms_since(t0);
	assert_true(ms >= 400 && ms < 2500);
	peers_get_stats(b->p, &st);
	assert_int_equal(st.lease_wait_timeouts, 1);
	/* the caller's deadline bounds the wait too: at half of it, the rest is the seed's */
	t0 = now_ns();
	assert_int_equal(peers_fetch(b->p, &h, scratch, CHUNK, now_ns() + 400 * MS), -ENOENT);
	ms = fx_ms_since(t0);
	assert_true(ms >= 150 && ms < 1500);
	node_free(a);
	node_free(b);
}

/* A listener that never accepts: connects complete, requests are never answered. */
static int stalled_listener(char *addr, size_t len)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sa);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	assert_true(fd >= 0);
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(fd, 16), 0);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
	snprintf(addr, len, "127.0.0.1:%u", ntohs(sa.sin_port));
	return fd;
}

/* Three holders whose heartbeats are alive but whose servers stall: the peer phase ends
 * at half the deadline, so the seed still has the other half. */
static void test_stalled_holders_leave_the_seed_time(void **state)
{
	struct node *b = node_new("b", "r1", 2000);
	struct directory *sd[3];
	static uint8_t data[CHUNK];
	struct peers_peer_stats ps[8];
	struct chunk_hash h;
	char addr[64], name[16];
	int fds[3], i, n;
	uint64_t t0, ms;

	fx_chunk(70, data, CHUNK, &h);
	for (i = 0; i < 3; i++) {
		fds[i] = stalled_listener(addr, sizeof(addr));
		snprintf(name, sizeof(name), "s%d", i);
		sd[i] = dir_for(name, "r1", addr);
		assert_int_equal(directory_wait_ready(sd[i], 5000), 0);
		assert_int_equal(directory_announce(sd[i], &h), 0);
	}
	t0 = now_ns();
	assert_int_equal(peers_fetch(b->p, &h, scratch, CHUNK, now_ns() + 4000 * MS), -ENOENT);
	ms = fx_ms_since(t0);
	assert_true(ms >= 1800 && ms < 3000);
	/* one stalled holder took the peer phase's 2 s; none was asked twice */
	n = list_peers(b->p, ps, 8);
	for (i = 0; i < n; i++)
		assert_true(ps[i].failures <= 1);
	for (i = 0; i < 3; i++) {
		directory_destroy(sd[i]);
		close(fds[i]);
	}
	node_free(b);
}

/*
 * A VM read that joins a cluster readahead fill is served within its own deadline. The
 * readahead (peer-only, a 30 s deadline) was asking holders alive in the directory whose
 * servers stall, up to max_tries of them at the 3 s request timeout each; the reader that
 * joined it waited that out and timed out at 4 s, where its own fill, its peer phase cut
 * to half its deadline, reaches the seed at 2 s. Now the reader's arrival ends the
 * readahead's holder phase and the fill goes on as the reader's.
 */
static void test_reader_joining_readahead_keeps_its_deadline(void **state)
{
	struct node *b = node_new("b", "r1", 2000);
	char repo[] = "/tmp/rd-repo-XXXXXX", addr[64], name[16];
	static uint8_t data[CHUNK];
	struct fetcher_stats fs;
	struct directory *sd[3];
	struct manifest *m;
	struct fetcher *f;
	int fds[3], i;

	assert_non_null(mkdtemp(repo));
	assert_int_equal(manifest_new(4ULL * CHUNK, CHUNK, &m), 0);
	for (i = 0; i < 4; i++) { /* the seed has every chunk */
		fx_chunk(80 + i, data, CHUNK, &m->hashes[i]);
		m->zero[i] = 0;
		seed_put_chunk_as(repo, &m->hashes[i], data, CHUNK);
	}
	/* chunk 3: three holders in b's rack, alive in the directory, whose servers stall */
	for (i = 0; i < 3; i++) {
		fds[i] = stalled_listener(addr, sizeof(addr));
		snprintf(name, sizeof(name), "s%d", i);
		sd[i] = dir_for(name, "r1", addr);
		assert_int_equal(directory_wait_ready(sd[i], 5000), 0);
		assert_int_equal(directory_announce(sd[i], &m->hashes[3]), 0);
	}
	f = fetcher_for(b, repo, 4);
	/* a sequential reader's third access queues chunk 3 as (peer-only) readahead */
	for (i = 0; i < 3; i++)
		fetcher_note_access(f, m, i);
	for (i = 0; i < 100 && fetcher_stats_of(f).readahead < 1; i++)
		fx_sleep_ms(10);
	fx_sleep_ms(100); /* a worker is asking the first stalled holder */

	assert_int_equal(fetcher_fetch(f, &m->hashes[3], CHUNK, now_ns() + 4000 * MS), 0);
	fs = fetcher_stats_of(f);
	assert_int_equal(fs.readahead, 1);
	assert_int_equal(fs.coalesced, 1); /* the read joined the readahead fill */
	assert_int_equal(fs.fetches[FETCH_SRC_SEED], 1);

	fetcher_stop(f);
	fetcher_destroy(f);
	for (i = 0; i < 3; i++) {
		directory_destroy(sd[i]);
		close(fds[i]);
	}
	manifest_free(m);
	fx_rm_rf(repo);
	node_free(b);
}

/* A peers_fetch in another thread, for peers_cancel() to end. */
struct bg_fetch {
	struct node *n;
	struct chunk_hash h;
	uint64_t deadline_ns;
	int rc;
	pthread_t tid;
};

static void *bg_fetch_main(void *arg)
{
	struct bg_fetch *f = arg;

	f->rc = peers_fetch(f->n->p, &f->h, scratch, CHUNK, f->deadline_ns);
	return NULL;
}

/* Cancels after ms and returns how long the fetch went on after that. */
static uint64_t cancel_after(struct bg_fetch *f, unsigned ms)
{
	uint64_t t0;

	assert_int_equal(pthread_create(&f->tid, NULL, bg_fetch_main, f), 0);
	usleep(ms * 1000);
	t0 = now_ns();
	peers_cancel(f->n->p);
	assert_int_equal(pthread_join(f->tid, NULL), 0);
	return fx_ms_since(t0);
}

/* Shutdown does not wait out the peer phase: a transfer from a holder that stalls ends
 * at peers_cancel(), not at the deadline, and later calls end at once; neither is
 * counted as the peer's failure. */
static void test_cancel_ends_a_stalled_transfer(void **state)
{
	struct bg_fetch f = {.n = node_new("b", "r1", 2000)};
	static uint8_t data[CHUNK];
	struct peers_peer_stats ps[4];
	struct directory *sd;
	struct peers_stats st;
	char addr[64];
	uint64_t t0;
	int fd, n;

	fx_chunk(72, data, CHUNK, &f.h);
	fd = stalled_listener(addr, sizeof(addr));
	sd = dir_for("s", "r1", addr);
	assert_int_equal(directory_wait_ready(sd, 5000), 0);
	assert_int_equal(directory_announce(sd, &f.h), 0);
	f.deadline_ns = now_ns() + 20000 * MS;
	assert_true(cancel_after(&f, 300) < 1000);
	assert_int_equal(f.rc, -ECANCELED);
	t0 = now_ns();
	assert_int_equal(peers_fetch(f.n->p, &f.h, scratch, CHUNK, now_ns() + 20000 * MS),
			 -ECANCELED);
	/* at once: far from the 3 s request timeout or the 20 s deadline it would wait */
	assert_true(fx_ms_since(t0) < 1000);
	n = list_peers(f.n->p, ps, 4);
	for (int i = 0; i < n; i++)
		assert_int_equal(ps[i].failures, 0);
	peers_get_stats(f.n->p, &st);
	assert_int_equal(st.peer_failures, 0);
	assert_int_equal(st.directory_down, 0);
	directory_destroy(sd);
	close(fd);
	node_free(f.n);
}

/* A lease wait (another node fetching from the seed) ends at peers_cancel() too. */
static void test_cancel_ends_a_lease_wait(void **state)
{
	struct node *a = node_new("a", "r1", 20000);
	struct bg_fetch f = {.n = node_new("b", "r1", 20000)};
	static uint8_t data[CHUNK];
	struct peers_stats st;
	int64_t holder;

	fx_chunk(73, data, CHUNK, &f.h);
	assert_int_equal(directory_lease_acquire(a->d, &f.h, now_ns() + 60000 * MS, &holder), 0);
	f.deadline_ns = now_ns() + 30000 * MS;
	assert_true(cancel_after(&f, 500) < 1000);
	assert_int_equal(f.rc, -ECANCELED);
	peers_get_stats(f.n->p, &st);
	assert_int_equal(st.lease_waits, 1);
	assert_int_equal(st.lease_wait_timeouts, 0);
	assert_int_equal(st.directory_down, 0);
	node_free(a);
	node_free(f.n);
}

static void test_redis_down_goes_to_seed(void **state)
{
	struct node *a = node_new("a", "r1", 2000), *b = node_new("b", "r1", 2000);
	static uint8_t data[CHUNK];
	struct peers_stats st;
	struct chunk_hash h, h2;
	uint64_t t0;

	fx_chunk(70, data, CHUNK, &h);
	assert_int_equal(chunkstore_insert(a->cs, &h, data, CHUNK), 0);
	fx_redis_stop(&redis);
	t0 = now_ns();
	assert_int_equal(peers_fetch(b->p, &h, scratch, CHUNK, now_ns() + 5000 * MS), -ENOENT);
	assert_true(fx_ms_since(t0) < 1500);
	peers_get_stats(b->p, &st);
	assert_int_equal(st.directory_down, 1);
	/* inserted while Redis is down: announced by the re-announce later */
	fx_chunk(71, data, CHUNK, &h2);
	assert_int_equal(chunkstore_insert(a->cs, &h2, data, CHUNK), 0);

	assert_int_equal(fx_redis_start(&redis), 0);
	assert_int_equal(directory_wait_ready(a->d, 8000), 0);
	assert_int_equal(directory_wait_ready(b->d, 8000), 0);
	assert_int_equal(peers_fetch(b->p, &h, scratch, CHUNK, now_ns() + 5000 * MS), 0);
	assert_int_equal(peers_fetch(b->p, &h2, scratch, CHUNK, now_ns() + 5000 * MS), 0);
	check_chunk(b, &h2, data);
	assert_int_equal(served(a), 2ULL * CHUNK);
	node_free(a);
	node_free(b);
}

/*
 * A lease value no node writes made the waiter spin: "garbage" read as holder -1, never
 * alive, whose break never matched, and the wait went round without a sleep (hundreds of
 * Redis commands and "taking over" lines, a takeover counted each time) until its bound;
 * "0:x" read as node 0, which the fetch took for its own win while the lease stayed as
 * it was. Both are free now: the fetch takes the lease at once, with no wait.
 */
static void test_malformed_lease_is_taken_at_once(void **state)
{
	static const char *const bad[] = {"garbage", "0:x"};
	struct node *b = node_new("b", "r1", 2000);
	char hex[HASH_HEX_LEN + 1];
	struct peers_stats st0, st;
	struct chunk_hash h;
	int64_t holder = -1;
	redisContext *c;
	redisReply *r;
	size_t i;

	c = redisConnect("127.0.0.1", redis.port);
	assert_true(c && !c->err);
	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		fx_chunk(90 + i, scratch, CHUNK, &h);
		hash_to_hex(&h, hex);
		r = redisCommand(c, "SET tp:lease:%s %s PX 60000", hex, bad[i]);
		assert_non_null(r);
		freeReplyObject(r);
		peers_get_stats(b->p, &st0);
		assert_int_equal(peers_fetch(b->p, &h, scratch, CHUNK, now_ns() + 10000 * MS),
				 -ENOENT); /* to the seed, under the lease */
		peers_get_stats(b->p, &st);
		assert_int_equal(st.leases_won - st0.leases_won, 1);
		assert_int_equal(st.lease_waits - st0.lease_waits, 0);
		assert_int_equal(st.lease_takeovers - st0.lease_takeovers, 0);
		assert_int_equal(directory_lease_holder(b->d, &h, &holder), 0);
		if (holder != directory_node_id(b->d))
			fail_msg("lease \"%s\": held by %lld after b won it", bad[i],
				 (long long)holder);
		assert_int_equal(directory_lease_release(b->d, &h), 0);
	}
	redisFree(c);
	node_free(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_fetch_from_holder, setup, teardown),
		cmocka_unit_test_setup_teardown(test_same_rack_first, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lying_holder_skipped, setup, teardown),
		cmocka_unit_test_setup_teardown(test_stale_holder_repaired, setup, teardown),
		cmocka_unit_test_setup_teardown(test_holder_that_said_404_is_asked_again, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_own_store_failure_is_not_the_peers, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_full_store_is_not_a_peer_failure, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_refetched_chunk_stays_listed_after_a_404, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_readahead_takes_no_lease_and_abandon_releases,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_one_seed_fetch_per_chunk, setup, teardown),
		cmocka_unit_test_setup_teardown(test_dead_lease_holder_taken_over, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_stalled_lease_holder_bounded, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_stalled_holders_leave_the_seed_time, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_reader_joining_readahead_keeps_its_deadline,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel_ends_a_stalled_transfer, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_cancel_ends_a_lease_wait, setup, teardown),
		cmocka_unit_test_setup_teardown(test_redis_down_goes_to_seed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_malformed_lease_is_taken_at_once, setup,
						teardown),
	};

	log_init("test_peers", LOG_LVL_ERROR, 0);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
