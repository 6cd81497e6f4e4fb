/*
 * test_disk.c - a disk over an image and the chunk store: merged reads, read-modify-write,
 * zero chunks and the image's end, UNMAP, grow, COMPARE AND WRITE, threads, the miss
 * callback and its deadline, GET LBA STATUS, reopen, FUA, PRE-FETCH, corrupt maps, and
 * the invariants of cache/disk.c. Every check compares with a byte model of the disk.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "cache/overlay.h"
#include "tests/unit/cache/disk_fixture.h"

#define CS (64u * 1024) /* chunk size of the test images */

struct t {
	struct fixture fx;
	struct disk *d;
	uint8_t *model; /* what the disk must read as */
	uint64_t size;
};

/* Image of 40 chunks + 1000 bytes (short last chunk), every 4th chunk zero, all cached;
 * disk 1 MiB larger than the image. */
static int setup(void **state)
{
	struct t *t = calloc(1, sizeof(*t));
	uint64_t isize = 40 * CS + 1000;

	t->size = DIV_ROUND_UP(isize, 512) * 512 + MiB;
	if (fx_setup(&t->fx, isize, CS, 4, true, t->size, 1) < 0)
		return -1;
	if (fx_open_disk(&t->fx, &t->d) < 0)
		return -1;
	t->model = calloc(1, t->size);
	memcpy(t->model, t->fx.image, isize);
	*state = t;
	return 0;
}

static int teardown(void **state)
{
	struct t *t = *state;

	disk_close(t->d);
	fx_teardown(&t->fx);
	free(t->model);
	free(t);
	return 0;
}

static void check_all(struct t *t)
{
	uint8_t *buf = malloc(t->size);

	assert_int_equal(disk_read(t->d, buf, t->size, 0), 0);
	for (uint64_t i = 0; i < t->size; i++)
		if (buf[i] != t->model[i])
			fail_msg("byte %llu: %02x, want %02x", (unsigned long long)i, buf[i],
				 t->model[i]);
	free(buf);
}

static void do_write(struct t *t, uint64_t off, size_t len, uint8_t seed, unsigned flags)
{
	uint8_t *b = malloc(len);

	for (size_t i = 0; i < len; i++)
		b[i] = (uint8_t)(seed + i * 7);
	assert_int_equal(disk_write(t->d, b, len, off, flags), 0);
	memcpy(t->model + off, b, len);
	free(b);
}

static void reopen(struct t *t)
{
	disk_close(t->d);
	t->d = NULL;
	assert_int_equal(fx_open_disk(&t->fx, &t->d), 0);
}

static void test_fresh_reads_image(void **state)
{
	struct t *t = *state;
	uint8_t buf[8192];

	check_all(t);
	/* Zero chunk 3, the image's last bytes, and past them. */
	assert_true(manifest_chunk_is_zero(t->fx.m, 3));
	assert_int_equal(disk_read(t->d, buf, sizeof(buf), 3 * CS), 0);
	assert_true(buf_is_zero(buf, sizeof(buf)));
	assert_int_equal(disk_read(t->d, buf, 0, t->size), 0);
	assert_int_equal(disk_read(t->d, buf, 1, t->size), -ERANGE);
	assert_int_equal(disk_read(t->d, buf, 2, t->size - 1), -ERANGE);
	assert_int_equal(disk_size(t->d), t->size);
}

static void test_merge_and_rmw(void **state)
{
	struct t *t = *state;
	struct disk_stats st;

	do_write(t, 0, 4096, 1, 0);                 /* one grain */
	do_write(t, 10000, 20000, 2, 0);            /* partial edges */
	do_write(t, 3 * CS - 700, 1400, 3, 0);      /* across image and zero chunk */
	do_write(t, 5 * CS + 512, 512, 4, 0);       /* one sector */
	do_write(t, 5 * CS + 1, 1, 5, 0);           /* one byte */
	do_write(t, 5 * CS + 4095, 2, 6, 0);        /* across a grain edge */
	do_write(t, 40 * CS + 900, 300, 7, 0);      /* over the image's end */
	do_write(t, t->size - 700, 700, 8, 0);      /* the disk's end */
	do_write(t, 6 * CS + 4096, 3 * 4096, 9, 0); /* aligned */
	do_write(t, 6 * CS + 4096 + 100, 50, 10, 0); /* in place inside a DATA grain */
	check_all(t);
	disk_get_stats(t->d, &st);
	assert_int_equal(st.writes, 10);
	assert_int_equal(st.overlay_bytes, 16 * 4096); /* 1+6+2+1+0+1+1+1+3+0 grains */
	assert_int_equal(disk_write(t->d, "x", 1, t->size, 0), -ERANGE);
	/* Flushed writes survive a reopen. */
	assert_int_equal(disk_flush(t->d), 0);
	reopen(t);
	check_all(t);
}

