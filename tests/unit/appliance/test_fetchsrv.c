/*
 * test_fetchsrv.c - the fetch socket (target/fetch_proto.h) on rackdiskd's side.
 *  - HIT: a hit's place drives the fetcher's readahead like a FETCH's place, so a reader
 *    that only hits chunks readahead filled keeps the window moving; a place that is not
 *    the chunk's (wrong hash, unknown image, index out of range) is counted and ignored.
 *    These requests go through fetchsrv_handle_line (no socket client needed).
 *  - Connection slots: an idle connection is closed after the idle timeout and the
 *    module's client (target/fetch_client.c) carries on over a fresh one; idle clients,
 *    more than the slots, do not starve a new client.
 *  - Stop: a FETCH after fetcher_stop() is ESHUTDOWN, which the client retries until its
 *    deadline; after fetchsrv_end_fetches() it is EAGAIN, which ends it at once.
 * Real fetcher, chunk store and directory repository.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <zstd.h>

#include <cmocka.h>

#include "appliance/fetchsrv.h"
#include "cache/chunkstore.h"
#include "cluster/fetcher.h"
#include "common/hash.h"
#include "common/util.h"
#include "images/manifest.h"
#include "target/fetch_client.h"
#include "target/fetch_proto.h"
#include "tests/unit/seed_fixture.h"

#define CHUNK (64 * 1024)
#define NCH   24
#define RA    4

struct env {
	char root[256], repo[300], store[300], images[300], sock[300];
	struct chunkstore *cs;
	struct fetcher *f;
	struct fetchsrv *s;
	struct manifest *m;
	uint8_t data[NCH][CHUNK];
};

static void put_chunk(const char *repo, const void *data, struct chunk_hash *h)
{
	hash_compute(data, CHUNK, h);
	seed_put_chunk_as(repo, h, data, CHUNK);
}

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));
	struct chunkstore_opts so = {0};
	struct fetcher_opts fo = {0};
	char hex[HASH_HEX_LEN + 1], path[400], *json;
	size_t len;

	assert_non_null(e);
	snprintf(e->root, sizeof(e->root), "/tmp/rd-test-fetchsrv-XXXXXX");
	assert_non_null(mkdtemp(e->root));
	snprintf(e->repo, sizeof(e->repo), "%s/repo", e->root);
	snprintf(e->store, sizeof(e->store), "%s/cache", e->root);
	snprintf(e->images, sizeof(e->images), "%s/images", e->root);
	snprintf(e->sock, sizeof(e->sock), "%s/rackdiskd.sock", e->root);
	assert_int_equal(mkdir_p(e->repo, 0755), 0);
	assert_int_equal(mkdir_p(e->store, 0755), 0);
	assert_int_equal(mkdir_p(e->images, 0755), 0);
	/* An image of NCH distinct chunks, published to the repository, and its manifest
	 * copy where rackdiskd keeps them (next to the socket). */
	assert_int_equal(manifest_new((uint64_t)NCH * CHUNK, CHUNK, &e->m), 0);
	for (unsigned i = 0; i < NCH; i++) {
		for (unsigned j = 0; j < CHUNK; j++)
			e->data[i][j] = (uint8_t)((i * 7919u + j * 31u) ^ (j >> 8));
		put_chunk(e->repo, e->data[i], &e->m->hashes[i]);
		e->m->zero[i] = 0;
	}
	assert_int_equal(manifest_serialize(e->m, &json, &len), 0);
	hash_to_hex(&e->m->id, hex);
	snprintf(path, sizeof(path), "%s/%s.json", e->images, hex);
	assert_int_equal(write_file_atomic(path, json, len), 0);
	free(json);
	so.dir = e->store;
	assert_int_equal(chunkstore_open(&so, &e->cs), 0);
	fo.seed_url = e->repo;
	fo.store = e->cs;
	fo.readahead_chunks = RA;
	fo.retry_initial_ms = 10;
	fo.retry_max_ms = 50;
	assert_int_equal(fetcher_create(&fo, &e->f), 0);
	assert_int_equal(fetchsrv_start(e->sock, e->f, e->cs, &e->s), 0);
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;
	char cmd[300];

	fetcher_stop(e->f);
	fetchsrv_stop(e->s);
	fetcher_destroy(e->f);
	chunkstore_close(e->cs);
	manifest_free(e->m);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", e->root);
	assert_int_equal(system(cmd), 0);
	free(e);
	return 0;
}

