/*
 * test_overlay.c - the overlay map: grain states and runs, flush and reload, and the
 * numbered invariants of cache/overlay.c (torn copies, corrupt pages, checksums over the
 * nonce, invalid state values, grow ordering, concurrent updates, the map log: records,
 * checkpoints, wrap, torn records, stale records, the refused version 1 format).
 *
 * Most home-slot tests build maps without a log (overlay_create_log(..., 0)), where every
 * flush writes home slots; the log tests use small logs so that checkpoints and wraps
 * happen within a few flushes.
 */
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
#include <openssl/sha.h>

#include "cache/overlay.h"
#include "cache/overlay_format.h"
#include "common/util.h"

struct ctx {
	char dir[64];
	char map[96];
	struct chunk_hash id;
};

static int setup(void **state)
{
	struct ctx *c = calloc(1, sizeof(*c));

	snprintf(c->dir, sizeof(c->dir), "/tmp/rd-ovl-XXXXXX");
	if (!mkdtemp(c->dir))
		return -1;
	snprintf(c->map, sizeof(c->map), "%s/%s", c->dir, OVERLAY_MAP_FILE);
	memset(c->id.b, 0x5a, sizeof(c->id.b));
	*state = c;
	return 0;
}

static int teardown(void **state)
{
	struct ctx *c = *state;
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", c->dir);
	if (system(cmd) != 0)
		return -1;
	free(c);
	return 0;
}

static struct overlay *make_log(struct ctx *c, uint64_t size, uint32_t log_blocks)
{
	struct overlay *o = NULL;

	assert_int_equal(overlay_create_log(c->dir, &c->id, size, log_blocks), 0);
	assert_int_equal(overlay_open(c->dir, &o), 0);
	return o;
}

static struct overlay *make(struct ctx *c, uint64_t size)
{
	struct overlay *o = NULL;

	assert_int_equal(overlay_create_log(c->dir, &c->id, size, 0), 0);
	assert_int_equal(overlay_open(c->dir, &o), 0);
	return o;
}

static struct overlay *reopen(struct ctx *c, struct overlay *o)
{
	overlay_close(o);
	o = NULL;
	assert_int_equal(overlay_open(c->dir, &o), 0);
	return o;
}

static void patch(const char *path, uint64_t off, const void *buf, size_t len)
{
	int fd = open(path, O_RDWR);

	assert_true(fd >= 0);
	assert_int_equal(pwrite_full(fd, buf, len, off), 0);
	close(fd);
}

static void slurp(const char *path, uint8_t **buf, size_t *len)
{
	char *b;

	assert_int_equal(read_file(path, 1 << 30, &b, len), 0);
	*buf = (uint8_t *)b;
}

static uint64_t slot_pos(uint64_t page, int slot)
{
	return OVERLAY_PAGES_OFF(0) + (2 * page + (uint64_t)slot) * OVERLAY_SLOT_SIZE;
}

static uint64_t lslot_pos(uint32_t log_blocks, uint64_t page, int slot)
{
	return OVERLAY_PAGES_OFF(log_blocks) + (2 * page + (uint64_t)slot) * OVERLAY_SLOT_SIZE;
}

static uint64_t log_pos(uint32_t block)
{
	return OVERLAY_LOG_OFF + (uint64_t)block * OVERLAY_LOG_BLOCK;
}

/* Parses the map file as it is on disk now. */
static struct overlay *parse_file(struct ctx *c, int *rc)
{
	struct overlay *p = NULL;
	uint8_t *buf;
	size_t len;

	slurp(c->map, &buf, &len);
	*rc = overlay_parse(buf, len, NULL, NULL, &p);
	free(buf);
	return p;
}