/* overlay.c invariant 1: grain g's data sits at g * 4096 of overlay.data. */
static void test_identity_mapping(void **state)
{
	struct t *t = *state;
	char path[PATH_MAX + 32];
	uint8_t buf[4096];
	int fd;

	do_write(t, 7 * 4096, 4096, 77, 0);
	do_write(t, 9 * 4096 + 10, 10, 78, 0);
	snprintf(path, sizeof(path), "%s/%s", t->fx.disk_dir, OVERLAY_DATA_FILE);
	fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(pread_full(fd, buf, 4096, 7 * 4096), 0);
	assert_memory_equal(buf, t->model + 7 * 4096, 4096);
	assert_int_equal(pread_full(fd, buf, 4096, 9 * 4096), 0);
	assert_memory_equal(buf, t->model + 9 * 4096, 4096); /* the RMW took the image */
	close(fd);
}

static void test_unmap(void **state)
{
	struct t *t = *state;
	struct disk_stats st;
	char path[PATH_MAX + 32];
	struct stat sb0, sb1;

	do_write(t, 0, 16 * CS, 11, DISK_FUA);
	snprintf(path, sizeof(path), "%s/%s", t->fx.disk_dir, OVERLAY_DATA_FILE);
	assert_int_equal(stat(path, &sb0), 0);
	/* Full grains, sub-grain edges, image grains, the disk's last short grain. */
	assert_int_equal(disk_unmap(t->d, 1000, 8 * CS, 0), 0);
	memset(t->model + 1000, 0, 8 * CS);
	assert_int_equal(disk_unmap(t->d, 20 * CS + 5, 3000, 0), 0);
	memset(t->model + 20 * CS + 5, 0, 3000);
	assert_int_equal(disk_unmap(t->d, 30 * CS, 2 * CS, DISK_FUA), 0);
	memset(t->model + 30 * CS, 0, 2 * CS);
	assert_int_equal(disk_unmap(t->d, t->size - 4096 - 512, 4096 + 512, 0), 0);
	memset(t->model + t->size - 4096 - 512, 0, 4096 + 512);
	assert_int_equal(disk_unmap(t->d, t->size, 1, 0), -ERANGE);
	check_all(t);
	/* Space is released (punched holes). */
	assert_int_equal(stat(path, &sb1), 0);
	assert_true(sb1.st_blocks < sb0.st_blocks);
	disk_get_stats(t->d, &st);
	/* 256 grains written; 127 whole ones unmapped in the first range; one grain RMW'd
	 * to zeros at 20 * CS; the disk's last grains: 895 RMW'd, 896 (short) unmapped. */
	assert_int_equal(st.overlay_bytes, (256 - 127 + 1 + 1) * 4096);
	assert_int_equal(disk_flush(t->d), 0);
	reopen(t);
	check_all(t);
}

static void test_grow(void **state)
{
	struct t *t = *state;
	uint64_t old = t->size;
	uint8_t *m;

	assert_int_equal(disk_grow(t->d, old - 512), -EINVAL);
	assert_int_equal(disk_grow(t->d, old + 64 * MiB + 512), 0);
	t->size = old + 64 * MiB + 512;
	m = realloc(t->model, t->size);
	t->model = m;
	memset(m + old, 0, t->size - old);
	assert_int_equal(disk_size(t->d), t->size);
	do_write(t, old + 100, 10000, 12, 0);
	do_write(t, t->size - 512, 512, 13, DISK_FUA);
	check_all(t);
	reopen(t); /* durable without a flush */
	assert_int_equal(disk_size(t->d), t->size);
	check_all(t);
}