/* Sends "HIT <image> <idx> <hash>" through the request handler; returns its result. */
static int hit(struct env *e, const struct chunk_hash *image, uint64_t idx,
	       const struct chunk_hash *h)
{
	char line[FETCH_PROTO_HIT_LINE_MAX], reply[256];
	size_t n = fetch_proto_format_hit(line, sizeof(line), image, idx, h);
	int ret;

	assert_int_equal(line[n - 1], '\n');
	line[n - 1] = '\0';
	ret = fetchsrv_handle_line(e->s, line, strlen(line), reply, sizeof(reply));
	if (ret == 0)
		assert_string_equal(reply, "OK\n");
	return ret;
}

static bool wait_contains(struct env *e, uint64_t idx, unsigned ms)
{
	for (unsigned i = 0; i < ms / 10; i++) {
		if (chunkstore_contains(e->cs, &e->m->hashes[idx]))
			return true;
		usleep(10000);
	}
	return chunkstore_contains(e->cs, &e->m->hashes[idx]);
}

static void insert(struct env *e, uint64_t idx)
{
	assert_int_equal(chunkstore_insert(e->cs, &e->m->hashes[idx], e->data[idx], CHUNK), 0);
}

/*
 * The reader hits chunks 0..2 (they are local: nothing is fetched for them), then only
 * chunks readahead brought in. HIT alone moves the window: 3 after the third hit, 4-5
 * after the fourth, then four ahead of each further hit.
 */
static void test_hits_drive_readahead(void **state)
{
	struct env *e = *state;
	struct fetchsrv_stats ss;
	struct fetcher_stats fs;

	for (uint64_t i = 0; i < 3; i++)
		insert(e, i);
	assert_int_equal(hit(e, &e->m->id, 0, &e->m->hashes[0]), 0);
	assert_int_equal(hit(e, &e->m->id, 1, &e->m->hashes[1]), 0);
	usleep(50000);
	assert_false(chunkstore_contains(e->cs, &e->m->hashes[3]));
	assert_int_equal(hit(e, &e->m->id, 2, &e->m->hashes[2]), 0);
	assert_true(wait_contains(e, 3, 3000));
	/* From here the reader only hits what readahead filled. */
	for (uint64_t i = 3; i < 10; i++) {
		assert_true(wait_contains(e, i, 3000));
		assert_int_equal(hit(e, &e->m->id, i, &e->m->hashes[i]), 0);
	}
	/* The hit on 9 queued through 13 (window RA); nothing beyond it. */
	assert_true(wait_contains(e, 9 + RA, 3000));
	usleep(100000);
	assert_false(chunkstore_contains(e->cs, &e->m->hashes[9 + RA + 1]));
	fetcher_get_stats(e->f, &fs);
	assert_int_equal(fs.readahead, 9 + RA - 2);
	assert_int_equal(fs.fetches[FETCH_SRC_SEED], 9 + RA - 2);
	fetchsrv_get_stats(e->s, &ss);
	assert_int_equal(ss.hints, 10);
	assert_int_equal(ss.hints_ignored, 0);
	assert_int_equal(ss.fetch_ok + ss.fetch_err, 0);
}