static void test_create_open_fresh(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make(c, 100 * MiB + 512);
	enum overlay_state st;
	struct stat sb;
	char data[128];

	assert_int_equal(overlay_size(o), 100 * MiB + 512);
	assert_int_equal(overlay_ngrains(o), 100 * 256 + 1);
	assert_memory_equal(overlay_image_id(o)->b, c->id.b, HASH_LEN);
	assert_int_equal(overlay_state_of(o, 0), OVL_IMAGE);
	assert_int_equal(overlay_run(o, 0, overlay_ngrains(o), &st), overlay_ngrains(o));
	assert_int_equal(st, OVL_IMAGE);
	assert_int_equal(overlay_data_grains(o), 0);
	/* Invariant 6: the data file covers every grain. */
	snprintf(data, sizeof(data), "%s/%s", c->dir, OVERLAY_DATA_FILE);
	assert_int_equal(stat(data, &sb), 0);
	assert_true((uint64_t)sb.st_size >= overlay_ngrains(o) * OVERLAY_GRAIN);
	overlay_close(o);
	/* A second create over an existing map is refused. */
	assert_int_equal(overlay_create(c->dir, &c->id, MiB), -EEXIST);
	assert_int_equal(overlay_create("/tmp/rd-ovl-never", &c->id, 1000), -EINVAL);
}

static void test_set_and_runs(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make(c, 200 * MiB);
	enum overlay_state st;

	/* Across a word boundary (32 grains) and a page boundary (16384 grains). */
	assert_int_equal(overlay_set(o, 30, 5, OVL_DATA), 0);
	assert_int_equal(overlay_set(o, 16380, 10, OVL_ZERO), 0);
	assert_int_equal(overlay_set(o, 16383, 1, OVL_DATA), 0);
	assert_int_equal(overlay_run(o, 0, 1000, &st), 30);
	assert_int_equal(st, OVL_IMAGE);
	assert_int_equal(overlay_run(o, 30, 1000, &st), 5);
	assert_int_equal(st, OVL_DATA);
	assert_int_equal(overlay_run(o, 32, 2, &st), 2); /* bounded by n */
	assert_int_equal(overlay_run(o, 35, 100000, &st), 16380 - 35);
	assert_int_equal(overlay_run(o, 16380, 100, &st), 3);
	assert_int_equal(st, OVL_ZERO);
	assert_int_equal(overlay_state_of(o, 16383), OVL_DATA);
	assert_int_equal(overlay_run(o, 16384, 100, &st), 6);
	assert_int_equal(st, OVL_ZERO);
	assert_int_equal(overlay_data_grains(o), 6);
	/* DATA -> ZERO counts down. */
	assert_int_equal(overlay_set(o, 30, 2, OVL_ZERO), 0);
	assert_int_equal(overlay_data_grains(o), 4);
	/* Past the end. */
	assert_int_equal(overlay_set(o, overlay_ngrains(o) - 1, 2, OVL_DATA), -ERANGE);
	overlay_close(o);
}

static void test_flush_reopen(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make(c, 300 * MiB);
	struct overlay_stats s;

	assert_int_equal(overlay_set(o, 7, 100, OVL_DATA), 0);
	assert_int_equal(overlay_set(o, 40000, 3, OVL_ZERO), 0);
	assert_int_equal(overlay_flush(o), 0);
	overlay_get_stats(o, &s);
	/* Two pages, each written to both slots on its first flush (invariant 4). */
	assert_int_equal(s.pages_written, 4);
	assert_int_equal(overlay_set(o, 200, 1, OVL_DATA), 0); /* not flushed */
	o = reopen(c, o);
	assert_int_equal(overlay_state_of(o, 6), OVL_IMAGE);
	assert_int_equal(overlay_state_of(o, 7), OVL_DATA);
	assert_int_equal(overlay_state_of(o, 106), OVL_DATA);
	assert_int_equal(overlay_state_of(o, 107), OVL_IMAGE);
	assert_int_equal(overlay_state_of(o, 40002), OVL_ZERO);
	assert_int_equal(overlay_data_grains(o), 100);
	/* A flush with nothing dirty writes no page. */
	assert_int_equal(overlay_flush(o), 0);
	overlay_get_stats(o, &s);
	assert_int_equal(s.pages_written, 0);
	overlay_close(o);
}