static void test_compare_and_write(void **state)
{
	struct t *t = *state;
	uint8_t cmp[2048], data[2048];
	uint64_t off = 2 * CS + 1024, mis = 12345;

	memcpy(cmp, t->model + off, sizeof(cmp));
	memset(data, 0x3c, sizeof(data));
	assert_int_equal(disk_compare_and_write(t->d, cmp, data, sizeof(cmp), off, 0, &mis), 0);
	assert_int_equal(mis, 12345);
	memcpy(t->model + off, data, sizeof(data));
	check_all(t);
	/* Mismatch at byte 777: nothing written, the offset reported. */
	memcpy(cmp, data, sizeof(cmp));
	cmp[777] ^= 0xff;
	memset(data, 0x99, sizeof(data));
	assert_int_equal(disk_compare_and_write(t->d, cmp, data, sizeof(cmp), off, 0, &mis),
			 -EILSEQ);
	assert_int_equal(mis, 777);
	check_all(t);
	assert_int_equal(disk_compare_and_write(t->d, cmp, data, 10, t->size - 5, 0, &mis),
			 -ERANGE);
}

struct worker {
	struct disk *d;
	unsigned id;
	int err;
	uint64_t *counter_off;
	unsigned incs;
};

/* Thread id owns sector id of every grain in the first 64 grains: sub-grain writes to
 * the same grains from all threads at once (invariant 2: RMW serialised per grain). */
static void *sector_writer(void *arg)
{
	struct worker *w = arg;
	uint8_t sec[512], rd[4096];

	for (int round = 0; round < 20; round++) {
		for (uint64_t g = 0; g < 64; g++) {
			memset(sec, (int)(w->id * 31 + round + g), sizeof(sec));
			if (disk_write(w->d, sec, 512, g * 4096 + w->id * 512, 0) < 0)
				w->err = 1;
			if (disk_read(w->d, rd, 4096, g * 4096) < 0 ||
			    memcmp(rd + w->id * 512, sec, 512) != 0)
				w->err = 2;
		}
		if (round % 5 == 0 && disk_flush(w->d) < 0)
			w->err = 3;
	}
	return NULL;
}

static void test_threads_sub_grain(void **state)
{
	struct t *t = *state;
	enum { N = 8 };
	struct worker w[N];
	pthread_t th[N];
	uint8_t buf[4096];

	for (unsigned i = 0; i < N; i++) {
		w[i] = (struct worker){ .d = t->d, .id = i };
		assert_int_equal(pthread_create(&th[i], NULL, sector_writer, &w[i]), 0);
	}
	for (unsigned i = 0; i < N; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		assert_int_equal(w[i].err, 0);
	}
	for (uint64_t g = 0; g < 64; g++) {
		assert_int_equal(disk_read(t->d, buf, 4096, g * 4096), 0);
		for (unsigned i = 0; i < N; i++) {
			uint8_t want = (uint8_t)(i * 31 + 19 + g);

			for (unsigned b = 0; b < 512; b++)
				assert_int_equal(buf[i * 512 + b], want);
		}
	}
}

/* A counter incremented by COMPARE AND WRITE loops from many threads: lost updates would
 * show as a short count (invariant 2, atomicity against other writes). */
static void *caw_incrementer(void *arg)
{
	struct worker *w = arg;

	for (unsigned i = 0; i < w->incs;) {
		uint64_t cur[64], next[64], mis;
		int rc;

		if (disk_read(w->d, cur, sizeof(cur), *w->counter_off) < 0) {
			w->err = 1;
			return NULL;
		}
		memcpy(next, cur, sizeof(next));
		next[0]++;
		next[63] = w->id;
		rc = disk_compare_and_write(w->d, cur, next, sizeof(cur), *w->counter_off, 0, &mis);
		if (rc == 0)
			i++;
		else if (rc != -EILSEQ)
			w->err = 2;
		/* Plain writes of the neighbouring sector race with the CAWs of the grain. */
		if (disk_write(w->d, next, 512, *w->counter_off + 512 * (1 + w->id % 7), 0) < 0)
			w->err = 3;
	}
	return NULL;
}

static void test_threads_caw(void **state)
{
	struct t *t = *state;
	enum { N = 6, INCS = 150 };
	struct worker w[N];
	pthread_t th[N];
	uint64_t off = 9 * CS + 4096 - 256, cur[64]; /* straddles a grain edge */

	memset(cur, 0, sizeof(cur));
	assert_int_equal(disk_write(t->d, cur, sizeof(cur), off, 0), 0);
	for (unsigned i = 0; i < N; i++) {
		w[i] = (struct worker){ .d = t->d, .id = i, .counter_off = &off, .incs = INCS };
		assert_int_equal(pthread_create(&th[i], NULL, caw_incrementer, &w[i]), 0);
	}
	for (unsigned i = 0; i < N; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		assert_int_equal(w[i].err, 0);
	}
	assert_int_equal(disk_read(t->d, cur, sizeof(cur), off), 0);
	assert_int_equal(cur[0], N * INCS);
}

