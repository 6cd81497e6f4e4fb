/*
 * test_lun_hint.c - the module reports chunk hits that continue a forward run to
 * rackdiskd (HIT lines, target/fetch_proto.h), so that the readahead keeps up with a
 * reader that no longer misses: every chunk of a sequential read after the first is
 * reported once, zero chunks are stepped over, scattered reads are not reported, and a
 * re-read is not reported again. A real LUN (lun.json, manifest copy, chunk store, disk
 * overlay) read through its disk, against a recording fetch socket.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
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

#include <cmocka.h>

#include "cache/chunkstore.h"
#include "cache/disk.h"
#include "common/hash.h"
#include "common/util.h"
#include "images/manifest.h"
#include "target/fetch_proto.h"
#include "target/lun.h"

#define CHUNK  (64 * 1024)
#define NCH    32
#define ZERO_A 10 /* chunks ZERO_A..ZERO_B are all-zero */
#define ZERO_B 13
#define LINES  256

/* A fetch socket that answers OK to every line and records the HIT lines' indexes. */
struct recorder {
	char path[108];
	int lfd;
	volatile int stop;
	pthread_t thr;
	pthread_mutex_t lock;
	uint64_t hit_idx[LINES]; /* protected by lock */
	unsigned nhits, nlines;
};

static void record_line(struct recorder *r, char *line)
{
	struct fetch_req req;

	pthread_mutex_lock(&r->lock);
	r->nlines++;
	if (fetch_proto_parse(line, strlen(line), &req) == 0 && req.cmd == FETCH_CMD_HIT &&
	    r->nhits < LINES)
		r->hit_idx[r->nhits++] = req.idx;
	pthread_mutex_unlock(&r->lock);
}

/* Serves connections one after another, each until it closes or stop (the LUN keeps
 * one one-way connection, which is all this test uses). */
static void *recorder_main(void *arg)
{
	struct recorder *r = arg;
	char buf[FETCH_PROTO_LINE_MAX + 2];

	while (!r->stop) {
		struct pollfd p = {.fd = r->lfd, .events = POLLIN};
		size_t have = 0;
		int fd;

		if (poll(&p, 1, 50) <= 0)
			continue;
		fd = accept(r->lfd, NULL, NULL);
		if (fd < 0)
			continue;
		while (!r->stop) {
			struct pollfd q = {.fd = fd, .events = POLLIN};
			char *nl;
			ssize_t n;

			if (poll(&q, 1, 50) <= 0)
				continue;
			n = read(fd, buf + have, sizeof(buf) - 1 - have);
			if (n <= 0)
				break;
			have += (size_t)n;
			buf[have] = '\0';
			while ((nl = strchr(buf, '\n'))) {
				*nl = '\0';
				record_line(r, buf);
				if (send(fd, "OK\n", 3, MSG_NOSIGNAL) != 3)
					break;
				have -= (size_t)(nl + 1 - buf);
				memmove(buf, nl + 1, have + 1);
			}
		}
		close(fd);
	}
	return NULL;
}

struct env {
	char root[64], store[160], disk[160], manifest[160];
	struct recorder rec;
	struct chunkstore *cs;
	struct manifest *m;
	struct lun *lun;
};

static void write_lun_json(struct env *e)
{
	char hex[HASH_HEX_LEN + 1], json[1024], path[200];
	int n;

	hash_to_hex(&e->m->id, hex);
	n = snprintf(json, sizeof(json),
		     "{\"format\":1,\"name\":\"hint\",\"image_id\":\"%s\",\"manifest\":\"%s\","
		     "\"chunk_dir\":\"%s\",\"socket\":\"%s\"}",
		     hex, e->manifest, e->store, e->rec.path);
	snprintf(path, sizeof(path), "%s/" LUN_CONFIG_FILE, e->disk);
	assert_int_equal(write_file_atomic(path, json, (size_t)n), 0);
}

