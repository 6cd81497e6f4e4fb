/*
 * test_chunkstore.c - the chunk store, and each numbered invariant of cache/chunkstore.c
 * (the test names say which: inv1_..., inv2_...).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "cache/aio.h"
#include "cache/chunkstore.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/util.h"
#include "tests/unit/stderr_hold.h"

#define CLEN 4096u

struct fixture {
	char dir[64];
	/* hook log */
	pthread_mutex_t lock;
	char events[64][80];
	int nevents;
	struct chunkstore *cs; /* for checks made inside hooks */
	int hook_errors;
};

static struct fixture *F;

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	/* a real disk, not tmpfs: fsync and O_DIRECT behave as in production */
	snprintf(f->dir, sizeof(f->dir), "/var/tmp/rd-cs-XXXXXX");
	assert_non_null(mkdtemp(f->dir));
	pthread_mutex_init(&f->lock, NULL);
	F = f;
	*state = f;
	return 0;
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(p);
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	nftw(f->dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	pthread_mutex_destroy(&f->lock);
	free(f);
	return 0;
}

/* Chunk number i: deterministic bytes of length len, and their hash. */
static uint8_t *make_chunk(unsigned i, size_t len, struct chunk_hash *h)
{
	uint8_t *b = malloc(len);
	uint32_t x = 2166136261u ^ i;

	for (size_t k = 0; k < len; k++) {
		x = x * 1664525 + 1013904223;
		b[k] = (uint8_t)(x >> 24);
	}
	hash_compute(b, len, h);
	return b;
}

static int insert_n(struct chunkstore *cs, unsigned i, size_t len)
{
	struct chunk_hash h;
	uint8_t *b = make_chunk(i, len, &h);
	int ret = chunkstore_insert(cs, &h, b, len);

	free(b);
	return ret;
}

static struct chunk_hash hash_n(unsigned i, size_t len)
{
	struct chunk_hash h;

	free(make_chunk(i, len, &h));
	return h;
}

static bool contains_n(struct chunkstore *cs, unsigned i)
{
	struct chunk_hash h = hash_n(i, CLEN);

	return chunkstore_contains(cs, &h);
}

/* Gets chunk i and checks every byte read through chunkstore_read(). */
static int get_check(struct chunkstore *cs, unsigned i, size_t len)
{
	struct chunk_hash h;
	uint8_t *want = make_chunk(i, len, &h), *got = malloc(len);
	struct chunk_ref *ref;
	int ret = chunkstore_get(cs, &h, &ref);

	if (!ret) {
		assert_int_equal(chunk_ref_len(ref), len);
		assert_true(chunk_ref_fd(ref) >= 0);
		assert_int_equal(chunkstore_read(cs, ref, got, len, 0), 0);
		assert_memory_equal(got, want, len);
		assert_int_equal(chunkstore_read(cs, ref, got, 100, (uint32_t)len - 100), 0);
		assert_memory_equal(got, want + len - 100, 100);
		chunkstore_put(cs, ref);
	}
	free(want);
	free(got);
	return ret;
}

static struct chunkstore *open_store(const char *dir, uint64_t cap, bool reader)
{
	struct chunkstore_opts o = {.dir = dir, .capacity = cap, .reader = reader};
	struct chunkstore *cs = NULL;

	assert_int_equal(chunkstore_open(&o, &cs), 0);
	return cs;
}

static void chunk_file(const char *dir, const struct chunk_hash *h, char *path, size_t len)
{
	char hex[HASH_HEX_LEN + 1];

	hash_to_hex(h, hex);
	snprintf(path, len, "%s/chunks/%.2s/%s", dir, hex, hex);
}

static bool file_exists(const char *p)
{
	return access(p, F_OK) == 0;
}

static bool clean_marker(const char *dir)
{
	char p[256];

	snprintf(p, sizeof(p), "%s/clean", dir);
	return file_exists(p);
}

static void write_raw(const char *path, const void *b, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	assert_true(fd >= 0);
	assert_int_equal(pwrite_full(fd, b, len, 0), 0);
	close(fd);
}

/* ---- basics ---- */

static void test_insert_get_put(void **state)
{
	struct fixture *f = *state;
	struct chunkstore *cs = open_store(f->dir, 0, false);
	struct chunkstore_stats st;
	struct chunk_ref *ref;
	struct chunk_hash missing = hash_n(999, CLEN);
	uint8_t buf[16];

	for (unsigned i = 0; i < 3; i++)
		assert_int_equal(insert_n(cs, i, CLEN + i * 1000), 0);
	for (unsigned i = 0; i < 3; i++)
		assert_int_equal(get_check(cs, i, CLEN + i * 1000), 0);
	assert_int_equal(chunkstore_get(cs, &missing, &ref), -ENOENT);
	assert_false(chunkstore_contains(cs, &missing));
	assert_true(contains_n(cs, 0));

	/* reads beyond the chunk are refused */
	struct chunk_hash h0 = hash_n(0, CLEN);
	assert_int_equal(chunkstore_get(cs, &h0, &ref), 0);
	assert_int_equal(chunkstore_read(cs, ref, buf, sizeof(buf), CLEN - 8), -ERANGE);
	chunkstore_put(cs, ref);

	chunkstore_get_stats(cs, &st);
	assert_int_equal(st.inserts, 3);
	assert_int_equal(st.hits, 4);
	assert_int_equal(st.misses, 1);
	assert_int_equal(st.nchunks, 3);
	assert_int_equal(st.bytes_used, 3 * CLEN + 3000);
	assert_int_equal(st.bytes_inserted, 3 * CLEN + 3000);
	assert_int_equal(st.bytes_read, 2 * (3 * CLEN + 3000) / 1 - (3 * CLEN + 3000) + 300);
	assert_int_equal(st.pinned, 0);

	char path[256];
	chunkstore_path(cs, &h0, path, sizeof(path));
	assert_true(file_exists(path));
	assert_non_null(strstr(path, "/chunks/"));
	/* bad arguments */
	assert_int_equal(chunkstore_insert(cs, &h0, buf, 0), -EINVAL);
	chunkstore_close(cs);
}

static void test_duplicate_insert_is_noop(void **state)
{
	struct fixture *f = *state;
	struct chunkstore *cs = open_store(f->dir, 0, false);
	struct chunkstore_stats st;

	assert_int_equal(insert_n(cs, 7, CLEN), 0);
	assert_int_equal(insert_n(cs, 7, CLEN), 0);
	chunkstore_get_stats(cs, &st);
	assert_int_equal(st.inserts, 1);
	assert_int_equal(st.nchunks, 1);
	assert_int_equal(st.bytes_used, CLEN);
	chunkstore_close(cs);
}

static int count_cb(void *arg, const struct chunk_hash *h, uint32_t len)
{
	(*(unsigned *)arg)++;
	return 0;
}