/* ---- the miss callback ---- */

struct missctx {
	struct fixture *fx;
	int calls;
	int mode; /* 0 insert, 1 sleep past the deadline, 2 say yes but do nothing,
		   * 3 insert after 120 ms */
	uint64_t last_idx;
	uint32_t last_len;
	int accesses;
	uint64_t last_access_idx;
};

static int miss_cb(void *arg, const struct chunk_hash *h, uint64_t idx, uint32_t len,
		   uint64_t deadline_ns)
{
	struct missctx *m = arg;

	m->calls++;
	m->last_idx = idx;
	m->last_len = len;
	if (!hash_equal(h, &m->fx->m->hashes[idx]))
		return -EINVAL;
	if (m->mode == 3)
		usleep(120000);
	if (m->mode == 0 || m->mode == 3)
		return fx_insert_chunk(m->fx, idx);
	if (m->mode == 1) {
		while (now_ns() < deadline_ns)
			usleep(1000);
		return -ETIMEDOUT;
	}
	return 0;
}

static void access_cb(void *arg, const struct chunk_hash *h, uint64_t idx)
{
	struct missctx *mc = arg;

	mc->accesses++;
	mc->last_access_idx = idx;
	assert_true(idx < mc->fx->m->nchunks);
	assert_memory_equal(h->b, mc->fx->m->hashes[idx].b, HASH_LEN);
}

static void test_miss_callback(void **state)
{
	struct fixture fx;
	struct missctx mc = { .fx = &fx };
	struct disk *d;
	struct disk_opts o;
	struct disk_stats st;
	uint8_t buf[1000];
	uint64_t t0;

	assert_int_equal(fx_setup(&fx, 8 * CS + 1000, CS, 0, false, 0, 2), 0);
	o = (struct disk_opts){ .dir = fx.disk_dir, .image = fx.m, .store = fx.cs,
				.miss = miss_cb, .miss_arg = &mc, .io_timeout_ns = 200000000,
				.on_chunk_access = access_cb };
	assert_int_equal(disk_open(&o, &d), 0);
	/* Filled by the callback, then read. */
	assert_int_equal(disk_read(d, buf, sizeof(buf), 8 * CS + 10), 0);
	assert_memory_equal(buf, fx.image + 8 * CS + 10, 990);
	assert_true(buf_is_zero(buf + 990, 10));
	assert_int_equal(mc.calls, 1);
	assert_int_equal(mc.last_idx, 8);
	assert_int_equal(mc.last_len, 1000);
	assert_true(mc.accesses >= 1);
	assert_int_equal(mc.last_access_idx, 8);
	assert_int_equal(disk_read(d, buf, sizeof(buf), 8 * CS + 10), 0);
	assert_int_equal(mc.calls, 1); /* now cached */
	/* A callback that cannot deliver before the deadline: -ETIMEDOUT, in bounded time. */
	mc.mode = 1;
	t0 = now_ns();
	assert_int_equal(disk_read(d, buf, sizeof(buf), 2 * CS), -ETIMEDOUT);
	assert_true(now_ns() - t0 >= 150000000ull && now_ns() - t0 < 5000000000ull);
	/* The deadline is the command's: chunks arriving in 120 ms each, within one
	 * io_timeout (200 ms) but not three, end a read of three of them at its deadline
	 * (what arrived stays for the retry). */
	{
		uint8_t *big = malloc(3 * CS);

		assert_non_null(big);
		mc.mode = 3;
		t0 = now_ns();
		assert_int_equal(disk_read(d, big, 3 * CS, 5 * CS), -ETIMEDOUT);
		assert_true(now_ns() - t0 >= 150000000ull && now_ns() - t0 < 1000000000ull);
		assert_int_equal(disk_read(d, big, 3 * CS, 5 * CS), 0);
		assert_memory_equal(big, fx.image + 5 * CS, 3 * CS);
		free(big);
	}
	/* A callback that says "present" while the chunk is not: -EIO after a few tries. */
	mc.mode = 2;
	mc.calls = 0;
	assert_int_equal(disk_read(d, buf, sizeof(buf), 3 * CS), -EIO);
	assert_true(mc.calls >= 1 && mc.calls <= 8);
	/* A sub-grain write over a missing chunk needs the chunk (RMW). */
	mc.mode = 0;
	assert_int_equal(disk_write(d, "abc", 3, 4 * CS + 7, 0), 0);
	assert_int_equal(disk_read(d, buf, 16, 4 * CS), 0);
	assert_memory_equal(buf, fx.image + 4 * CS, 7);
	assert_memory_equal(buf + 7, "abc", 3);
	disk_get_stats(d, &st);
	assert_true(st.misses >= 3);
	disk_close(d);
	/* Without a callback a miss is -EIO. */
	o.miss = NULL;
	assert_int_equal(disk_open(&o, &d), 0);
	assert_int_equal(disk_read(d, buf, sizeof(buf), 2 * CS), -EIO); /* never filled */
	disk_close(d);
	fx_teardown(&fx);
}

