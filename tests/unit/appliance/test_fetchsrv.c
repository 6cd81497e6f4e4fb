/*
 * test_fetchsrv.c - the fetch socket's HIT request (target/fetch_proto.h) on rackdiskd's
 * side: a hit's place drives the fetcher's readahead like a FETCH's place, so a reader
 * that only hits chunks readahead filled keeps the window moving; a place that is not
 * the chunk's (wrong hash, unknown image, index out of range) is counted and ignored.
 * Real fetcher, chunk store and directory repository; requests go through
 * fetchsrv_handle_line (no socket client needed).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zstd.h>

#include <cmocka.h>

#include "appliance/fetchsrv.h"
#include "cache/chunkstore.h"
#include "cluster/fetcher.h"
#include "common/hash.h"
#include "common/util.h"
#include "images/manifest.h"
#include "target/fetch_proto.h"

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
	char hex[HASH_HEX_LEN + 1], path[512];
	size_t cap = ZSTD_compressBound(CHUNK), n;
	void *obj = malloc(cap);

	assert_non_null(obj);
	hash_compute(data, CHUNK, h);
	n = ZSTD_compress(obj, cap, data, CHUNK, 1);
	assert_false(ZSTD_isError(n));
	hash_to_hex(h, hex);
	snprintf(path, sizeof(path), "%s/chunks/%.2s", repo, hex);
	assert_int_equal(mkdir_p(path, 0755), 0);
	snprintf(path, sizeof(path), "%s/chunks/%.2s/%s", repo, hex, hex);
	assert_int_equal(write_file_atomic(path, obj, n), 0);
	free(obj);
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
	ret = fetchsrv_handle_line(e->s, line, reply, sizeof(reply));
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
	assert_int_equal(fetchsrv_handle_line(e->s, line, reply, sizeof(reply)), -EPROTO);
	assert_int_equal(strncmp(reply, "ERR 71", 6), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_hits_drive_readahead, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_hits_ignored, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