static void make_image(struct env *e)
{
	static uint8_t data[CHUNK];
	char *json;
	size_t len;

	assert_int_equal(manifest_new((uint64_t)NCH * CHUNK, CHUNK, &e->m), 0);
	for (unsigned i = 0; i < NCH; i++) {
		if (i >= ZERO_A && i <= ZERO_B)
			continue;
		for (unsigned j = 0; j < CHUNK; j++)
			data[j] = (uint8_t)(i * 131u + j * 7u + (j >> 9));
		hash_compute(data, CHUNK, &e->m->hashes[i]);
		e->m->zero[i] = 0;
		assert_int_equal(chunkstore_insert(e->cs, &e->m->hashes[i], data, CHUNK), 0);
	}
	assert_int_equal(manifest_serialize(e->m, &json, &len), 0);
	assert_int_equal(write_file_atomic(e->manifest, json, len), 0);
	free(json);
}

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));
	struct chunkstore_opts so = {0};
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char err[256] = "";

	assert_non_null(e);
	snprintf(e->root, sizeof(e->root), "/tmp/rd-test-lunhint-XXXXXX");
	assert_non_null(mkdtemp(e->root));
	snprintf(e->store, sizeof(e->store), "%s/cache", e->root);
	snprintf(e->disk, sizeof(e->disk), "%s/disk", e->root);
	snprintf(e->manifest, sizeof(e->manifest), "%s/image.json", e->root);
	snprintf(e->rec.path, sizeof(e->rec.path), "%s/rackdiskd.sock", e->root);
	assert_int_equal(mkdir_p(e->disk, 0755), 0);
	assert_int_equal(mkdir_p(e->store, 0755), 0);
	so.dir = e->store;
	assert_int_equal(chunkstore_open(&so, &e->cs), 0);
	make_image(e);
	assert_int_equal(disk_create(e->disk, &e->m->id, (uint64_t)NCH * CHUNK), 0);
	write_lun_json(e);
	pthread_mutex_init(&e->rec.lock, NULL);
	e->rec.lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_true(e->rec.lfd >= 0);
	memcpy(sa.sun_path, e->rec.path, strlen(e->rec.path) + 1);
	assert_int_equal(bind(e->rec.lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(e->rec.lfd, 8), 0);
	assert_int_equal(pthread_create(&e->rec.thr, NULL, recorder_main, &e->rec), 0);
	if (lun_open(e->disk, &e->lun, err, sizeof(err)))
		fail_msg("lun_open: %s", err);
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;
	char cmd[200];

	lun_close(e->lun);
	e->rec.stop = 1;
	pthread_join(e->rec.thr, NULL);
	close(e->rec.lfd);
	chunkstore_close(e->cs);
	manifest_free(e->m);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", e->root);
	assert_int_equal(system(cmd), 0);
	free(e);
	return 0;
}

static void read_chunk(struct env *e, uint64_t idx)
{
	static uint8_t buf[CHUNK];

	/* Two pieces: a chunk read in several commands is still one chunk read. */
	assert_int_equal(disk_read(lun_disk(e->lun), buf, CHUNK / 2, idx * CHUNK), 0);
	assert_int_equal(disk_read(lun_disk(e->lun), buf, CHUNK / 2, idx * CHUNK + CHUNK / 2), 0);
}

/* Waits (bounded) until the recorder holds n HIT lines; returns how many it holds. */
static unsigned wait_hits(struct env *e, unsigned n)
{
	unsigned got = 0;

	for (int i = 0; i < 200; i++) {
		pthread_mutex_lock(&e->rec.lock);
		got = e->rec.nhits;
		pthread_mutex_unlock(&e->rec.lock);
		if (got >= n)
			break;
		usleep(10000);
	}
	return got;
}

static void test_sequential_hits_reported(void **state)
{
	struct env *e = *state;
	struct lun_stats st;
	unsigned want = 0, got;
	bool reported[NCH] = {false};

	/* Scattered reads first: none continues a run (20's eight non-zero predecessors,
	 * zero chunks stepped over, are 19..14, 9 and 8). */
	read_chunk(e, 31);
	read_chunk(e, 20);
	read_chunk(e, 0);
	usleep(100000);
	lun_get_stats(e->lun, &st);
	assert_int_equal(st.hits_reported, 0);
	assert_int_equal(wait_hits(e, 0), 0);
	/* Then the whole image in order: every non-zero chunk after 0 is reported, 14 too
	 * (the run steps over the zero chunks), and 20 and 31, read before, now as well. */
	for (uint64_t i = 0; i < NCH; i++) {
		if (i >= ZERO_A && i <= ZERO_B)
			continue;
		read_chunk(e, i);
		if (i > 0)
			want++;
	}
	/* A second pass within the repeat interval reports nothing more. */
	for (uint64_t i = 0; i < NCH; i++)
		if (i < ZERO_A || i > ZERO_B)
			read_chunk(e, i);
	got = wait_hits(e, want);
	usleep(100000);
	lun_get_stats(e->lun, &st);
	assert_int_equal(st.hits_reported, want);
	assert_int_equal(got, want);
	assert_int_equal(e->rec.nhits, want);
	for (unsigned i = 0; i < got; i++) {
		assert_true(e->rec.hit_idx[i] > 0 && e->rec.hit_idx[i] < NCH);
		assert_false(e->rec.hit_idx[i] >= ZERO_A && e->rec.hit_idx[i] <= ZERO_B);
		assert_false(reported[e->rec.hit_idx[i]]);
		reported[e->rec.hit_idx[i]] = true;
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_sequential_hits_reported, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