/* A HIT whose place is not its chunk's is ignored: no readahead, counted. */
static void test_bad_hits_ignored(void **state)
{
	struct env *e = *state;
	struct fetchsrv_stats ss;
	struct fetcher_stats fs;
	struct chunk_hash other;
	char reply[256], line[FETCH_PROTO_HIT_LINE_MAX + 8];

	hash_compute("another image", 13, &other);
	for (uint64_t i = 0; i < 3; i++) {
		/* Index i names chunk i+1: the hash does not match the manifest entry. */
		assert_int_equal(hit(e, &e->m->id, i, &e->m->hashes[i + 1]), 0);
		assert_int_equal(hit(e, &other, i, &e->m->hashes[i]), 0);
	}
	assert_int_equal(hit(e, &e->m->id, NCH, &e->m->hashes[0]), 0);
	usleep(100000);
	fetcher_get_stats(e->f, &fs);
	assert_int_equal(fs.readahead, 0);
	fetchsrv_get_stats(e->s, &ss);
	assert_int_equal(ss.hints, 0);
	assert_int_equal(ss.hints_ignored, 7);
	/* A malformed HIT closes the connection like any malformed line. */
	snprintf(line, sizeof(line), "HIT 12");
	assert_int_equal(fetchsrv_handle_line(e->s, line, strlen(line), reply, sizeof(reply)),
			 -EPROTO);
	assert_int_equal(strncmp(reply, "ERR 71", 6), 0);
}

/* Writes the manifest copy of an image of NCH chunks whose hashes are made from seed
 * (none of them in the repository) next to the socket; returns it. */
static struct manifest *other_image(struct env *e, unsigned seed)
{
	char hex[HASH_HEX_LEN + 1], path[400], *json;
	struct manifest *m;
	size_t len;

	assert_int_equal(manifest_new((uint64_t)NCH * CHUNK, CHUNK, &m), 0);
	for (unsigned i = 0; i < NCH; i++) {
		memset(&m->hashes[i], 0x5a, sizeof(m->hashes[i]));
		memcpy(m->hashes[i].b, &seed, sizeof(seed));
		m->hashes[i].b[sizeof(seed)] = (uint8_t)i;
		m->zero[i] = 0;
	}
	assert_int_equal(manifest_serialize(m, &json, &len), 0);
	hash_to_hex(&m->id, hex);
	snprintf(path, sizeof(path), "%s/%s.json", e->images, hex);
	assert_int_equal(write_file_atomic(path, json, len), 0);
	free(json);
	return m;
}

static uint64_t hints_used(struct env *e)
{
	struct fetchsrv_stats ss;

	fetchsrv_get_stats(e->s, &ss);
	return ss.hints;
}

/* Image ids whose manifest copy does not exist (a stale or buggy client, or many images
 * over the daemon's life) take no slot in the image table: an image published after
 * them still gets its hints used. */
static void test_unknown_images_do_not_fill_the_table(void **state)
{
	struct env *e = *state;
	struct chunk_hash bogus;
	struct manifest *m;
	uint64_t before;

	for (unsigned i = 0; i < FETCHSRV_IMAGES_MAX + 44; i++) {
		memset(&bogus, 0xee, sizeof(bogus));
		memcpy(bogus.b, &i, sizeof(i));
		assert_int_equal(hit(e, &bogus, 0, &e->m->hashes[0]), 0);
	}
	m = other_image(e, 1);
	before = hints_used(e);
	assert_int_equal(hit(e, &m->id, 1, &m->hashes[1]), 0);
	assert_int_equal(hints_used(e), before + 1);
	manifest_free(m);
}

/*
 * Hints for more missing images than the old negative cache held (32), in rotation: each
 * copy is tried once per IMAGE_RETRY_NS, not on every hint (they pushed each other out),
 * and the warnings are one a second with a count of the rest, not one per hint.
 */