/* Invariant 3: a torn write of the newest copy falls back to the previous one. */
static void test_torn_newest_copy(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make(c, 64 * MiB);
	uint8_t junk[100];

	assert_int_equal(overlay_set(o, 1, 1, OVL_DATA), 0);
	assert_int_equal(overlay_flush(o), 0); /* gen g: both slots */
	assert_int_equal(overlay_set(o, 2, 1, OVL_DATA), 0);
	assert_int_equal(overlay_flush(o), 0); /* gen g+1 -> slot 1 */
	o = reopen(c, o);
	assert_int_equal(overlay_state_of(o, 2), OVL_DATA);
	overlay_close(o);
	memset(junk, 0xee, sizeof(junk));
	patch(c->map, slot_pos(0, 1) + 2000, junk, sizeof(junk));
	assert_int_equal(overlay_open(c->dir, &o), 0);
	assert_int_equal(overlay_state_of(o, 1), OVL_DATA);
	assert_int_equal(overlay_state_of(o, 2), OVL_IMAGE);
	/* The next update goes to the torn slot, never over the good one. */
	assert_int_equal(overlay_set(o, 3, 1, OVL_ZERO), 0);
	assert_int_equal(overlay_flush(o), 0);
	overlay_close(o);
	patch(c->map, slot_pos(0, 0) + 3000, junk, sizeof(junk));
	assert_int_equal(overlay_open(c->dir, &o), 0);
	assert_int_equal(overlay_state_of(o, 3), OVL_ZERO);
	overlay_close(o);
}

static void report_count(void *arg, const char *path, const char *problem)
{
	(*(int *)arg)++;
	(void)path;
	(void)problem;
}

/* Invariants 4, 5: no valid copy + non-zero bytes is corruption; fsck finds and rebuilds. */
static void test_corrupt_page_detected_and_repaired(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make(c, 64 * MiB);
	uint8_t junk[64], block[OVERLAY_GRAIN];
	char data[128];
	int n = 0;

	memset(block, 0x11, sizeof(block));
	snprintf(data, sizeof(data), "%s/%s", c->dir, OVERLAY_DATA_FILE);
	patch(data, 5 * OVERLAY_GRAIN, block, sizeof(block));
	assert_int_equal(overlay_set(o, 5, 1, OVL_DATA), 0);
	assert_int_equal(overlay_flush(o), 0);
	overlay_close(o);
	memset(junk, 0x77, sizeof(junk));
	patch(c->map, slot_pos(0, 0) + 100, junk, sizeof(junk));
	patch(c->map, slot_pos(0, 1) + 100, junk, sizeof(junk));
	assert_int_equal(overlay_open(c->dir, &o), -EUCLEAN);
	assert_int_equal(overlay_fsck(c->dir, false, report_count, &n), 1);
	assert_int_equal(n, 1);
	n = 0;
	assert_int_equal(overlay_fsck(c->dir, true, report_count, &n), 1);
	assert_int_equal(n, 2); /* the problem and the repair */
	assert_int_equal(overlay_fsck(c->dir, false, NULL, NULL), 0);
	assert_int_equal(overlay_open(c->dir, &o), 0);
	assert_int_equal(overlay_state_of(o, 5), OVL_DATA); /* from the data file */
	assert_int_equal(overlay_state_of(o, 6), OVL_IMAGE);
	overlay_close(o);
}

/* Invariant 4: a first flush torn in slot 0 (slot 1 never written) reads as all IMAGE. */
static void test_torn_first_flush(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make(c, 64 * MiB);
	uint8_t junk[OVERLAY_SLOT_SIZE];

	overlay_close(o);
	memset(junk, 0x42, 1000);
	memset(junk + 1000, 0, sizeof(junk) - 1000);
	patch(c->map, slot_pos(0, 0), junk, sizeof(junk));
	assert_int_equal(overlay_open(c->dir, &o), 0);
	assert_int_equal(overlay_state_of(o, 0), OVL_IMAGE);
	overlay_close(o);
	assert_int_equal(overlay_fsck(c->dir, false, NULL, NULL), 0);
	/* But slot 1 written without slot 0 cannot come from a crash. */
	patch(c->map, slot_pos(0, 1), junk, sizeof(junk));
	assert_int_equal(overlay_open(c->dir, &o), -EUCLEAN);
}

/* Builds a page copy by hand from the format header, with the given sum nonce. */
static void hand_page(uint8_t *slot, const uint8_t nonce[16], uint64_t page, uint64_t gen,
		      const uint64_t *words)
{
	struct overlay_page_hdr ph;
	uint8_t in[16 + 32 + OVERLAY_PAGE_WORDS * 8];

	memset(&ph, 0, sizeof(ph));
	memcpy(ph.magic, OVERLAY_PAGE_MAGIC, 8);
	ph.page_no = page;
	ph.gen = gen;
	memcpy(in, nonce, 16);
	memcpy(in + 16, &ph, 32);
	memcpy(in + 48, words, OVERLAY_PAGE_WORDS * 8);
	SHA256(in, sizeof(in), ph.sum);
	memcpy(slot, &ph, sizeof(ph));
	memcpy(slot + sizeof(ph), words, OVERLAY_PAGE_WORDS * 8);
}