/*
 * The _until writes share a command's deadline across steps, as disk_read_until does:
 * the target module runs WRITE SAME piece by piece, UNMAP descriptor by descriptor and
 * ORWRITE as a read and a compare-and-write. Chunks arrive 120 ms after each miss; one
 * io_timeout (200 ms) covers one such step but not three, so the third step of a command
 * ends with -ETIMEDOUT, while the same steps each with their own deadline all succeed.
 */
static void test_steps_share_the_command_deadline(void **state)
{
	struct fixture fx;
	struct missctx mc = { .fx = &fx, .mode = 3 };
	struct disk *d;
	struct disk_opts o;
	uint8_t buf[16], cmp[16];
	uint64_t deadline, t0, mis;

	/* 12 chunks, none cached; a sub-grain step inside chunk i needs chunk i (RMW). */
	assert_int_equal(fx_setup(&fx, 12 * CS, CS, 0, false, 0, 4), 0);
	o = (struct disk_opts){ .dir = fx.disk_dir, .image = fx.m, .store = fx.cs,
				.miss = miss_cb, .miss_arg = &mc, .io_timeout_ns = 200000000 };
	assert_int_equal(disk_open(&o, &d), 0);
	memset(buf, 0x5a, sizeof(buf));

	/* Writes: chunks 0, 1, 2 as steps of one command. */
	deadline = 0;
	t0 = now_ns();
	assert_int_equal(disk_write_until(d, buf, 16, 0 * CS + 7, 0, &deadline), 0);
	assert_int_equal(disk_write_until(d, buf, 16, 1 * CS + 7, 0, &deadline), 0);
	assert_int_equal(disk_write_until(d, buf, 16, 2 * CS + 7, 0, &deadline), -ETIMEDOUT);
	assert_true(now_ns() - t0 < 1000000000ull);
	/* Unmaps (sub-grain: written as zeros): chunks 3, 4, 5. */
	deadline = 0;
	assert_int_equal(disk_unmap_until(d, 3 * CS + 7, 16, 0, &deadline), 0);
	assert_int_equal(disk_unmap_until(d, 4 * CS + 7, 16, 0, &deadline), 0);
	assert_int_equal(disk_unmap_until(d, 5 * CS + 7, 16, 0, &deadline), -ETIMEDOUT);
	/* Compare-and-writes: chunks 6, 7, 8. */
	deadline = 0;
	memcpy(cmp, fx.image + 6 * CS + 7, 16);
	assert_int_equal(disk_compare_and_write_until(d, cmp, buf, 16, 6 * CS + 7, 0, &mis,
						      &deadline), 0);
	memcpy(cmp, fx.image + 7 * CS + 7, 16);
	assert_int_equal(disk_compare_and_write_until(d, cmp, buf, 16, 7 * CS + 7, 0, &mis,
						      &deadline), 0);
	memcpy(cmp, fx.image + 8 * CS + 7, 16);
	assert_int_equal(disk_compare_and_write_until(d, cmp, buf, 16, 8 * CS + 7, 0, &mis,
						      &deadline), -ETIMEDOUT);
	/* A read step after the deadline passed fails at once, without a miss. */
	mc.calls = 0;
	assert_int_equal(disk_read_until(d, buf, 16, 9 * CS, &deadline), -ETIMEDOUT);
	assert_int_equal(mc.calls, 0);

	/* The same steps each with a deadline of their own (the plain calls) all succeed. */
	assert_int_equal(disk_write(d, buf, 16, 9 * CS + 7, 0), 0);
	assert_int_equal(disk_write(d, buf, 16, 10 * CS + 7, 0), 0);
	assert_int_equal(disk_write(d, buf, 16, 11 * CS + 7, 0), 0);
	assert_int_equal(disk_unmap(d, 2 * CS + 7, 16, 0), 0);
	assert_int_equal(disk_read(d, cmp, 16, 2 * CS + 7), 0);
	assert_true(buf_is_zero(cmp, 16));
	assert_int_equal(disk_read(d, cmp, 16, 1 * CS + 7), 0);
	assert_memory_equal(cmp, buf, 16);
	disk_close(d);
	fx_teardown(&fx);
}