static void test_reopen_rebuilds_index(void **state)
{
	struct fixture *f = *state;
	struct chunkstore *cs = open_store(f->dir, 0, false);
	struct chunkstore_stats st;
	unsigned n = 0;

	for (unsigned i = 0; i < 50; i++)
		assert_int_equal(insert_n(cs, i, CLEN + i), 0);
	chunkstore_close(cs);
	cs = open_store(f->dir, 0, false);
	chunkstore_get_stats(cs, &st);
	assert_int_equal(st.nchunks, 50);
	assert_int_equal(st.bytes_used, 50 * CLEN + 49 * 50 / 2);
	assert_int_equal(st.dropped_corrupt, 0);
	for (unsigned i = 0; i < 50; i++)
		assert_int_equal(get_check(cs, i, CLEN + i), 0);
	assert_int_equal(chunkstore_foreach(cs, count_cb, &n), 0);
	assert_int_equal(n, 50);
	chunkstore_close(cs);
	/* a smaller capacity at the next open evicts down to it (invariant 5) */
	cs = open_store(f->dir, 20 * (CLEN + 49), false);
	chunkstore_get_stats(cs, &st);
	assert_true(st.bytes_used <= 20 * (CLEN + 49));
	assert_true(st.nchunks >= 19);
	assert_int_equal(st.evictions, 50 - st.nchunks);
	chunkstore_close(cs);
}

/* ---- invariant 1: complete files only; torn/corrupt never served ---- */

static void test_inv1_torn_files_dropped_at_open(void **state)
{
	struct fixture *f = *state;
	struct chunkstore *cs = open_store(f->dir, 0, false);
	struct chunkstore_stats st;
	char p[512], good[512], empty[512];
	struct chunk_hash h1 = hash_n(1, CLEN), h2 = hash_n(2, CLEN);
	uint8_t junk[100] = {1};

	assert_int_equal(insert_n(cs, 0, CLEN), 0);
	chunkstore_close(cs);
	struct chunk_hash h0 = hash_n(0, CLEN);
	chunk_file(f->dir, &h0, good, sizeof(good));
	/* a crash in the middle of an insert leaves a partial temp file */
	snprintf(p, sizeof(p), "%s/tmp/partial.123.1", f->dir);
	write_raw(p, junk, sizeof(junk));
	/* an empty file under its name (what a crash on a careless filesystem leaves) */
	chunk_file(f->dir, &h1, empty, sizeof(empty));
	write_raw(empty, junk, 0);
	/* misnamed, and a name in the wrong <hh> directory */
	snprintf(p, sizeof(p), "%s/chunks/00/not-a-hash", f->dir);
	write_raw(p, junk, sizeof(junk));
	char hex[HASH_HEX_LEN + 1];
	hash_to_hex(&h2, hex);
	snprintf(p, sizeof(p), "%s/chunks/%02x/%s", f->dir, (h2.b[0] + 1) & 0xff, hex);
	write_raw(p, junk, sizeof(junk));

	cs = open_store(f->dir, 0, false);
	chunkstore_get_stats(cs, &st);
	assert_int_equal(st.nchunks, 1);
	assert_int_equal(st.dropped_corrupt, 3);
	assert_false(file_exists(empty));
	assert_false(file_exists(p));
	assert_true(file_exists(good));
	snprintf(p, sizeof(p), "%s/tmp/partial.123.1", f->dir);
	assert_false(file_exists(p));
	assert_false(chunkstore_contains(cs, &h1));
	assert_int_equal(get_check(cs, 0, CLEN), 0);
	chunkstore_close(cs);
}

/* A truncated or altered file under a valid name: never served, dropped. */
static void test_inv1_corrupt_never_served(void **state)
{
	struct fixture *f = *state;
	struct chunkstore *cs = open_store(f->dir, 0, false);
	struct chunkstore_stats st;
	struct chunk_ref *ref;
	char p0[512], p1[512];
	struct chunk_hash h0 = hash_n(0, CLEN), h1 = hash_n(1, CLEN);
	uint8_t *b0 = make_chunk(0, CLEN, &h0);

	assert_int_equal(insert_n(cs, 0, CLEN), 0);
	assert_int_equal(insert_n(cs, 1, CLEN), 0);
	assert_int_equal(insert_n(cs, 2, CLEN), 0);
	chunkstore_close(cs);
	chunk_file(f->dir, &h0, p0, sizeof(p0));
	chunk_file(f->dir, &h1, p1, sizeof(p1));
	write_raw(p0, b0, CLEN / 2); /* torn: the first half only */
	b0[100] ^= 1;
	write_raw(p1, b0, CLEN); /* right size, wrong bytes */

	/* without verify_on_open, after a clean close: found at open (no re-hash of the whole
	 * store), refused at first use */
	cs = open_store(f->dir, 0, false);
	chunkstore_get_stats(cs, &st);
	assert_int_equal(st.dropped_corrupt, 0);
	assert_int_equal(st.nchunks, 3);
	assert_int_equal(chunkstore_get(cs, &h0, &ref), -ENOENT);
	assert_int_equal(chunkstore_get(cs, &h1, &ref), -ENOENT);
	assert_false(file_exists(p0));
	assert_false(file_exists(p1));
	assert_int_equal(get_check(cs, 2, CLEN), 0);
	chunkstore_get_stats(cs, &st);
	assert_int_equal(st.dropped_corrupt, 2);
	assert_int_equal(st.nchunks, 1);
	assert_int_equal(st.bytes_used, CLEN);
	chunkstore_close(cs);

	/* with verify_on_open: dropped before the index is built */
	write_raw(p1, b0, CLEN);
	struct chunkstore_opts o = {.dir = f->dir, .verify_on_open = true};
	assert_int_equal(chunkstore_open(&o, &cs), 0);
	chunkstore_get_stats(cs, &st);
	assert_int_equal(st.dropped_corrupt, 1);
	assert_int_equal(st.nchunks, 1);
	assert_false(file_exists(p1));
	chunkstore_close(cs);
	free(b0);
}

struct verify_all {
	struct chunkstore *cs;
	unsigned n;
};

/* Gets a chunk, reads it whole and checks that its bytes hash to its name. */
static int verify_cb(void *arg, const struct chunk_hash *h, uint32_t len)
{
	struct verify_all *va = arg;
	struct chunk_ref *ref;
	struct chunk_hash got;
	uint8_t *b = malloc(len);

	assert_non_null(b);
	assert_int_equal(chunkstore_get(va->cs, h, &ref), 0);
	assert_int_equal(chunk_ref_len(ref), len);
	assert_int_equal(chunkstore_read(va->cs, ref, b, len, 0), 0);
	chunkstore_put(va->cs, ref);
	hash_compute(b, len, &got);
	assert_true(hash_equal(&got, h));
	free(b);
	va->n++;
	return 0;
}

/* fsck's report callback: counts the problems, and those about a path outside the
 * store's tmp/ (a chunk file). */
struct tmp_only {
	const char *dir;
	int reported, outside_tmp;
};