/* The same hand-made copy in both slots: with slot 1 non-zero, an invalid slot 0 cannot
 * pass for a torn first flush. */
static void hand_both(uint8_t *slot, const uint8_t nonce[16], uint64_t page, uint64_t gen,
		      const uint64_t *words)
{
	hand_page(slot, nonce, page, gen, words);
	hand_page(slot + OVERLAY_SLOT_SIZE, nonce, page, gen, words);
}

/* Invariant 5: the format as documented, the nonce in the sum, state 3 refused. */
static void test_page_format_checks(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make(c, 64 * MiB), *p = NULL;
	struct overlay_hdr_disk h;
	uint64_t words[OVERLAY_PAGE_WORDS] = { 0 };
	uint8_t *buf, *slot;
	size_t len;

	overlay_close(o);
	slurp(c->map, &buf, &len);
	memcpy(&h, buf, sizeof(h));
	assert_memory_equal(h.magic, OVERLAY_HDR_MAGIC, 8);
	assert_int_equal(h.size, 64 * MiB);
	buf = realloc(buf, slot_pos(1, 0));
	slot = buf + slot_pos(0, 0);
	memset(slot, 0, 2 * OVERLAY_SLOT_SIZE);
	words[0] = 0x4; /* grain 1 DATA */
	hand_page(slot, h.nonce, 0, 9, words);
	assert_int_equal(overlay_parse(buf, slot_pos(1, 0), NULL, NULL, &p), 0);
	assert_int_equal(overlay_state_of(p, 1), OVL_DATA);
	overlay_close(p);
	/* Another overlay's nonce: the same bytes are not valid here. */
	h.nonce[0] ^= 1;
	hand_both(slot, h.nonce, 0, 9, words);
	assert_int_equal(overlay_parse(buf, slot_pos(1, 0), NULL, NULL, &p), -EUCLEAN);
	h.nonce[0] ^= 1;
	/* State 3 with a correct sum. */
	words[0] = 0xc;
	hand_both(slot, h.nonce, 0, 9, words);
	assert_int_equal(overlay_parse(buf, slot_pos(1, 0), NULL, NULL, &p), -EUCLEAN);
	/* State bits past the disk's end (64 MiB = exactly one page: none past). Wrong page. */
	words[0] = 0x4;
	hand_both(slot, h.nonce, 1, 9, words);
	assert_int_equal(overlay_parse(buf, slot_pos(1, 0), NULL, NULL, &p), -EUCLEAN);
	/* A bad header sum. */
	buf[20] ^= 1;
	buf[OVERLAY_HDR_SLOT + 20] ^= 1;
	assert_int_equal(overlay_parse(buf, slot_pos(1, 0), NULL, NULL, &p), -EINVAL);
	free(buf);
}

static void test_state_past_end_refused(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make(c, 4 * OVERLAY_GRAIN), *p = NULL;
	struct overlay_hdr_disk h;
	uint64_t words[OVERLAY_PAGE_WORDS] = { 0 };
	uint8_t *buf;
	size_t len;

	overlay_close(o);
	slurp(c->map, &buf, &len);
	memcpy(&h, buf, sizeof(h));
	buf = realloc(buf, slot_pos(1, 0));
	memset(buf + slot_pos(0, 0), 0, 2 * OVERLAY_SLOT_SIZE);
	words[0] = 1ull << 6; /* grain 3: the last one */
	hand_page(buf + slot_pos(0, 0), h.nonce, 0, 3, words);
	assert_int_equal(overlay_parse(buf, slot_pos(1, 0), NULL, NULL, &p), 0);
	overlay_close(p);
	words[0] = 1ull << 8; /* grain 4: past the end */
	hand_both(buf + slot_pos(0, 0), h.nonce, 0, 3, words);
	assert_int_equal(overlay_parse(buf, slot_pos(1, 0), NULL, NULL, &p), -EUCLEAN);
	free(buf);
}