struct missing {
	uint64_t idx[64];
	int n;
};

static void on_missing(void *arg, const struct chunk_hash *h, uint64_t idx, uint32_t len)
{
	struct missing *m = arg;

	if (m->n < 64)
		m->idx[m->n++] = idx;
	(void)h;
	(void)len;
}

static void test_missing_chunks(void **state)
{
	struct fixture fx;
	struct disk *d;
	struct missing m = { .n = 0 };
	uint8_t *full = calloc(1, CS);

	/* 10 chunks, chunks 4 and 9 zero (never reported), chunks 1 and 6 cached. */
	assert_int_equal(fx_setup(&fx, 10 * CS, CS, 5, false, 0, 3), 0);
	assert_int_equal(fx_insert_chunk(&fx, 1), 0);
	assert_int_equal(fx_insert_chunk(&fx, 6), 0);
	assert_int_equal(fx_open_disk(&fx, &d), 0);
	/* Chunk 2 wholly overwritten: no read needs it. Chunk 3 partly: still needed. */
	assert_int_equal(disk_write(d, full, CS, 2 * CS, 0), 0);
	assert_int_equal(disk_write(d, full, CS - 4096, 3 * CS, 0), 0);
	assert_int_equal(disk_missing_chunks(d, 0, 10 * CS, on_missing, &m), 0);
	assert_int_equal(m.n, 5);
	assert_int_equal(m.idx[0], 0);
	assert_int_equal(m.idx[1], 3);
	assert_int_equal(m.idx[2], 5);
	assert_int_equal(m.idx[3], 7);
	assert_int_equal(m.idx[4], 8);
	m.n = 0;
	assert_int_equal(disk_missing_chunks(d, 5 * CS + 100, 10, on_missing, &m), 0);
	assert_int_equal(m.n, 1);
	assert_int_equal(disk_missing_chunks(d, 0, 10 * CS + 1, on_missing, &m), -ERANGE);
	disk_close(d);
	fx_teardown(&fx);
	free(full);
}

/* This process's open descriptors of removed files under dir. */
static unsigned removed_fds(const char *dir)
{
	DIR *pd = opendir("/proc/self/fd");
	struct dirent *e;
	unsigned n = 0;

	assert_non_null(pd);
	while ((e = readdir(pd))) {
		char p[300], l[PATH_MAX];
		ssize_t k;

		snprintf(p, sizeof(p), "/proc/self/fd/%s", e->d_name);
		k = readlink(p, l, sizeof(l) - 1);
		if (k <= 0)
			continue;
		l[k] = 0;
		if (!strncmp(l, dir, strlen(dir)) && strstr(l, "(deleted)"))
			n++;
	}
	closedir(pd);
	return n;
}

/*
 * The tgt module's view: a reader store and a disk over it, beside an owner whose
 * capacity is the image. Another image's chunks evict every chunk the disk has read; the
 * disk's descriptors of them keep their space allocated (past the capacity) until the
 * sweep closes them, and the disk then reads the chunks again once they are back.
 */