static void test_missing_images_in_rotation_are_not_reloaded_per_hint(void **state)
{
	struct env *e = *state;
	struct chunk_hash bogus;
	char path[400], line[600];
	unsigned lines = 0;
	long held = -1;
	int saved, fd;
	FILE *log;

	snprintf(path, sizeof(path), "%s/stderr", e->root);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	assert_true(fd >= 0);
	fflush(stderr);
	saved = dup(2);
	assert_int_equal(dup2(fd, 2), 2);
	for (unsigned k = 0; k < 4000; k++) {
		unsigned i = k % 40;

		memset(&bogus, 0xee, sizeof(bogus));
		memcpy(bogus.b, &i, sizeof(i));
		if (hit(e, &bogus, 0, &e->m->hashes[0]))
			break;
	}
	/* One more failure a second later reports how many were held back meanwhile. */
	usleep(1100 * 1000);
	memset(&bogus, 0xdd, sizeof(bogus));
	hit(e, &bogus, 0, &e->m->hashes[0]);
	fflush(stderr);
	dup2(saved, 2);
	close(saved);
	close(fd);

	log = fopen(path, "r");
	assert_non_null(log);
	while (fgets(line, sizeof(line), log)) {
		char *p = strstr(line, "no readahead for image");

		if (!p)
			continue;
		lines++;
		p = strstr(line, "(");
		while (p && strstr(p + 1, "("))
			p = strstr(p + 1, "(");
		if (p)
			held = strtol(p + 1, NULL, 10);
	}
	fclose(log);
	assert_true(lines >= 2 && lines <= 6);
	/* 40 loads failed (one per id), less the one logged first */
	assert_int_equal(held, 39);
}

/* More images than the table holds: the least recently hinted one makes room, and an
 * image evicted is loaded again when it is hinted again. */
static void test_image_table_evicts_least_recently_used(void **state)
{
	struct env *e = *state;
	unsigned n = FETCHSRV_IMAGES_MAX + 8;
	struct manifest **ms = calloc(n, sizeof(*ms));
	struct fetchsrv_stats ss;

	assert_non_null(ms);
	for (unsigned i = 0; i < n; i++)
		ms[i] = other_image(e, 100 + i);
	for (unsigned i = 0; i < n; i++) {
		assert_int_equal(hit(e, &ms[i]->id, 2, &ms[i]->hashes[2]), 0);
		if (i == 0 || i == 1)
			continue;
		/* Image 0 stays the most recently used; image 1 is evicted first. */
		assert_int_equal(hit(e, &ms[0]->id, 2, &ms[0]->hashes[2]), 0);
	}
	assert_int_equal(hit(e, &ms[1]->id, 3, &ms[1]->hashes[3]), 0);
	assert_int_equal(hit(e, &ms[n - 1]->id, 3, &ms[n - 1]->hashes[3]), 0);
	fetchsrv_get_stats(e->s, &ss);
	assert_int_equal(ss.hints_ignored, 0);
	assert_int_equal(ss.hints, n + (n - 2) + 2);
	for (unsigned i = 0; i < n; i++)
		manifest_free(ms[i]);
	free(ms);
}

static int sock_connect(const char *path)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);

	assert_true(fd >= 0);
	assert_true(strlen(path) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, path, strlen(path) + 1);
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	return fd;
}

/* A request line with a NUL inside is malformed (fetch_proto.h), over the socket as in
 * the handler: "TOUCH <hash>\0garbage" must not be read as "TOUCH <hash>". The reply is
 * ERR 71, the connection is closed, and nothing was touched. */