/* Invariant 6 and the A/B header: grow is durable, a torn header falls back. */
static void test_grow(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make(c, 10 * MiB);
	char data[128];
	struct stat sb;
	uint8_t junk[16];

	assert_int_equal(overlay_set(o, 100, 1, OVL_DATA), 0);
	assert_int_equal(overlay_grow(o, 200 * MiB), 0);
	assert_int_equal(overlay_size(o), 200 * MiB);
	assert_int_equal(overlay_set(o, 40000, 1, OVL_ZERO), 0);
	assert_int_equal(overlay_state_of(o, 100), OVL_DATA);
	assert_int_equal(overlay_grow(o, 100 * MiB), 0); /* never shrinks */
	assert_int_equal(overlay_size(o), 200 * MiB);
	assert_int_equal(overlay_flush(o), 0);
	snprintf(data, sizeof(data), "%s/%s", c->dir, OVERLAY_DATA_FILE);
	assert_int_equal(stat(data, &sb), 0);
	assert_int_equal(sb.st_size, 200 * MiB);
	o = reopen(c, o);
	assert_int_equal(overlay_size(o), 200 * MiB);
	assert_int_equal(overlay_state_of(o, 40000), OVL_ZERO);
	assert_int_equal(overlay_grow(o, 300 * MiB), 0);
	overlay_close(o);
	/* Tear the newest header (slot A after two grows): the older size comes back. */
	memset(junk, 0xab, sizeof(junk));
	patch(c->map, 40, junk, sizeof(junk));
	assert_int_equal(overlay_open(c->dir, &o), 0);
	assert_int_equal(overlay_size(o), 200 * MiB);
	overlay_close(o);
}

struct setter {
	struct overlay *o;
	unsigned id, nthreads;
};

static void *set_thread(void *arg)
{
	struct setter *s = arg;

	/* Each thread owns grains g % nthreads == id: neighbours share words. */
	for (uint64_t g = s->id; g < 3 * 32 * 64; g += s->nthreads)
		if (overlay_set(s->o, g, 1, (g / s->nthreads) % 2 ? OVL_DATA : OVL_ZERO) < 0)
			return (void *)1;
	return NULL;
}

static void *flush_thread(void *arg)
{
	for (int i = 0; i < 20; i++)
		if (overlay_flush(arg) < 0)
			return (void *)1;
	return NULL;
}

/* Concurrent updates of grains sharing state words lose nothing; flushes run alongside. */
static void test_concurrent_set(void **state)
{
	struct ctx *c = *state;
	/* A small log: the concurrent flushes append, checkpoint and wrap. */
	struct overlay *o = make_log(c, 64 * MiB, 4);
	enum { N = 4 };
	struct setter s[N];
	pthread_t t[N], ft;
	void *ret;
	uint64_t ndata = 0;

	assert_int_equal(pthread_create(&ft, NULL, flush_thread, o), 0);
	for (unsigned i = 0; i < N; i++) {
		s[i] = (struct setter){ .o = o, .id = i, .nthreads = N };
		assert_int_equal(pthread_create(&t[i], NULL, set_thread, &s[i]), 0);
	}
	for (unsigned i = 0; i < N; i++) {
		assert_int_equal(pthread_join(t[i], &ret), 0);
		assert_null(ret);
	}
	assert_int_equal(pthread_join(ft, &ret), 0);
	assert_null(ret);
	assert_int_equal(overlay_flush(o), 0);
	o = reopen(c, o);
	for (uint64_t g = 0; g < 3 * 32 * 64; g++) {
		enum overlay_state want = (g / N) % 2 ? OVL_DATA : OVL_ZERO;

		assert_int_equal(overlay_state_of(o, g), want);
		ndata += want == OVL_DATA;
	}
	assert_int_equal(overlay_data_grains(o), ndata);
	overlay_close(o);
}

/* The log: a flush appends one record and writes no home slot; a reopen finds the pages
 * in the log; the next flush after it checkpoints (invariant 3); invariant 10: the log
 * region is allocated at create. */