static void test_sweep_closes_evicted_chunk_fds(void **state)
{
	enum { N = 8 };
	struct chunkstore_opts so;
	struct chunkstore *reader;
	struct chunk_hash h;
	struct fixture fx;
	struct disk_opts o;
	struct disk *d;
	uint8_t *junk = malloc(CS), b[64];
	unsigned before;

	assert_non_null(junk);
	assert_int_equal(fx_setup(&fx, N * CS, CS, 0, true, 0, 11), 0);
	chunkstore_close(fx.cs);
	so = (struct chunkstore_opts){ .dir = fx.store_dir, .capacity = (uint64_t)N * CS };
	assert_int_equal(chunkstore_open(&so, &fx.cs), 0);
	so = (struct chunkstore_opts){ .dir = fx.store_dir, .reader = true };
	assert_int_equal(chunkstore_open(&so, &reader), 0);
	o = (struct disk_opts){ .dir = fx.disk_dir, .image = fx.m, .store = reader };
	assert_int_equal(disk_open(&o, &d), 0);
	for (unsigned i = 0; i < N; i++)
		assert_int_equal(disk_read(d, b, sizeof(b), (uint64_t)i * CS), 0);
	assert_int_equal(disk_sweep_chunk_fds(d), 0); /* nothing removed yet */
	for (unsigned i = 0; i < N; i++) {
		memset(junk, 0x40 + i, CS);
		hash_compute(junk, CS, &h);
		assert_int_equal(chunkstore_insert(fx.cs, &h, junk, CS), 0);
	}
	/* the disk's descriptors and the reader store's own (its sweep is not run here) */
	before = removed_fds(fx.store_dir);
	assert_true(before >= N);
	assert_int_equal(disk_sweep_chunk_fds(d), N);
	assert_int_equal(removed_fds(fx.store_dir), before - N);
	assert_int_equal(disk_sweep_chunk_fds(d), 0);
	/* back in the store: read again through fresh descriptors */
	for (unsigned i = 0; i < N; i++)
		assert_int_equal(fx_insert_chunk(&fx, i), 0);
	for (unsigned i = 0; i < N; i++) {
		assert_int_equal(disk_read(d, b, sizeof(b), (uint64_t)i * CS + 8), 0);
		assert_memory_equal(b, fx.image + (uint64_t)i * CS + 8, sizeof(b));
	}
	disk_close(d);
	chunkstore_close(reader);
	fx_teardown(&fx);
	free(junk);
}

/* Invariant 5: "deallocated" only where reads return zeros; runs cover the disk. */
static void test_lba_status(void **state)
{
	struct t *t = *state;
	uint8_t *buf = malloc(t->size);
	uint64_t off = 0, run;
	bool mapped;
	int runs = 0;

	do_write(t, 3 * CS + 8192, 4096, 14, 0);   /* data inside the zero chunk */
	do_write(t, 3 * CS + 20000, 4096, 0, 0);   /* unaligned, over the zero chunk */
	assert_int_equal(disk_unmap(t->d, 5 * CS, 2 * CS, 0), 0);
	memset(t->model + 5 * CS, 0, 2 * CS);
	do_write(t, 40 * CS + 500 + MiB / 2, 100, 15, 0); /* past the image */
	assert_int_equal(disk_lba_status(t->d, 3 * CS, &run, &mapped), 0);
	assert_false(mapped);
	assert_int_equal(run, 8192);
	assert_int_equal(disk_lba_status(t->d, 5 * CS + 100, &run, &mapped), 0);
	assert_false(mapped);
	assert_int_equal(run, 3 * CS - 100); /* unmapped, then zero chunk 7 */
	assert_int_equal(disk_lba_status(t->d, 0, &run, &mapped), 0);
	assert_true(mapped);
	assert_int_equal(run, 3 * CS);
	while (off < t->size && runs < 100000) {
		assert_int_equal(disk_lba_status(t->d, off, &run, &mapped), 0);
		assert_true(run > 0 && off + run <= t->size);
		if (!mapped) {
			assert_int_equal(disk_read(t->d, buf, run, off), 0);
			assert_true(buf_is_zero(buf, run));
		}
		off += run;
		runs++;
	}
	assert_int_equal(off, t->size);
	assert_true(runs >= 10);
	assert_int_equal(disk_lba_status(t->d, t->size, &run, &mapped), -ERANGE);
	free(buf);
}