static void test_embedded_nul_is_malformed(void **state)
{
	struct env *e = *state;
	char line[300], hex[HASH_HEX_LEN + 1], reply[256] = "";
	struct fetchsrv_stats ss;
	size_t n;
	ssize_t r;
	int fd;

	hash_to_hex(&e->m->hashes[0], hex);
	n = (size_t)snprintf(line, sizeof(line), "TOUCH %s", hex);
	memcpy(line + n, "\0garbage\n", 9);
	n += 9;
	assert_int_equal(fetchsrv_handle_line(e->s, line, n - 1, reply, sizeof(reply)), -EPROTO);
	assert_string_equal(reply, "ERR 71 malformed request\n");

	fd = sock_connect(e->sock);
	assert_int_equal(send(fd, line, n, MSG_NOSIGNAL), (ssize_t)n);
	r = recv(fd, reply, sizeof(reply) - 1, 0);
	assert_true(r > 0);
	reply[r] = '\0';
	assert_string_equal(reply, "ERR 71 malformed request\n");
	assert_int_equal(recv(fd, reply, sizeof(reply), 0), 0); /* closed after it */
	close(fd);
	fetchsrv_get_stats(e->s, &ss);
	assert_int_equal(ss.bad_requests, 2);
	assert_int_equal(ss.touches, 0);
}

static bool wait_idle_closed(struct env *e, uint64_t n, unsigned ms)
{
	struct fetchsrv_stats ss;

	for (unsigned i = 0; i <= ms / 10; i++) {
		fetchsrv_get_stats(e->s, &ss);
		if (ss.idle_closed >= n)
			return true;
		usleep(10000);
	}
	return false;
}

/*
 * The server closes a connection that waits longer than its idle timeout for a request,
 * and the client, whose pool still holds that connection, gets its answer over a fresh
 * one: FETCH (patient), PREFETCH and CHECK (one attempt) alike, with no error or drop.
 */
static void test_idle_connection_closed_client_reconnects(void **state)
{
	struct env *e = *state;
	struct fetch_client *fc;
	struct fetch_client_stats cs;
	struct fetchsrv_stats ss;

	fetchsrv_set_idle_ms(e->s, 100);
	assert_int_equal(fetch_client_new(e->sock, &fc), 0);
	assert_int_equal(fetch_client_fetch(fc, &e->m->hashes[0], CHUNK, now_ns() + 5000000000ULL), 0);
	assert_true(wait_idle_closed(e, 1, 3000));
	usleep(20000);
	assert_int_equal(fetch_client_fetch(fc, &e->m->hashes[1], CHUNK, now_ns() + 5000000000ULL), 0);
	assert_true(wait_idle_closed(e, 2, 3000));
	usleep(20000);
	assert_int_equal(fetch_client_prefetch(fc, &e->m->hashes[2], CHUNK, now_ns() + 2000000000ULL), 0);
	assert_true(wait_idle_closed(e, 3, 3000));
	usleep(20000);
	assert_int_equal(fetch_client_check(fc, &e->m->hashes[0], CHUNK, now_ns() + 2000000000ULL), 0);
	fetch_client_get_stats(fc, &cs);
	assert_int_equal(cs.connects, 4);
	assert_int_equal(cs.fetch_errors + cs.fetch_timeouts + cs.dropped, 0);
	assert_true(chunkstore_contains(e->cs, &e->m->hashes[1]));
	fetchsrv_get_stats(e->s, &ss);
	assert_int_equal(ss.fetch_ok, 2);
	assert_int_equal(ss.refused, 0);
	fetch_client_free(fc);
}

/* Opens n connections that never send a request; returns them in fds. */
static void open_idle(struct env *e, int *fds, unsigned n)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	struct fetchsrv_stats ss;

	assert_true(strlen(e->sock) < sizeof(sa.sun_path));
	memcpy(sa.sun_path, e->sock, strlen(e->sock) + 1);
	for (unsigned i = 0; i < n; i++) {
		fds[i] = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
		assert_true(fds[i] >= 0);
		assert_int_equal(connect(fds[i], (struct sockaddr *)&sa, sizeof(sa)), 0);
	}
	/* Every one accepted (or refused) before the real client comes. */
	for (unsigned i = 0; i < 500; i++) {
		fetchsrv_get_stats(e->s, &ss);
		if (ss.connections + ss.refused >= n)
			break;
		usleep(10000);
	}
	assert_true(ss.connections + ss.refused >= n);
}