static void test_log_record_and_checkpoint(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make_log(c, 300 * MiB, 16), *p;
	struct overlay_stats s;
	struct stat sb;
	uint8_t *buf;
	size_t len;
	int rc;

	assert_int_equal(stat(c->map, &sb), 0);
	assert_int_equal((uint64_t)sb.st_size, OVERLAY_PAGES_OFF(16));
	assert_true((uint64_t)sb.st_blocks * 512 >= OVERLAY_PAGES_OFF(16)); /* not sparse */
	assert_int_equal(overlay_set(o, 7, 100, OVL_DATA), 0);
	assert_int_equal(overlay_set(o, 40000, 3, OVL_ZERO), 0);
	assert_int_equal(overlay_flush(o), 0);
	overlay_get_stats(o, &s);
	assert_int_equal(s.log_records, 1);
	assert_int_equal(s.checkpoints, 0);
	assert_int_equal(s.pages_written, 2);
	/* Home slots untouched (the file did not grow), the record is at the log's start. */
	slurp(c->map, &buf, &len);
	assert_int_equal(len, OVERLAY_PAGES_OFF(16));
	assert_memory_equal(buf + log_pos(0), OVERLAY_LOG_MAGIC, 8);
	assert_true(buf_is_zero(buf + log_pos(3), OVERLAY_LOG_BLOCK)); /* 1 + 2 blocks used */
	free(buf);
	p = parse_file(c, &rc);
	assert_int_equal(rc, 0);
	assert_int_equal(overlay_state_of(p, 106), OVL_DATA);
	assert_int_equal(overlay_state_of(p, 40002), OVL_ZERO);
	overlay_close(p);
	/* Second record follows the first. */
	assert_int_equal(overlay_set(o, 200, 1, OVL_DATA), 0);
	assert_int_equal(overlay_flush(o), 0);
	slurp(c->map, &buf, &len);
	assert_memory_equal(buf + log_pos(3), OVERLAY_LOG_MAGIC, 8);
	free(buf);
	o = reopen(c, o);
	assert_int_equal(overlay_state_of(o, 200), OVL_DATA);
	assert_int_equal(overlay_state_of(o, 40000), OVL_ZERO);
	assert_int_equal(overlay_data_grains(o), 101);
	/* Log-resident pages after a reopen: the next flush checkpoints them all home. */
	assert_int_equal(overlay_set(o, 300, 1, OVL_ZERO), 0);
	assert_int_equal(overlay_flush(o), 0);
	overlay_get_stats(o, &s);
	assert_int_equal(s.checkpoints, 1);
	assert_int_equal(s.log_records, 0);
	assert_int_equal(s.pages_written, 4); /* two pages, first home write: both slots */
	overlay_close(o);
	/* Home copies alone now describe everything: wipe the log and parse. */
	slurp(c->map, &buf, &len);
	memset(buf + OVERLAY_LOG_OFF, 0, 16 * OVERLAY_LOG_BLOCK);
	assert_int_equal(overlay_parse(buf, len, NULL, NULL, &p), 0);
	assert_int_equal(overlay_state_of(p, 200), OVL_DATA);
	assert_int_equal(overlay_state_of(p, 300), OVL_ZERO);
	assert_int_equal(overlay_state_of(p, 40001), OVL_ZERO);
	overlay_close(p);
	free(buf);
}

/* Invariants 3, 9: many flushes through a small log (appends, checkpoints, wraps over
 * stale records); after every flush the map on disk holds exactly the flushed states. */
static void test_log_wrap(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make_log(c, 200 * MiB, 8), *p;
	uint64_t pages[3] = { 0, 1, 2 };
	struct overlay_stats s;
	int rc;

	for (unsigned i = 0; i < 40; i++) {
		/* 1 to 3 dirty pages: records of 2 to 4 blocks in a log of 8. */
		for (unsigned k = 0; k <= i % 3; k++)
			assert_int_equal(overlay_set(o, pages[k] * OVERLAY_PAGE_GRAINS + i, 1,
						     i % 2 ? OVL_DATA : OVL_ZERO), 0);
		assert_int_equal(overlay_flush(o), 0);
		p = parse_file(c, &rc);
		assert_int_equal(rc, 0);
		for (uint64_t g = 0; g < 3 * OVERLAY_PAGE_GRAINS; g += 1)
			if (overlay_state_of(p, g) != overlay_state_of(o, g))
				fail_msg("flush %u: grain %llu differs on disk", i,
					 (unsigned long long)g);
		overlay_close(p);
	}
	overlay_get_stats(o, &s);
	assert_true(s.checkpoints >= 5);
	assert_true(s.log_records >= 10);
	assert_int_equal(s.checkpoints + s.log_records, 40);
	o = reopen(c, o);
	assert_int_equal(overlay_state_of(o, 39), OVL_DATA);
	assert_int_equal(overlay_state_of(o, OVERLAY_PAGE_GRAINS + 37), OVL_DATA);
	overlay_close(o);
}