/* Invariant 3: a FUA write's map entry is durable when the write returns. */
static void test_fua_durable_map(void **state)
{
	struct t *t = *state;
	char path[PATH_MAX + 32];
	struct overlay *o;
	char *map;
	size_t len;

	struct overlay_hdr_disk h[2];
	int fd;

	do_write(t, 11 * 4096, 4096, 16, 0);
	do_write(t, 12 * 4096, 4096, 17, DISK_FUA);
	snprintf(path, sizeof(path), "%s/%s", t->fx.disk_dir, OVERLAY_MAP_FILE);
	assert_int_equal(read_file(path, 1 << 30, &map, &len), 0);
	assert_int_equal(overlay_parse(map, len, NULL, NULL, &o), 0);
	memcpy(h, map, sizeof(h[0]));
	memcpy(&h[1], map + OVERLAY_HDR_SLOT, sizeof(h[1]));
	/* The durable state as a crash leaves it (overlay.c invariant 9): the map, and on an
	 * UNCLEAN overlay the data file's allocated blocks for IMAGE grains. */
	snprintf(path, sizeof(path), "%s/%s", t->fx.disk_dir, OVERLAY_DATA_FILE);
	fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	for (uint64_t g = 11; g <= 13; g++) {
		enum overlay_state st = overlay_state_of(o, g);
		uint32_t flags = h[1].gen > h[0].gen ? h[1].flags : h[0].flags;

		if (st == OVL_IMAGE && (flags & OVERLAY_HDR_UNCLEAN) &&
		    lseek(fd, (off_t)(g * 4096), SEEK_DATA) == (off_t)(g * 4096))
			st = OVL_DATA;
		/* 11 was flushed with 12's FUA; 13 was never written. */
		assert_int_equal(st, g == 13 ? OVL_IMAGE : OVL_DATA);
	}
	close(fd);
	overlay_close(o);
	free(map);
}

static void count_report(void *arg, const char *path, const char *problem)
{
	(*(int *)arg)++;
	(void)path;
	(void)problem;
}

static void test_corrupt_map_detected(void **state)
{
	struct t *t = *state;
	char path[PATH_MAX + 32];
	uint8_t junk[32];
	int fd, n = 0;

	do_write(t, 0, 8192, 18, DISK_FUA);
	disk_close(t->d);
	t->d = NULL;
	assert_int_equal(disk_fsck(t->fx.disk_dir, false, count_report, &n), 0);
	snprintf(path, sizeof(path), "%s/%s", t->fx.disk_dir, OVERLAY_MAP_FILE);
	fd = open(path, O_RDWR);
	assert_true(fd >= 0);
	memset(junk, 0xcd, sizeof(junk));
	assert_int_equal(pwrite_full(fd, junk, sizeof(junk), OVERLAY_PAGES_OFF + 200), 0);
	assert_int_equal(pwrite_full(fd, junk, sizeof(junk),
				     OVERLAY_PAGES_OFF + OVERLAY_SLOT_SIZE + 200), 0);
	close(fd);
	assert_int_equal(fx_open_disk(&t->fx, &t->d), -EUCLEAN);
	t->d = NULL;
	assert_int_equal(disk_fsck(t->fx.disk_dir, false, count_report, &n), 1);
	assert_int_equal(n, 1);
	assert_int_equal(disk_fsck(t->fx.disk_dir, true, NULL, NULL), 1);
	assert_int_equal(fx_open_disk(&t->fx, &t->d), 0);
	/* The rebuilt page keeps the written grains (they are allocated in the data file). */
	check_all(t);
}

static void test_wrong_image_refused(void **state)
{
	struct t *t = *state;
	struct disk *d2;
	struct disk_opts o = { .dir = t->fx.disk_dir, .image = t->fx.m, .store = t->fx.cs };
	struct chunk_hash saved = t->fx.m->id;

	/* one opener at a time (overlay.c): refused while the fixture's disk is open */
	assert_int_equal(disk_open(&o, &d2), -EBUSY);
	disk_close(t->d);
	t->d = NULL;
	t->fx.m->id.b[0] ^= 1;
	assert_int_equal(disk_open(&o, &d2), -EINVAL);
	t->fx.m->id = saved;
	o.store = NULL;
	assert_int_equal(disk_open(&o, &d2), -EINVAL);
	assert_int_equal(disk_create(t->fx.disk_dir, &saved, t->size), -EEXIST);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_fresh_reads_image),
		T(test_merge_and_rmw),
		T(test_identity_mapping),
		T(test_unmap),
		T(test_grow),
		T(test_compare_and_write),
		T(test_threads_sub_grain),
		T(test_threads_caw),
		cmocka_unit_test(test_miss_callback),
		cmocka_unit_test(test_steps_share_the_command_deadline),
		cmocka_unit_test(test_missing_chunks),
		cmocka_unit_test(test_sweep_closes_evicted_chunk_fds),
		T(test_lba_status),
		T(test_fua_durable_map),
		T(test_corrupt_map_detected),
		T(test_wrong_image_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