static void close_idle(int *fds, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		close(fds[i]);
}

/* A new LUN's client among 300 idle connections (as many LUNs' pools after a boot
 * storm, more than the slots once were) is served at once. */
static void test_many_idle_clients_within_slots(void **state)
{
	struct env *e = *state;
	struct fetch_client *fc;
	struct fetchsrv_stats ss;
	unsigned n = 300;
	int fds[300];

	open_idle(e, fds, n);
	assert_int_equal(fetch_client_new(e->sock, &fc), 0);
	assert_int_equal(fetch_client_fetch(fc, &e->m->hashes[0], CHUNK, now_ns() + 2000000000ULL), 0);
	fetchsrv_get_stats(e->s, &ss);
	assert_int_equal(ss.refused, 0);
	fetch_client_free(fc);
	close_idle(fds, n);
}

/* More idle connections than slots: some are refused, and the new client's FETCH
 * succeeds within its deadline once the idle timeout frees slots. */
static void test_idle_clients_beyond_slots_do_not_starve(void **state)
{
	struct env *e = *state;
	struct fetch_client *fc;
	struct fetchsrv_stats ss;
	unsigned n = FETCHSRV_MAX_CONNS + 8;
	int *fds = calloc(n, sizeof(*fds));

	assert_non_null(fds);
	/* Long enough that no idle connection is closed while the others are still being
	 * opened (1032 connects under a loaded CI machine took over 300 ms). */
	fetchsrv_set_idle_ms(e->s, 1500);
	open_idle(e, fds, n);
	fetchsrv_get_stats(e->s, &ss);
	assert_int_equal(ss.refused, 8);
	assert_int_equal(fetch_client_new(e->sock, &fc), 0);
	assert_int_equal(fetch_client_fetch(fc, &e->m->hashes[0], CHUNK, now_ns() + 8000000000ULL), 0);
	fetchsrv_get_stats(e->s, &ss);
	assert_true(ss.idle_closed > 0);
	fetch_client_free(fc);
	close_idle(fds, n);
	free(fds);
}

/*
 * Stopping with an external tgtd, a FETCH gets ESHUTDOWN and the client waits for a
 * restarted rackdiskd until its deadline. Stopping with the spawned tgtd
 * (fetchsrv_end_fetches), it gets EAGAIN at once: the module's command ends with BUSY and
 * tgtd can close the LUN.
 */
static void test_end_fetches_answers_eagain_at_once(void **state)
{
	struct env *e = *state;
	struct fetch_client *fc;
	uint64_t t0;

	assert_int_equal(fetch_client_new(e->sock, &fc), 0);
	fetcher_stop(e->f);
	t0 = now_ns();
	assert_int_equal(fetch_client_fetch(fc, &e->m->hashes[0], CHUNK, t0 + 300000000ULL),
			 -ETIMEDOUT);
	assert_true(now_ns() - t0 >= 300000000ULL);
	fetchsrv_end_fetches(e->s);
	t0 = now_ns();
	assert_int_equal(fetch_client_fetch(fc, &e->m->hashes[1], CHUNK, t0 + 10000000000ULL),
			 -EAGAIN);
	assert_true(now_ns() - t0 < 2000000000ULL);
	assert_false(chunkstore_contains(e->cs, &e->m->hashes[1]));
	fetch_client_free(fc);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_hits_drive_readahead, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_hits_ignored, setup, teardown),
		cmocka_unit_test_setup_teardown(test_idle_connection_closed_client_reconnects,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_many_idle_clients_within_slots, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_idle_clients_beyond_slots_do_not_starve,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_embedded_nul_is_malformed, setup, teardown),
		cmocka_unit_test_setup_teardown(test_missing_images_in_rotation_are_not_reloaded_per_hint,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_unknown_images_do_not_fill_the_table, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_image_table_evicts_least_recently_used,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_end_fetches_answers_eagain_at_once, setup,
						teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