/* Invariant 3: a torn newest record loses only its own flush; a torn header ends the
 * chain; invariant 5: a record copy with a wrong sum is never used. */
static void test_log_torn_record(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make_log(c, 64 * MiB, 16), *p;
	uint8_t *buf;
	size_t len;

	assert_int_equal(overlay_set(o, 1, 1, OVL_DATA), 0);
	assert_int_equal(overlay_flush(o), 0); /* record at block 0, 2 blocks */
	assert_int_equal(overlay_set(o, 2, 1, OVL_DATA), 0);
	assert_int_equal(overlay_flush(o), 0); /* record at block 2 */
	overlay_close(o);
	slurp(c->map, &buf, &len);
	/* Torn words of the newest record: the previous copy wins. */
	buf[log_pos(3) + 100] ^= 0x10;
	assert_int_equal(overlay_parse(buf, len, NULL, NULL, &p), 0);
	assert_int_equal(overlay_state_of(p, 1), OVL_DATA);
	assert_int_equal(overlay_state_of(p, 2), OVL_IMAGE);
	overlay_close(p);
	buf[log_pos(3) + 100] ^= 0x10;
	/* A wrong entry sum in the record header: the whole record is refused. */
	buf[log_pos(2) + 64 + 8 + 5] ^= 1;
	assert_int_equal(overlay_parse(buf, len, NULL, NULL, &p), 0);
	assert_int_equal(overlay_state_of(p, 2), OVL_IMAGE);
	overlay_close(p);
	buf[log_pos(2) + 64 + 8 + 5] ^= 1;
	/* Torn first record header: the chain ends there, nothing is in the map. */
	buf[log_pos(0) + 20] ^= 1;
	assert_int_equal(overlay_parse(buf, len, NULL, NULL, &p), 0);
	assert_int_equal(overlay_state_of(p, 1), OVL_IMAGE);
	assert_int_equal(overlay_state_of(p, 2), OVL_IMAGE);
	overlay_close(p);
	buf[log_pos(0) + 20] ^= 1;
	/* The record of a different overlay (another nonce) is not accepted. */
	{
		struct overlay_hdr_disk h;

		memcpy(&h, buf, sizeof(h));
		h.nonce[0] ^= 1;
		SHA256((const uint8_t *)&h, offsetof(struct overlay_hdr_disk, sum), h.sum);
		memcpy(buf, &h, sizeof(h));
		memcpy(buf + OVERLAY_HDR_SLOT, &h, sizeof(h));
		assert_int_equal(overlay_parse(buf, len, NULL, NULL, &p), 0);
		assert_int_equal(overlay_state_of(p, 1), OVL_IMAGE);
		overlay_close(p);
	}
	free(buf);
	/* The live file, reopened: both records valid; the next update checkpoints. */
	assert_int_equal(overlay_open(c->dir, &o), 0);
	assert_int_equal(overlay_state_of(o, 2), OVL_DATA);
	overlay_close(o);
}

/* Invariants 3, 4: home slots torn during a checkpoint's first home write, with the page's
 * copy still in the log, are not corruption; the log copy wins. */
static void test_log_covers_torn_home(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make_log(c, 64 * MiB, 16);
	uint8_t junk[200];
	int n = 0;

	assert_int_equal(overlay_set(o, 9, 2, OVL_DATA), 0);
	assert_int_equal(overlay_flush(o), 0);
	overlay_close(o);
	memset(junk, 0x5c, sizeof(junk));
	patch(c->map, lslot_pos(16, 0, 0) + 500, junk, sizeof(junk));
	assert_int_equal(overlay_open(c->dir, &o), 0);
	assert_int_equal(overlay_state_of(o, 10), OVL_DATA);
	overlay_close(o);
	assert_int_equal(overlay_fsck(c->dir, false, report_count, &n), 0);
	assert_int_equal(n, 0);
	/* Both home slots garbage and no log copy: corrupt. */
	assert_int_equal(overlay_open(c->dir, &o), 0);
	assert_int_equal(overlay_set(o, 12, 1, OVL_ZERO), 0);
	assert_int_equal(overlay_flush(o), 0); /* checkpoint: home slots 0 and 1 */
	overlay_close(o);
	patch(c->map, lslot_pos(16, 0, 0) + 500, junk, sizeof(junk));
	patch(c->map, lslot_pos(16, 0, 1) + 500, junk, sizeof(junk));
	assert_int_equal(overlay_open(c->dir, &o), -EUCLEAN);
}