static void tmp_only_report(void *arg, const char *path, const char *problem)
{
	struct tmp_only *t = arg;
	char tmp[4096];
	int n = snprintf(tmp, sizeof(tmp), "%s/tmp/", t->dir);

	t->reported++;
	if (n <= 0 || strncmp(path, tmp, (size_t)n) != 0) {
		print_error("fsck: %s: %s\n", path, problem);
		t->outside_tmp++;
	}
}

/* SIGKILL in the middle of inserts (no fsync any more: the page cache survives the
 * process), then an open without verify_on_open: the missing clean marker makes it
 * re-hash everything; every file left is complete and hashes to its name. */
static void test_inv1_crash_during_inserts(void **state)
{
	struct fixture *f = *state;
	int pfd[2];

	assert_int_equal(pipe(pfd), 0);
	for (int round = 0; round < 3; round++) {
		pid_t pid = fork();

		assert_true(pid >= 0);
		if (pid == 0) {
			struct chunkstore_opts o = {.dir = f->dir};
			struct chunkstore *cs;

			close(pfd[0]);
			if (chunkstore_open(&o, &cs))
				_exit(2);
			for (unsigned i = 0; i < 100000; i++) {
				struct chunk_hash h;
				size_t len = 64 * 1024 + (i % 7) * 4096;
				uint8_t *b = make_chunk(round * 100000 + i, len, &h);

				if (chunkstore_insert(cs, &h, b, len))
					_exit(3);
				free(b);
				if (write(pfd[1], "x", 1) != 1)
					_exit(4);
			}
			_exit(0);
		}
		/* let it publish a few chunks, then kill it at an arbitrary point */
		char c;
		for (int k = 0; k < 5 + round * 7; k++)
			assert_int_equal(read(pfd[0], &c, 1), 1);
		usleep(1000 * (unsigned)(round * 3));
		kill(pid, SIGKILL);
		int status;
		waitpid(pid, &status, 0);
		assert_true(WIFSIGNALED(status));
		/* drain what it reported */
		fcntl(pfd[0], F_SETFL, O_NONBLOCK);
		while (read(pfd[0], &c, 1) == 1)
			;
		fcntl(pfd[0], F_SETFL, 0);
	}
	close(pfd[0]);
	close(pfd[1]);
	/* killed owners leave no clean marker, and no chunk file is wrong (temp files may
	 * be: they are reported and removed) */
	assert_false(clean_marker(f->dir));
	struct tmp_only t = {.dir = f->dir};
	int problems = chunkstore_fsck(f->dir, false, tmp_only_report, &t);
	struct chunkstore_opts o = {.dir = f->dir};
	struct chunkstore *cs;
	struct chunkstore_stats st;
	struct verify_all va = {0};

	assert_int_equal(problems, t.reported);
	assert_int_equal(t.outside_tmp, 0);
	assert_int_equal(chunkstore_open(&o, &cs), 0);
	assert_false(clean_marker(f->dir)); /* not while an owner has it open */
	chunkstore_get_stats(cs, &st);
	assert_int_equal(st.dropped_corrupt, 0);
	assert_true(st.nchunks >= 5);
	/* every chunk is served, and served right */
	va.cs = cs;
	assert_int_equal(chunkstore_foreach(cs, verify_cb, &va), 0);
	assert_int_equal(va.n, st.nchunks);
	chunkstore_close(cs);
	assert_true(clean_marker(f->dir));
	assert_int_equal(chunkstore_fsck(f->dir, false, NULL, NULL), 0);
}

/* Opens the store as an owner in a child that inserts chunk `first`..`first + n - 1`
 * and is then SIGKILLed: an unclean stop. */
static void owner_killed(const char *dir, unsigned first, unsigned n)
{
	int pfd[2];
	pid_t pid;
	char c;
	int status;

	assert_int_equal(pipe(pfd), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct chunkstore_opts o = {.dir = dir};
		struct chunkstore *cs;

		close(pfd[0]);
		if (chunkstore_open(&o, &cs))
			_exit(2);
		for (unsigned i = first; i < first + n; i++)
			if (insert_n(cs, i, CLEN))
				_exit(3);
		if (write(pfd[1], "x", 1) != 1)
			_exit(4);
		pause(); /* bounded: the parent kills us */
		_exit(0);
	}
	close(pfd[1]);
	assert_int_equal(read(pfd[0], &c, 1), 1);
	close(pfd[0]);
	kill(pid, SIGKILL);
	waitpid(pid, &status, 0);
	assert_true(WIFSIGNALED(status));
}

/*
 * No clean marker (what a power loss leaves, with files it may have torn): open re-hashes
 * the whole store and drops every bad file before it returns, so neither the owner nor a
 * reader started after it can be served one. With the marker, open does not re-hash.
 */
static void test_inv1_unclean_stop_verifies_all_at_open(void **state)
{
	struct fixture *f = *state;
	struct chunkstore *cs = open_store(f->dir, 0, false), *reader;
	struct chunkstore_stats st;
	struct chunk_hash h0 = hash_n(0, CLEN), h5 = hash_n(5, CLEN), h6 = hash_n(6, CLEN);
	struct chunk_ref *ref;
	char p0[512], p5[512], p6[512];
	uint8_t *b0 = make_chunk(0, CLEN, &h0);

	assert_false(clean_marker(f->dir));
	for (unsigned i = 0; i < 5; i++)
		assert_int_equal(insert_n(cs, i, CLEN), 0);
	chunkstore_close(cs);
	assert_true(clean_marker(f->dir));
	owner_killed(f->dir, 5, 3);
	assert_false(clean_marker(f->dir)); /* taken by the open of the killed owner */
	/* what a power loss may leave: a chunk from before with wrong bytes, a new one torn,
	 * another one empty */
	chunk_file(f->dir, &h0, p0, sizeof(p0));
	chunk_file(f->dir, &h5, p5, sizeof(p5));
	chunk_file(f->dir, &h6, p6, sizeof(p6));
	b0[CLEN - 1] ^= 0x80;
	write_raw(p0, b0, CLEN);
	write_raw(p5, b0, CLEN / 3);
	write_raw(p6, b0, 0);

	cs = open_store(f->dir, 0, false);
	/* before any get: the bad files are gone, the index holds only good chunks */
	chunkstore_get_stats(cs, &st);
	assert_int_equal(st.dropped_corrupt, 3);
	assert_int_equal(st.nchunks, 5);
	assert_int_equal(st.hits + st.misses, 0);
	assert_false(file_exists(p0));
	assert_false(file_exists(p5));
	assert_false(file_exists(p6));
	reader = open_store(f->dir, 0, true);
	assert_int_equal(chunkstore_get(reader, &h0, &ref), -ENOENT);
	assert_int_equal(chunkstore_get(reader, &h5, &ref), -ENOENT);
	assert_int_equal(chunkstore_get(cs, &h0, &ref), -ENOENT);
	for (unsigned i = 1; i < 5; i++) {
		assert_int_equal(get_check(cs, i, CLEN), 0);
		assert_int_equal(get_check(reader, i, CLEN), 0);
	}
	assert_int_equal(get_check(cs, 7, CLEN), 0);
	chunkstore_close(reader);
	chunkstore_close(cs);
	assert_true(clean_marker(f->dir));
	assert_int_equal(chunkstore_fsck(f->dir, false, NULL, NULL), 0);
	free(b0);
}