/* Invariant 11: a sound version 1 header is refused with its own error and message. */
static char last_problem[256];
static void report_keep(void *arg, const char *path, const char *problem)
{
	snprintf(last_problem, sizeof(last_problem), "%s", problem);
	(void)arg;
	(void)path;
}

static void test_v1_refused(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make_log(c, 64 * MiB, 16), *p = NULL;
	struct overlay_hdr_disk h;
	uint8_t *buf;
	size_t len;
	int n = 0;

	overlay_close(o);
	slurp(c->map, &buf, &len);
	for (int s = 0; s < 2; s++) {
		memcpy(&h, buf + s * OVERLAY_HDR_SLOT, sizeof(h));
		h.version = 1;
		h.log_blocks = 0;
		SHA256((const uint8_t *)&h, offsetof(struct overlay_hdr_disk, sum), h.sum);
		memcpy(buf + s * OVERLAY_HDR_SLOT, &h, sizeof(h));
	}
	assert_int_equal(overlay_parse(buf, len, report_keep, NULL, &p), -EPROTONOSUPPORT);
	assert_non_null(strstr(last_problem, "version 1"));
	patch(c->map, 0, buf, 2 * OVERLAY_HDR_SLOT);
	assert_int_equal(overlay_open(c->dir, &o), -EPROTONOSUPPORT);
	assert_int_equal(overlay_fsck(c->dir, false, report_count, &n), 1);
	assert_int_equal(n, 1);
	/* A version from the future, or a bad log size, is simply an invalid header. */
	h.version = OVERLAY_VERSION + 1;
	SHA256((const uint8_t *)&h, offsetof(struct overlay_hdr_disk, sum), h.sum);
	memcpy(buf, &h, sizeof(h));
	memcpy(buf + OVERLAY_HDR_SLOT, &h, sizeof(h));
	assert_int_equal(overlay_parse(buf, len, NULL, NULL, &p), -EINVAL);
	h.version = OVERLAY_VERSION;
	h.log_blocks = 1;
	SHA256((const uint8_t *)&h, offsetof(struct overlay_hdr_disk, sum), h.sum);
	memcpy(buf, &h, sizeof(h));
	memcpy(buf + OVERLAY_HDR_SLOT, &h, sizeof(h));
	assert_int_equal(overlay_parse(buf, len, NULL, NULL, &p), -EINVAL);
	free(buf);
	assert_int_equal(overlay_create_log("/tmp/rd-ovl-never", &c->id, MiB, 1), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_create_open_fresh, setup, teardown),
		cmocka_unit_test_setup_teardown(test_set_and_runs, setup, teardown),
		cmocka_unit_test_setup_teardown(test_flush_reopen, setup, teardown),
		cmocka_unit_test_setup_teardown(test_torn_newest_copy, setup, teardown),
		cmocka_unit_test_setup_teardown(test_corrupt_page_detected_and_repaired, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_torn_first_flush, setup, teardown),
		cmocka_unit_test_setup_teardown(test_page_format_checks, setup, teardown),
		cmocka_unit_test_setup_teardown(test_state_past_end_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_grow, setup, teardown),
		cmocka_unit_test_setup_teardown(test_concurrent_set, setup, teardown),
		cmocka_unit_test_setup_teardown(test_log_record_and_checkpoint, setup, teardown),
		cmocka_unit_test_setup_teardown(test_log_wrap, setup, teardown),
		cmocka_unit_test_setup_teardown(test_log_torn_record, setup, teardown),
		cmocka_unit_test_setup_teardown(test_log_covers_torn_home, setup, teardown),
		cmocka_unit_test_setup_teardown(test_v1_refused, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