/* An open that fails (another owner has the store) must not write the marker: the running
 * owner's unsynced inserts would then escape verification after a power loss. */
static void test_inv1_failed_open_leaves_no_marker(void **state)
{
	struct fixture *f = *state;
	struct chunkstore *cs = open_store(f->dir, 0, false), *other = NULL;
	struct chunkstore_opts o = {.dir = f->dir};

	chunkstore_close(cs);
	assert_true(clean_marker(f->dir));
	cs = open_store(f->dir, 0, false);
	assert_false(clean_marker(f->dir));
	assert_int_equal(insert_n(cs, 1, CLEN), 0);
	assert_int_equal(chunkstore_open(&o, &other), -EBUSY);
	assert_null(other);
	assert_false(clean_marker(f->dir));
	chunkstore_close(cs);
	assert_true(clean_marker(f->dir));
}

/* ---- invariants 2 and 3: hooks ---- */

static void log_event(const char *what, const struct chunk_hash *h, bool file_there, bool indexed)
{
	char hex[HASH_HEX_LEN + 1];

	hash_to_hex(h, hex);
	pthread_mutex_lock(&F->lock);
	if (F->nevents < 64)
		snprintf(F->events[F->nevents++], 80, "%s %.8s file=%d indexed=%d", what, hex,
			 file_there, indexed);
	pthread_mutex_unlock(&F->lock);
}

static void hook(const char *what, const struct chunk_hash *h)
{
	char path[512];

	chunk_file(F->dir, h, path, sizeof(path));
	log_event(what, h, file_exists(path), chunkstore_contains(F->cs, h));
}

static void on_announce(void *arg, const struct chunk_hash *h)
{
	hook("announce", h);
}

static void on_withdraw(void *arg, const struct chunk_hash *h)
{
	hook("withdraw", h);
}

static void test_inv2_inv3_hook_order(void **state)
{
	struct fixture *f = *state;
	struct chunkstore_opts o = {.dir = f->dir,
				    .capacity = 2 * CLEN,
				    .hooks = {.announce = on_announce, .withdraw = on_withdraw}};
	struct chunkstore *cs;
	char hex[3][HASH_HEX_LEN + 1], want[80], path[512];

	assert_int_equal(chunkstore_open(&o, &cs), 0);
	f->cs = cs;
	for (unsigned i = 0; i < 3; i++) {
		struct chunk_hash h = hash_n(i, CLEN);
		hash_to_hex(&h, hex[i]);
		assert_int_equal(insert_n(cs, i, CLEN), 0);
	}
	/* chunk 0 is the victim of the third insert: withdraw before its file goes */
	assert_int_equal(f->nevents, 4);
	snprintf(want, sizeof(want), "announce %.8s file=1 indexed=1", hex[0]);
	assert_string_equal(f->events[0], want);
	snprintf(want, sizeof(want), "announce %.8s file=1 indexed=1", hex[1]);
	assert_string_equal(f->events[1], want);
	/* withdrawn while the file still exists, and already out of the index */
	snprintf(want, sizeof(want), "withdraw %.8s file=1 indexed=0", hex[0]);
	assert_string_equal(f->events[2], want);
	snprintf(want, sizeof(want), "announce %.8s file=1 indexed=1", hex[2]);
	assert_string_equal(f->events[3], want);
	struct chunk_hash h0 = hash_n(0, CLEN);
	chunk_file(f->dir, &h0, path, sizeof(path));
	assert_false(file_exists(path));
	chunkstore_close(cs);
}

/* An insert made while chunk 0 is being announced, in a store with room for one chunk. */
static int nested_rc = 1;

static void on_announce_insert(void *arg, const struct chunk_hash *h)
{
	struct chunk_hash h0 = hash_n(0, CLEN);

	hook("announce", h);
	if (!memcmp(h, &h0, sizeof(h0)))
		nested_rc = insert_n(F->cs, 1, CLEN);
	hook("announced", h);
}

/*
 * Invariant 3 against a concurrent insert: a chunk is not evicted between entering the
 * index and the end of its announce. It was evictable there, so its withdraw could come
 * first and the announce then named us for a chunk we no longer had.
 */
static void test_inv3_not_evicted_before_announced(void **state)
{
	struct fixture *f = *state;
	struct chunkstore_opts o = {.dir = f->dir,
				    .capacity = CLEN,
				    .hooks = {.announce = on_announce_insert,
					      .withdraw = on_withdraw}};
	struct chunkstore *cs;
	char hex0[HASH_HEX_LEN + 1], want[80];
	struct chunk_hash h0 = hash_n(0, CLEN);

	assert_int_equal(chunkstore_open(&o, &cs), 0);
	f->cs = cs;
	hash_to_hex(&h0, hex0);
	assert_int_equal(insert_n(cs, 0, CLEN), 0);
	/* chunk 0 was pinned by its announce: no room for chunk 1 (invariant 4) */
	assert_int_equal(nested_rc, -ENOSPC);
	assert_int_equal(f->nevents, 2);
	snprintf(want, sizeof(want), "announce %.8s file=1 indexed=1", hex0);
	assert_string_equal(f->events[0], want);
	snprintf(want, sizeof(want), "announced %.8s file=1 indexed=1", hex0);
	assert_string_equal(f->events[1], want);
	/* once announced it is evictable as before */
	assert_int_equal(insert_n(cs, 1, CLEN), 0);
	assert_false(chunkstore_contains(cs, &h0));
	chunkstore_close(cs);
}

/* ---- invariants 4 and 5: capacity, eviction order, pinning ---- */

static void test_inv5_capacity_and_eviction_order(void **state)
{
	struct fixture *f = *state;
	struct chunkstore *cs = open_store(f->dir, 4 * CLEN, false);
	struct chunkstore_stats st;

	for (unsigned i = 0; i < 4; i++)
		assert_int_equal(insert_n(cs, i, CLEN), 0);
	/* chunk 0 is the oldest but is read again; 1 is the oldest never read again */
	assert_int_equal(get_check(cs, 0, CLEN), 0);
	assert_int_equal(insert_n(cs, 4, CLEN), 0);
	assert_true(contains_n(cs, 0));
	assert_false(contains_n(cs, 1));
	/* chunkstore_touch() (accesses seen by the tgt module) counts like a get */
	struct chunk_hash h2 = hash_n(2, CLEN);
	chunkstore_touch(cs, &h2);
	assert_int_equal(insert_n(cs, 5, CLEN), 0);
	assert_true(contains_n(cs, 2));
	assert_false(contains_n(cs, 3));
	chunkstore_get_stats(cs, &st);
	assert_int_equal(st.evictions, 2);
	assert_int_equal(st.bytes_evicted, 2 * CLEN);
	assert_int_equal(st.nchunks, 4);
	assert_true(st.bytes_used <= st.capacity);
	assert_int_equal(st.insert_failures, 0);
	/* a chunk larger than the whole store: refused, and counted (a fetched chunk the
	 * store could not keep is otherwise invisible: the read just times out) */
	assert_int_equal(insert_n(cs, 6, 5 * CLEN), -ENOSPC);
	chunkstore_get_stats(cs, &st);
	assert_int_equal(st.insert_failures, 1);
	chunkstore_close(cs);
}

static void test_inv4_pinned_never_evicted(void **state)
{
	struct fixture *f = *state;
	struct chunkstore *cs = open_store(f->dir, 2 * CLEN, false);
	struct chunkstore_stats st;
	struct chunk_ref *r0, *r1, *r0b;
	struct chunk_hash h0 = hash_n(0, CLEN), h1 = hash_n(1, CLEN);

	assert_int_equal(insert_n(cs, 0, CLEN), 0);
	assert_int_equal(insert_n(cs, 1, CLEN), 0);
	assert_int_equal(chunkstore_get(cs, &h0, &r0), 0);
	assert_int_equal(chunkstore_get(cs, &h0, &r0b), 0); /* pins count */
	assert_int_equal(chunkstore_get(cs, &h1, &r1), 0);
	chunkstore_get_stats(cs, &st);
	assert_int_equal(st.pinned, 2);
	assert_int_equal(insert_n(cs, 2, CLEN), -ENOSPC);
	chunkstore_get_stats(cs, &st);
	assert_int_equal(st.insert_failures, 1); /* everything pinned: counted */
	assert_true(contains_n(cs, 0));
	assert_true(contains_n(cs, 1));
	assert_false(contains_n(cs, 2));
	chunkstore_put(cs, r1);
	chunkstore_put(cs, r0);
	/* 0 is still pinned once: 1 must be the victim */
	assert_int_equal(insert_n(cs, 2, CLEN), 0);
	assert_true(contains_n(cs, 0));
	assert_false(contains_n(cs, 1));
	/* the pinned ref still reads correctly */
	uint8_t buf[CLEN], *want = make_chunk(0, CLEN, &h0);
	assert_int_equal(chunkstore_read(cs, r0b, buf, CLEN, 0), 0);
	assert_memory_equal(buf, want, CLEN);
	free(want);
	chunkstore_put(cs, r0b);
	chunkstore_get_stats(cs, &st);
	assert_int_equal(st.pinned, 0);
	assert_int_equal(insert_n(cs, 3, CLEN), 0);
	chunkstore_close(cs);
}

/* ---- invariant 6: one owner; readers ---- */

static void test_inv6_single_owner_and_reader_mode(void **state)
{
	struct fixture *f = *state;
	struct chunkstore *owner = open_store(f->dir, 3 * CLEN, false), *other = NULL;
	struct chunkstore_opts o = {.dir = f->dir};
	struct chunkstore *reader = open_store(f->dir, 0, true);
	struct chunk_hash h0 = hash_n(0, CLEN);
	struct chunk_ref *ref, *held;
	struct chunkstore_stats st;

	assert_int_equal(chunkstore_open(&o, &other), -EBUSY);
	assert_int_equal(chunkstore_get(reader, &h0, &ref), -ENOENT);
	assert_false(chunkstore_contains(reader, &h0));
	assert_int_equal(insert_n(owner, 0, CLEN), 0);
	assert_true(chunkstore_contains(reader, &h0));
	assert_int_equal(get_check(reader, 0, CLEN), 0);
	assert_int_equal(insert_n(reader, 1, CLEN), -EROFS);
	assert_int_equal(chunkstore_foreach(reader, count_cb, NULL), -EOPNOTSUPP);

	/* a reader holding a chunk is not hurt when the owner evicts it */
	assert_int_equal(chunkstore_get(reader, &h0, &held), 0);
	chunkstore_get_stats(reader, &st);
	assert_int_equal(st.pinned, 1);
	for (unsigned i = 1; i <= 4; i++)
		assert_int_equal(insert_n(owner, i, CLEN), 0);
	assert_false(chunkstore_contains(owner, &h0));
	uint8_t buf[CLEN], *want = make_chunk(0, CLEN, &h0);
	assert_int_equal(chunkstore_read(reader, held, buf, CLEN, 0), 0);
	assert_memory_equal(buf, want, CLEN);
	free(want);
	chunkstore_put(reader, held);
	/* many gets of hot chunks reuse descriptors: no descriptor leak */
	for (int k = 0; k < 3000; k++)
		assert_int_equal(get_check(reader, 2 + k % 3, CLEN), 0);
	chunkstore_get_stats(reader, &st);
	assert_int_equal(st.pinned, 0);
	assert_true(st.hits >= 3000);
	chunkstore_close(reader);
	chunkstore_close(owner);
	/* the lock is released with the owner */
	assert_int_equal(chunkstore_open(&o, &other), 0);
	chunkstore_close(other);
}

/* ---- invariant 7 and thread safety ---- */

struct worker {
	struct chunkstore *cs;
	unsigned id;
	unsigned inserts, rofs; /* inserts tried; of them, refused with EROFS */
	int insert_errors;      /* any other insert failure */
	int read_errors;        /* chunkstore_get failures other than ENOENT (a miss) */
	unsigned hits;
};

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	uint32_t x = w->id * 7919 + 1;

	for (unsigned k = 0; k < 300; k++) {
		x = x * 1103515245 + 12345;
		unsigned i = (x >> 8) % 60; /* overlapping sets: duplicates and races */
		int ret;

		if (k % 2 == 0) {
			ret = insert_n(w->cs, i, CLEN + (i % 3) * 512);
			w->inserts++;
			if (ret == -EROFS)
				w->rofs++;
			else if (ret)
				w->insert_errors++;
		} else {
			ret = get_check(w->cs, i, CLEN + (i % 3) * 512);
			if (ret == 0)
				w->hits++;
			else if (ret != -ENOENT)
				w->read_errors++;
		}
	}
	return NULL;
}

static void test_inv7_concurrent_inserts_and_reads(void **state)
{
	struct fixture *f = *state;
	const uint64_t cap = 20 * CLEN;
	struct chunkstore *cs = open_store(f->dir, cap, false);
	struct chunkstore *reader = open_store(f->dir, 0, true);
	struct worker w[6];
	pthread_t th[6];
	struct chunkstore_stats st;
	unsigned n = 0;

	/* A full store from the start, so that the readers' gets can hit whenever they run
	 * (without it a reader thread that ran early hit nothing, now and then). */
	for (unsigned i = 0; i < 16; i++)
		assert_int_equal(insert_n(cs, i, CLEN + (i % 3) * 512), 0);
	for (unsigned i = 0; i < 6; i++) {
		/* two of the threads read through a reader-mode handle */
		w[i] = (struct worker){.cs = i < 4 ? cs : reader, .id = i};
		if (i >= 4)
			w[i].cs = reader;
		assert_int_equal(pthread_create(&th[i], NULL, worker_main, &w[i]), 0);
	}
	for (unsigned i = 0; i < 6; i++)
		pthread_join(th[i], NULL);
	for (unsigned i = 0; i < 6; i++) {
		/* every get hits or misses; every insert succeeds on the owner's handle and
		 * is refused with EROFS, by design, on a reader's */
		assert_int_equal(w[i].read_errors, 0);
		assert_int_equal(w[i].insert_errors, 0);
		assert_int_equal(w[i].rofs, i < 4 ? 0 : w[i].inserts);
		/* and a reader's gets find what the owner inserted */
		if (i >= 4)
			assert_true(w[i].hits > 0);
	}
	chunkstore_get_stats(cs, &st);
	assert_true(st.bytes_used <= cap);
	assert_int_equal(st.pinned, 0);
	assert_int_equal(chunkstore_foreach(cs, count_cb, &n), 0);
	assert_int_equal(n, st.nchunks);
	assert_true(st.evictions > 0);
	chunkstore_close(reader);
	chunkstore_close(cs);
	/* everything on disk is sound and matches the index */
	assert_int_equal(chunkstore_fsck(f->dir, false, NULL, NULL), 0);
	cs = open_store(f->dir, cap, false);
	struct chunkstore_stats st2;
	chunkstore_get_stats(cs, &st2);
	assert_int_equal(st2.nchunks, st.nchunks);
	assert_int_equal(st2.bytes_used, st.bytes_used);
	chunkstore_close(cs);
}

/* ---- fsck and O_DIRECT ---- */

static void count_report(void *arg, const char *path, const char *problem)
{
	(*(int *)arg)++;
}

static void test_fsck_reports_and_repairs(void **state)
{
	struct fixture *f = *state;
	struct chunkstore *cs = open_store(f->dir, 0, false);
	struct chunk_hash h0 = hash_n(0, CLEN);
	char p[512];
	uint8_t junk[10] = {0};
	int reported = 0;

	for (unsigned i = 0; i < 5; i++)
		assert_int_equal(insert_n(cs, i, CLEN), 0);
	/* an owner is running: repair is refused */
	assert_int_equal(chunkstore_fsck(f->dir, true, NULL, NULL), -EBUSY);
	assert_int_equal(chunkstore_fsck(f->dir, false, NULL, NULL), 0);
	chunkstore_close(cs);
	chunk_file(f->dir, &h0, p, sizeof(p));
	write_raw(p, junk, sizeof(junk)); /* corrupt */
	snprintf(p, sizeof(p), "%s/chunks/ab/xyz", f->dir);
	write_raw(p, junk, sizeof(junk)); /* misnamed */
	snprintf(p, sizeof(p), "%s/tmp/leftover", f->dir);
	write_raw(p, junk, sizeof(junk)); /* temp */
	assert_int_equal(chunkstore_fsck(f->dir, false, count_report, &reported), 3);
	assert_int_equal(reported, 3);
	assert_true(file_exists(p)); /* no repair: nothing removed */
	assert_int_equal(chunkstore_fsck(f->dir, true, NULL, NULL), 3);
	assert_false(file_exists(p));
	assert_int_equal(chunkstore_fsck(f->dir, false, NULL, NULL), 0);
	cs = open_store(f->dir, 0, false);
	for (unsigned i = 1; i < 5; i++)
		assert_int_equal(get_check(cs, i, CLEN), 0);
	chunkstore_close(cs);
	assert_int_equal(chunkstore_fsck("/nonexistent-rackdisk", false, NULL, NULL), -ENOENT);
}

static void test_direct_io_reads(void **state)
{
	struct fixture *f = *state;
	struct chunkstore_opts o = {.dir = f->dir, .direct_io = true};
	struct chunkstore *cs;

	assert_int_equal(chunkstore_open(&o, &cs), 0);
	for (unsigned i = 0; i < 4; i++)
		assert_int_equal(insert_n(cs, i, CLEN * 3 + i * 100), 0);
	for (unsigned i = 0; i < 4; i++)
		assert_int_equal(get_check(cs, i, CLEN * 3 + i * 100), 0);
	chunkstore_close(cs);
	o.reader = true;
	assert_int_equal(chunkstore_open(&o, &cs), 0);
	for (unsigned i = 0; i < 4; i++)
		assert_int_equal(get_check(cs, i, CLEN * 3 + i * 100), 0);
	chunkstore_close(cs);
}

static struct chunkstore_stats reader_stats(struct chunkstore *cs)
{
	struct chunkstore_stats st;

	chunkstore_get_stats(cs, &st);
	return st;
}

struct opener {
	const char *dir;
	struct chunkstore *cs;
	int rc;
};

static void *opener_main(void *arg)
{
	struct opener *o = arg;
	struct chunkstore_opts so = {.dir = o->dir};

	o->rc = chunkstore_open(&so, &o->cs);
	return NULL;
}

/*
 * Invariant 1a across an unclean stop: the owner that re-hashes the store at open must
 * not let the dead owner's session vouch for files meanwhile. The session file stayed
 * for the whole re-hash, so a reader opened in that window served files the power loss
 * had torn (inserted after the session's start: trusted, never hashed). The owner is held
 * in the window by stderr: a pipe filled to the brim blocks the line its scan logs for
 * the first bad file. No assertion runs while stderr is that pipe.
 */
static void test_inv1a_no_vouching_while_the_owner_rehashes(void **state)
{
	enum { NBAD = 32 };
	struct fixture *f = *state;
	struct chunkstore *cs = open_store(f->dir, 0, false), *rd = NULL;
	struct opener op = {.dir = f->dir};
	struct stderr_hold hold;
	uint8_t junk[CLEN];
	int served = 0, rd_rc, i;
	bool held = false;
	pthread_t t;
	char p[512];

	assert_int_equal(insert_n(cs, 1, CLEN), 0);
	chunkstore_close(cs);
	owner_killed(f->dir, 100, NBAD); /* its session vouches for what it inserted */
	memset(junk, 0xa5, sizeof(junk));
	for (i = 0; i < NBAD; i++) { /* torn by the power loss: same length, other bytes */
		struct chunk_hash h = hash_n(100 + i, CLEN);

		chunk_file(f->dir, &h, p, sizeof(p));
		write_raw(p, junk, sizeof(junk));
	}
	assert_int_equal(stderr_hold(&hold), 0);
	if (pthread_create(&t, NULL, opener_main, &op) == 0) {
		/* the store's scan threads log each bad file they find */
		held = stderr_hold_wait_blocked(5000);
		/* the held line keeps stderr's lock: this thread's own warnings (a reader
		 * that finds a torn file says so) are not printed, or they would wait too */
		log_init("rackdisk", LOG_LVL_ERROR, 1);
		{
			struct chunkstore_opts ro = {.dir = f->dir, .reader = true};

			rd_rc = chunkstore_open(&ro, &rd);
		}
		for (i = 0; rd && i < NBAD; i++) {
			struct chunk_hash h = hash_n(100 + i, CLEN);
			struct chunk_ref *ref;

			if (chunkstore_get(rd, &h, &ref) == 0) {
				served++;
				chunkstore_put(rd, ref);
			}
		}
		log_init("rackdisk", LOG_LVL_INFO, 1);
		stderr_hold_restore(&hold);
		for (i = 0; i < 2000 && !__atomic_load_n(&op.cs, __ATOMIC_ACQUIRE) && !op.rc; i++) {
			stderr_hold_drain(&hold);
			usleep(5000);
		}
		pthread_join(t, NULL);
	} else {
		stderr_hold_restore(&hold);
		rd_rc = -1;
	}
	stderr_hold_close(&hold);

	assert_true(held);		  /* the owner was inside its re-hash */
	assert_int_equal(rd_rc, 0);
	assert_int_equal(served, 0);	  /* every torn file refused (or already gone) */
	assert_int_equal(op.rc, 0);
	chunkstore_close(rd);
	chunkstore_close(op.cs);
}

/* Invariant 1a: a reader re-hashes, once, each file its owner's session does not vouch
 * for, and refuses a bad one (-EBADMSG) until the owner, told, drops it. */
static void test_inv1a_reader_verifies_what_the_owner_did_not(void **state)
{
	struct fixture *f = *state;
	struct chunkstore *owner = open_store(f->dir, 0, false), *rd;
	struct chunk_ref *ref;
	struct chunk_hash ha = hash_n(1, CLEN), hb = hash_n(2, CLEN), hc = hash_n(3, CLEN);
	char pa[512], sess[300];
	uint8_t junk[CLEN];

	assert_int_equal(insert_n(owner, 1, CLEN), 0);
	assert_int_equal(insert_n(owner, 2, CLEN), 0);
	chunkstore_close(owner); /* clean */
	/* bit rot while stopped: same length, other bytes */
	chunk_file(f->dir, &ha, pa, sizeof(pa));
	memset(junk, 0x5a, sizeof(junk));
	write_raw(pa, junk, sizeof(junk));
	usleep(20000); /* past the coarse clock of file times */
	owner = open_store(f->dir, 0, false); /* clean open: no re-hash */
	usleep(20000); /* file times use a coarse clock: a tick after the session's start */
	assert_int_equal(insert_n(owner, 3, CLEN), 0); /* this session's: verified */
	rd = open_store(f->dir, 0, true);
	assert_int_equal(chunkstore_get(rd, &ha, &ref), -EBADMSG);
	assert_int_equal(reader_stats(rd).reader_corrupt, 1);
	assert_int_equal(chunkstore_get(rd, &hb, &ref), 0);
	chunkstore_put(rd, ref);
	assert_int_equal(reader_stats(rd).reader_verified, 2);
	assert_int_equal(chunkstore_get(rd, &hb, &ref), 0); /* once per reader */
	chunkstore_put(rd, ref);
	assert_int_equal(chunkstore_get(rd, &hc, &ref), 0); /* vouched for: not hashed */
	chunkstore_put(rd, ref);
	assert_int_equal(reader_stats(rd).reader_verified, 2);
	assert_int_equal(get_check(rd, 3, CLEN), 0);
	/* the owner, told, re-checks: a, bad, is dropped; b is fine */
	assert_int_equal(chunkstore_recheck(owner, &ha), 1);
	assert_false(file_exists(pa));
	assert_int_equal(chunkstore_recheck(owner, &hb), 0);
	assert_int_equal(chunkstore_recheck(owner, &ha), 0);
	assert_int_equal(chunkstore_get(rd, &ha, &ref), -ENOENT);
	/* a fresh copy is served */
	assert_int_equal(insert_n(owner, 1, CLEN), 0);
	assert_int_equal(get_check(rd, 1, CLEN), 0);
	assert_int_equal(chunkstore_recheck(rd, &ha), -EROFS);
	chunkstore_close(rd);
	/* without a session file a reader vouches for nothing: c is hashed too */
	snprintf(sess, sizeof(sess), "%s/session", f->dir);
	assert_int_equal(unlink(sess), 0);
	rd = open_store(f->dir, 0, true);
	assert_int_equal(get_check(rd, 3, CLEN), 0);
	assert_int_equal(reader_stats(rd).reader_verified, 1);
	chunkstore_close(rd);
	chunkstore_close(owner);
	/* after an unclean stop the owner's open re-hashes everything: "verified" */
	owner = open_store(f->dir, 0, false);
	chunkstore_close(owner);
	snprintf(pa, sizeof(pa), "%s/clean", f->dir);
	assert_int_equal(unlink(pa), 0);
	owner = open_store(f->dir, 0, false);
	rd = open_store(f->dir, 0, true);
	assert_int_equal(get_check(rd, 2, CLEN), 0);
	assert_int_equal(reader_stats(rd).reader_verified, 0);
	chunkstore_close(rd);
	chunkstore_close(owner);
}

/* Pages of the file at path that are in the page cache. */
static size_t resident_pages(const char *path)
{
	struct stat st;
	unsigned char vec[1024];
	size_t n = 0, pages;
	void *m;
	int fd = open(path, O_RDONLY);

	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &st), 0);
	pages = ((size_t)st.st_size + 4095) / 4096;
	assert_true(pages > 0 && pages <= sizeof(vec));
	m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, fd, 0);
	assert_true(m != MAP_FAILED);
	assert_int_equal(mincore(m, (size_t)st.st_size, vec), 0);
	for (size_t i = 0; i < pages; i++)
		n += vec[i] & 1;
	munmap(m, (size_t)st.st_size);
	close(fd);
	return n;
}

/* Chunk number i in a buffer at offset `skew` from an AIO_ALIGN boundary (free *base). */
static uint8_t *make_placed(unsigned i, size_t len, size_t skew, struct chunk_hash *h,
			    uint8_t **base)
{
	uint8_t *b = make_chunk(i, len, h);

	assert_int_equal(posix_memalign((void **)base, AIO_ALIGN, len + AIO_ALIGN), 0);
	memcpy(*base + skew, b, len);
	free(b);
	return *base + skew;
}

/* A direct_io store writes aligned chunks past the page cache, and the rest through it. */
static void test_direct_io_inserts(void **state)
{
	struct fixture *f = *state;
	struct chunkstore_opts o = {.dir = f->dir, .direct_io = true};
	const size_t len = 64 * 4096;
	struct chunk_hash ha, hu, hs, hb;
	uint8_t *a, *u, *b, *base[3];
	char pa[512], pu[512], ps[512], pb[512];
	struct chunkstore *cs;

	assert_true(aio_direct_supported(f->dir)); /* the fixture is on a real disk */
	a = make_placed(7, len, 0, &ha, &base[0]);
	u = make_placed(8, len, AIO_ALIGN / 2 + 1, &hu, &base[1]);
	b = make_placed(10, len, 0, &hb, &base[2]);
	hs = hash_n(9, len - 100);
	assert_int_equal(chunkstore_open(&o, &cs), 0);
	assert_int_equal(chunkstore_insert(cs, &ha, a, len), 0);
	assert_int_equal(chunkstore_insert(cs, &hu, u, len), 0); /* unaligned buffer */
	assert_int_equal(insert_n(cs, 9, len - 100), 0);	   /* short length */
	chunk_file(f->dir, &ha, pa, sizeof(pa));
	chunk_file(f->dir, &hu, pu, sizeof(pu));
	chunk_file(f->dir, &hs, ps, sizeof(ps));
	chunk_file(f->dir, &hb, pb, sizeof(pb));
	assert_int_equal(resident_pages(pa), 0);
	assert_int_equal(resident_pages(pu), 64);
	assert_int_equal(resident_pages(ps), 64);
	assert_int_equal(get_check(cs, 7, len), 0);
	assert_int_equal(get_check(cs, 8, len), 0);
	assert_int_equal(get_check(cs, 9, len - 100), 0);
	chunkstore_close(cs);
	/* A buffered store fills the page cache with the same kind of insert. */
	o.direct_io = false;
	assert_int_equal(chunkstore_open(&o, &cs), 0);
	assert_int_equal(chunkstore_insert(cs, &hb, b, len), 0);
	assert_int_equal(resident_pages(pb), 64);
	assert_int_equal(get_check(cs, 10, len), 0);
	assert_int_equal(get_check(cs, 7, len), 0);
	chunkstore_close(cs);
	for (int i = 0; i < 3; i++)
		free(base[i]);
}

static unsigned count_fds(void)
{
	unsigned n = 0;
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;

	assert_non_null(d);
	while ((de = readdir(d)))
		n += de->d_name[0] != '.';
	closedir(d);
	return n;
}

/* The reader's descriptor cache keeps at most 1024 idle descriptors open. */
static void test_reader_fd_cache_bounded(void **state)
{
	struct fixture *f = *state;
	const unsigned n = 1300;
	struct chunkstore *owner = open_store(f->dir, 0, false), *reader;
	unsigned before, base;

	chunkstore_close(owner);	   /* it created the directories */
	for (unsigned i = 0; i < n; i++) { /* files as the owner would publish them */
		struct chunk_hash h;
		uint8_t *b = make_chunk(i, 512, &h);
		char path[512];

		chunk_file(f->dir, &h, path, sizeof(path));
		write_raw(path, b, 512);
		free(b);
	}
	base = count_fds();
	reader = open_store(f->dir, 0, true);
	before = count_fds();
	for (unsigned i = 0; i < n; i++)
		assert_int_equal(get_check(reader, i, 512), 0);
	assert_true(count_fds() <= before + 1024);
	assert_true(count_fds() >= before + 1000); /* and it does cache */
	/* hot chunks are served from cached descriptors, old ones reopened on demand */
	for (unsigned i = 0; i < n; i += 7)
		assert_int_equal(get_check(reader, i, 512), 0);
	assert_true(count_fds() <= before + 1024);
	chunkstore_close(reader);
	assert_int_equal(count_fds(), base);
}

/* Descriptors this process holds on files that no longer have a name. */
static unsigned count_deleted_fds(void)
{
	unsigned n = 0;
	DIR *d = opendir("/proc/self/fd");
	struct dirent *de;

	assert_non_null(d);
	while ((de = readdir(d))) {
		char p[300], target[PATH_MAX];
		ssize_t len;

		if (de->d_name[0] == '.')
			continue;
		snprintf(p, sizeof(p), "/proc/self/fd/%s", de->d_name);
		len = readlink(p, target, sizeof(target) - 1);
		if (len > 0) {
			target[len] = '\0';
			n += strstr(target, " (deleted)") != NULL;
		}
	}
	closedir(d);
	return n;
}

/* A reader's idle descriptors of chunks its owner evicted are closed by its next get once
 * a sweep is due (FDCACHE_SWEEP_NS, 1 s), so the evicted files' space is freed; they used
 * to stay open until pushed out of the 1024-slot cache. */
static void test_reader_closes_descriptors_of_evicted_chunks(void **state)
{
	struct fixture *f = *state;
	struct chunkstore *owner = open_store(f->dir, 2 * CLEN, false), *reader;

	assert_int_equal(insert_n(owner, 0, CLEN), 0);
	assert_int_equal(insert_n(owner, 1, CLEN), 0);
	reader = open_store(f->dir, 0, true);
	assert_int_equal(get_check(reader, 0, CLEN), 0);
	assert_int_equal(get_check(reader, 1, CLEN), 0);
	assert_int_equal(count_deleted_fds(), 0);
	assert_int_equal(insert_n(owner, 2, CLEN), 0); /* evicts 0 and then 1 */
	assert_int_equal(insert_n(owner, 3, CLEN), 0);
	assert_false(contains_n(owner, 0));
	assert_false(contains_n(owner, 1));
	assert_int_equal(count_deleted_fds(), 2); /* the reader still holds both */
	usleep(1100 * 1000);
	assert_int_equal(get_check(reader, 2, CLEN), 0);
	assert_int_equal(count_deleted_fds(), 0);
	/* a chunk still held keeps its descriptor */
	assert_int_equal(get_check(reader, 3, CLEN), 0);
	assert_int_equal(get_check(reader, 2, CLEN), 0);
	chunkstore_close(reader);
	chunkstore_close(owner);
}

int main(void)
{
#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_insert_get_put),
		T(test_duplicate_insert_is_noop),
		T(test_reopen_rebuilds_index),
		T(test_inv1_torn_files_dropped_at_open),
		T(test_inv1_corrupt_never_served),
		T(test_inv1_crash_during_inserts),
		T(test_inv1_unclean_stop_verifies_all_at_open),
		T(test_inv1_failed_open_leaves_no_marker),
		T(test_inv2_inv3_hook_order),
		T(test_inv3_not_evicted_before_announced),
		T(test_inv5_capacity_and_eviction_order),
		T(test_inv4_pinned_never_evicted),
		T(test_inv6_single_owner_and_reader_mode),
		T(test_inv7_concurrent_inserts_and_reads),
		T(test_fsck_reports_and_repairs),
		T(test_direct_io_reads),
		T(test_direct_io_inserts),
		T(test_inv1a_reader_verifies_what_the_owner_did_not),
		T(test_inv1a_no_vouching_while_the_owner_rehashes),
		T(test_reader_fd_cache_bounded),
		T(test_reader_closes_descriptors_of_evicted_chunks),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
