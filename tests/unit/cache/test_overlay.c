/*
 * test_overlay.c - the overlay map: grain states and runs, flush and reload, and the
 * numbered invariants of cache/overlay.c (torn copies, corrupt pages, checksums over the
 * nonce, invalid state values, grow ordering, concurrent updates).
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
#include <sys/wait.h>
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

/* A fresh directory below base (a context with it). */
static int setup_in(void **state, const char *base)
{
	struct ctx *c = calloc(1, sizeof(*c));

	snprintf(c->dir, sizeof(c->dir), "%s/rd-ovl-XXXXXX", base);
	if (!mkdtemp(c->dir))
		return -1;
	snprintf(c->map, sizeof(c->map), "%s/%s", c->dir, OVERLAY_MAP_FILE);
	memset(c->id.b, 0x5a, sizeof(c->id.b));
	*state = c;
	return 0;
}

static int setup(void **state)
{
	return setup_in(state, "/tmp");
}

/* For the lazy-map tests: tmpfs without huge pages, a filesystem whose holes overlay.c
 * trusts on any machine (the root filesystem may be ext4 without a journal). */
static int setup_shm(void **state)
{
	return setup_in(state, "/dev/shm");
}

static int teardown(void **state)
{
	struct ctx *c = *state;
	char cmd[256];

	/* test_holes_trusted_only_where_safe mounts below c->dir: never left mounted */
	snprintf(cmd, sizeof(cmd), "umount -q '%s/mnt' 2>/dev/null; rm -rf '%s'", c->dir,
		 c->dir);
	if (system(cmd) != 0)
		return -1;
	free(c);
	return 0;
}

static struct overlay *make(struct ctx *c, uint64_t size)
{
	struct overlay *o = NULL;

	assert_int_equal(overlay_create(c->dir, &c->id, size), 0);
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
	return OVERLAY_PAGES_OFF + (2 * page + (uint64_t)slot) * OVERLAY_SLOT_SIZE;
}

/* Rewrites both header copies with flags (sum recomputed from the documented format). */
static void set_hdr_flags(struct ctx *c, uint32_t flags)
{
	for (int s = 0; s < 2; s++) {
		struct overlay_hdr_disk h;
		uint8_t *buf;
		size_t len;

		slurp(c->map, &buf, &len);
		memcpy(&h, buf + s * OVERLAY_HDR_SLOT, sizeof(h));
		free(buf);
		h.flags = flags;
		h.version = flags ? OVERLAY_VERSION : OVERLAY_VERSION_NOFLAGS;
		SHA256((const uint8_t *)&h, offsetof(struct overlay_hdr_disk, sum), h.sum);
		patch(c->map, (uint64_t)s * OVERLAY_HDR_SLOT, &h, sizeof(h));
	}
}

static uint32_t newest_hdr_flags(struct ctx *c)
{
	struct overlay_hdr_disk h[2];
	uint8_t *buf;
	size_t len;

	slurp(c->map, &buf, &len);
	memcpy(&h[0], buf, sizeof(h[0]));
	memcpy(&h[1], buf + OVERLAY_HDR_SLOT, sizeof(h[1]));
	free(buf);
	return h[1].gen > h[0].gen ? h[1].flags : h[0].flags;
}

/* A strict overlay: as one created on a filesystem whose holes are not trusted. */
static struct overlay *make_strict(struct ctx *c, uint64_t size)
{
	struct overlay *o = make(c, size);

	overlay_close(o);
	set_hdr_flags(c, 0);
	o = NULL;
	assert_int_equal(overlay_open(c->dir, &o), 0);
	return o;
}

/* Writes grains [g, g+n) of the data file with byte v and sets them DATA, as disk.c does.
 * No cmocka assertion: crash_child()'s steps call it in a forked child. */
static int put_grains(struct overlay *o, uint64_t g, uint64_t n, int v)
{
	uint8_t buf[OVERLAY_GRAIN];

	memset(buf, v, sizeof(buf));
	for (uint64_t i = 0; i < n; i++)
		if (pwrite_full(overlay_data_fd(o), buf, sizeof(buf), (g + i) * OVERLAY_GRAIN) < 0)
			return -1;
	return overlay_set(o, g, n, OVL_DATA) < 0 ? -1 : 0;
}

static void write_grains(struct overlay *o, uint64_t g, uint64_t n, int v)
{
	assert_int_equal(put_grains(o, g, n, v), 0);
}

/*
 * A crash: a child process opens dir's overlay, runs step on it (which returns 0 or the
 * number of the check that failed) and exits without closing; the parent asserts 0.
 */
static void crash_child(struct ctx *c, int (*step)(struct overlay *q))
{
	pid_t pid = fork();
	int wst;

	assert_true(pid >= 0);
	if (pid == 0) {
		struct overlay *q = NULL;

		_exit(overlay_open(c->dir, &q) < 0 ? 100 : step(q));
	}
	assert_int_equal(waitpid(pid, &wst, 0), pid);
	assert_true(WIFEXITED(wst));
	assert_int_equal(WEXITSTATUS(wst), 0);
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
	assert_int_equal(overlay_set(o, 200, 1, OVL_DATA), 0); /* not flushed: close writes it */
	o = reopen(c, o);
	assert_int_equal(overlay_state_of(o, 6), OVL_IMAGE);
	assert_int_equal(overlay_state_of(o, 7), OVL_DATA);
	assert_int_equal(overlay_state_of(o, 106), OVL_DATA);
	assert_int_equal(overlay_state_of(o, 107), OVL_IMAGE);
	assert_int_equal(overlay_state_of(o, 200), OVL_DATA);
	assert_int_equal(overlay_state_of(o, 40002), OVL_ZERO);
	assert_int_equal(overlay_data_grains(o), 101);
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
	struct overlay *o = make_strict(c, 64 * MiB); /* every flush writes the page */
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
	/* Strict: only grows write the header, so the slots' order is known. */
	struct overlay *o = make_strict(c, 10 * MiB);
	char data[128];
	struct stat sb;
	uint8_t junk[16];
	uint64_t size;

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
	/* overlay_read_size needs neither the lock nor a close */
	assert_int_equal(overlay_read_size(c->dir, &size), 0);
	assert_int_equal(size, 300 * MiB);
	overlay_close(o);
	/* Tear the newest header (slot A after two grows): the older size comes back. */
	memset(junk, 0xab, sizeof(junk));
	patch(c->map, 40, junk, sizeof(junk));
	assert_int_equal(overlay_read_size(c->dir, &size), 0);
	assert_int_equal(size, 200 * MiB);
	assert_int_equal(overlay_open(c->dir, &o), 0);
	assert_int_equal(overlay_size(o), 200 * MiB);
	overlay_close(o);
	/* Both copies torn: no size. */
	patch(c->map, OVERLAY_HDR_SLOT + 40, junk, sizeof(junk));
	assert_int_equal(overlay_read_size(c->dir, &size), -EUCLEAN);
}

static int step_first_writes(struct overlay *q)
{
	struct overlay_stats cs;

	if (put_grains(q, 3, 3, 0x33) < 0 || overlay_flush(q) < 0)
		return 11;
	overlay_get_stats(q, &cs);
	if (cs.pages_written != 0 || cs.map_skipped != 1)
		return 12;
	return put_grains(q, 9, 1, 0x99) < 0 ? 13 : 0; /* not flushed */
}

/* Invariant 9: a flush of first writes syncs the data file alone; after a crash (the
 * child exits without closing) open takes the allocated IMAGE grains as DATA; a clean
 * close writes them to the map and clears UNCLEAN. */
static void test_lazy_map_recovered(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make(c, 64 * MiB), *p = NULL;
	struct overlay_stats s;
	uint8_t *buf;
	size_t len;

	overlay_get_stats(o, &s);
	assert_true(s.lazy_map); /* tmpfs without huge pages (setup_shm) */
	overlay_close(o);
	assert_int_equal(newest_hdr_flags(c), OVERLAY_HDR_HOLES);
	crash_child(c, step_first_writes);
	/* The map alone lags: grains 3-5 are IMAGE there, and UNCLEAN says so. */
	assert_int_equal(newest_hdr_flags(c), OVERLAY_HDR_HOLES | OVERLAY_HDR_UNCLEAN);
	slurp(c->map, &buf, &len);
	assert_int_equal(overlay_parse(buf, len, NULL, NULL, &p), 0);
	assert_int_equal(overlay_state_of(p, 3), OVL_IMAGE);
	overlay_close(p);
	free(buf);
	/* Open recovers them from the data file (and grain 9, whose page survived too). */
	assert_int_equal(overlay_open(c->dir, &o), 0);
	overlay_get_stats(o, &s);
	assert_int_equal(s.recovered, 4);
	assert_int_equal(overlay_state_of(o, 2), OVL_IMAGE);
	assert_int_equal(overlay_state_of(o, 3), OVL_DATA);
	assert_int_equal(overlay_state_of(o, 5), OVL_DATA);
	assert_int_equal(overlay_state_of(o, 6), OVL_IMAGE);
	assert_int_equal(overlay_state_of(o, 9), OVL_DATA);
	assert_int_equal(overlay_data_grains(o), 4);
	/* ZERO -> DATA always writes the map (its block may still be allocated). */
	assert_int_equal(overlay_set(o, 4, 1, OVL_ZERO), 0);
	assert_int_equal(overlay_punch(o, 4, 1), 0);
	assert_int_equal(overlay_flush(o), 0);
	overlay_get_stats(o, &s);
	assert_true(s.pages_written > 0);
	len = s.pages_written;
	write_grains(o, 4, 1, 0x44);
	assert_int_equal(overlay_flush(o), 0);
	overlay_get_stats(o, &s);
	assert_true(s.pages_written > len);
	overlay_close(o);
	/* A clean close: the map holds everything and UNCLEAN is gone. */
	assert_int_equal(newest_hdr_flags(c), OVERLAY_HDR_HOLES);
	slurp(c->map, &buf, &len);
	assert_int_equal(overlay_parse(buf, len, NULL, NULL, &p), 0);
	assert_int_equal(overlay_state_of(p, 3), OVL_DATA);
	assert_int_equal(overlay_state_of(p, 9), OVL_DATA);
	overlay_close(p);
	free(buf);
	assert_int_equal(overlay_open(c->dir, &o), 0);
	overlay_get_stats(o, &s);
	assert_int_equal(s.recovered, 0);
	assert_int_equal(overlay_state_of(o, 4), OVL_DATA);
	overlay_close(o);
}

static int step_write_8(struct overlay *q)
{
	return put_grains(q, 8, 1, 0x88) < 0 || overlay_flush(q) < 0 ? 11 : 0;
}

/* Invariant 9's limit: a ZERO grain keeps its state over an allocated block (a refused
 * punch) when open recovers after a crash. */
static void test_lazy_map_zero_kept(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make(c, 64 * MiB);

	write_grains(o, 7, 1, 0x77);
	assert_int_equal(overlay_set(o, 7, 1, OVL_ZERO), 0); /* no punch: block stays */
	assert_int_equal(overlay_flush(o), 0);
	overlay_close(o);
	crash_child(c, step_write_8);
	assert_int_equal(overlay_open(c->dir, &o), 0);
	assert_int_equal(overlay_state_of(o, 7), OVL_ZERO);
	assert_int_equal(overlay_state_of(o, 8), OVL_DATA);
	overlay_close(o);
}

static int step_unmap_lazy(struct overlay *q)
{
	struct overlay_stats cs;

	/* Grain 20000 is on another page. */
	if (put_grains(q, 2, 2, 0x22) < 0 || put_grains(q, 20000, 1, 0x20) < 0 ||
	    overlay_flush(q) < 0)
		return 11;
	if (overlay_set(q, 2, 1, OVL_ZERO) < 0 || overlay_punch(q, 2, 1) < 0)
		return 12;
	overlay_get_stats(q, &cs);
	if (cs.punch_flushes != 1)
		return 13;
	/* The page's lazy changes are durable now: no second flush. */
	if (overlay_set(q, 3, 1, OVL_ZERO) < 0 || overlay_punch(q, 3, 1) < 0)
		return 14;
	overlay_get_stats(q, &cs);
	return cs.punch_flushes == 1 ? 0 : 15;
}

/* Invariant 9 and UNMAP: a grain that is DATA only through its block keeps the block
 * until its ZERO state is in the durable map, so a crash never shows the image there. */
static void test_lazy_map_punch(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make(c, 128 * MiB);

	overlay_close(o);
	crash_child(c, step_unmap_lazy);
	assert_int_equal(overlay_open(c->dir, &o), 0);
	assert_int_equal(overlay_state_of(o, 2), OVL_ZERO);
	/* Grain 3's ZERO was not flushed: its block is gone, the durable map says DATA (the
	 * first punch's flush wrote it), so it reads zeros as the unmap asked. */
	assert_int_equal(overlay_state_of(o, 3), OVL_DATA);
	assert_int_equal(lseek(overlay_data_fd(o), 3 * OVERLAY_GRAIN, SEEK_HOLE),
			 3 * OVERLAY_GRAIN);
	assert_int_equal(overlay_state_of(o, 20000), OVL_DATA);
	overlay_close(o);
}

/* A header without HOLES writes the map at every flush; flags are checked. */
static void test_strict_header(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make_strict(c, 64 * MiB);
	struct overlay_stats s;

	overlay_get_stats(o, &s);
	assert_false(s.lazy_map);
	write_grains(o, 1, 1, 0x11);
	assert_int_equal(overlay_flush(o), 0);
	overlay_get_stats(o, &s);
	assert_int_equal(s.pages_written, 2);
	assert_int_equal(s.map_skipped, 0);
	overlay_close(o);
	assert_int_equal(newest_hdr_flags(c), 0);
	/* Flags need version 2 (older readers refuse it), and a flagless header version 1. */
	{
		struct overlay_hdr_disk h;
		uint8_t *buf;
		size_t len;

		set_hdr_flags(c, OVERLAY_HDR_HOLES);
		slurp(c->map, &buf, &len);
		memcpy(&h, buf, sizeof(h));
		free(buf);
		assert_int_equal(h.version, 2);
		h.version = 1;
		SHA256((const uint8_t *)&h, offsetof(struct overlay_hdr_disk, sum), h.sum);
		patch(c->map, 0, &h, sizeof(h));
		patch(c->map, OVERLAY_HDR_SLOT, &h, sizeof(h));
		assert_int_equal(overlay_open(c->dir, &o), -EINVAL);
	}
	/* Unknown flags, and UNCLEAN without HOLES, make a header invalid. */
	set_hdr_flags(c, 0x4);
	assert_int_equal(overlay_open(c->dir, &o), -EINVAL);
	set_hdr_flags(c, OVERLAY_HDR_UNCLEAN);
	assert_int_equal(overlay_open(c->dir, &o), -EINVAL);
	set_hdr_flags(c, OVERLAY_HDR_HOLES | OVERLAY_HDR_UNCLEAN);
	assert_int_equal(overlay_open(c->dir, &o), 0);
	assert_int_equal(overlay_state_of(o, 1), OVL_DATA);
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
	struct overlay *o = make(c, 64 * MiB);
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

/* One opener at a time: a second open, or a repair, while a writer has it is refused. */
static void test_second_opener_refused(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make(c, 64 * MiB), *p = NULL;

	assert_int_equal(overlay_open(c->dir, &p), -EBUSY);
	assert_null(p);
	assert_int_equal(overlay_fsck(c->dir, true, NULL, NULL), -EBUSY);
	overlay_close(o);
	assert_int_equal(overlay_fsck(c->dir, true, NULL, NULL), 0);
	assert_int_equal(overlay_open(c->dir, &p), 0);
	overlay_close(p);
}

/* Whether an overlay created on a filesystem mounted at c->dir/mnt (from `mount_cmd`,
 * run with the mountpoint as its last argument) skips the map for first writes. */
static bool lazy_on(struct ctx *c, const char *prep_cmd, const char *mount_cmd)
{
	char mnt[128], cmd[768], sub[160];
	struct overlay *o = NULL;
	struct overlay_stats s;

	snprintf(mnt, sizeof(mnt), "%s/mnt", c->dir);
	snprintf(sub, sizeof(sub), "%s/disk", mnt);
	snprintf(cmd, sizeof(cmd), "mkdir -p '%s' && %s && %s '%s' && rm -rf '%s'", mnt, prep_cmd,
		 mount_cmd, mnt, sub);
	assert_int_equal(system(cmd), 0);
	assert_int_equal(overlay_create(sub, &c->id, 64 * MiB), 0);
	assert_int_equal(overlay_open(sub, &o), 0);
	overlay_get_stats(o, &s);
	overlay_close(o);
	snprintf(cmd, sizeof(cmd), "umount '%s'", mnt);
	assert_int_equal(system(cmd), 0);
	return s.lazy_map;
}

/* Invariant 9 holds only where an allocated block never shows before its data, at 4 KiB
 * granularity: ext4 with a journal (data=ordered), tmpfs without huge pages. ext4 without
 * a journal (the development VM's root) and tmpfs with huge=always keep the strict map.
 * Needs root (mount, loop devices), as `make test` runs in CI. */
static void test_holes_trusted_only_where_safe(void **state)
{
	struct ctx *c = *state;
	char img[96], mkfs[320], loop[256];

	assert_int_equal(geteuid(), 0);
	snprintf(img, sizeof(img), "%s/fs.img", c->dir);
	snprintf(loop, sizeof(loop), "mount -o loop '%s'", img);
	snprintf(mkfs, sizeof(mkfs), "truncate -s 64M '%s' && mkfs.ext4 -q -F '%s'", img, img);
	assert_true(lazy_on(c, mkfs, loop));
	snprintf(loop, sizeof(loop), "mount -o loop,data=writeback '%s'", img);
	assert_false(lazy_on(c, "true", loop));
	snprintf(mkfs, sizeof(mkfs), "mkfs.ext4 -q -F -O ^has_journal '%s'", img);
	snprintf(loop, sizeof(loop), "mount -o loop '%s'", img);
	assert_false(lazy_on(c, mkfs, loop));
	assert_true(lazy_on(c, "true", "mount -t tmpfs -o size=80m none"));
	assert_false(lazy_on(c, "true", "mount -t tmpfs -o size=80m,huge=always none"));
}

/* The loop device and overlay of test_data_sync_error_is_sticky, for its teardown. */
static char err_loop[64];
static struct overlay *err_o;

static int teardown_loop(void **state)
{
	struct ctx *c = *state;
	char cmd[512];

	if (err_o) /* a failed assertion left it open: the mount would stay busy */
		overlay_close(err_o);
	err_o = NULL;
	snprintf(cmd, sizeof(cmd),
		 "umount -q '%s/mnt' 2>/dev/null; [ -z '%s' ] || losetup -d '%s' 2>/dev/null; "
		 "umount -q '%s/back' 2>/dev/null; true", c->dir, err_loop, err_loop, c->dir);
	if (system(cmd) != 0)
		return -1;
	err_loop[0] = '\0';
	return teardown(state);
}

/* Grain g of the data file gets bytes and its DATA state, as a write does. */
static void write_grain(struct overlay *o, uint64_t g)
{
	uint8_t buf[OVERLAY_GRAIN];

	memset(buf, (int)(0xa0 + g % 16), sizeof(buf));
	assert_int_equal(pwrite(overlay_data_fd(o), buf, sizeof(buf), (off_t)(g * OVERLAY_GRAIN)),
			 (ssize_t)sizeof(buf));
	assert_int_equal(overlay_set(o, g, 1, OVL_DATA), 0);
}

/*
 * A failed fdatasync of overlay.data is sticky. The kernel drops the pages it could not
 * write and reports the error once, so a later fdatasync succeeds without them: a flush
 * after the device recovered returned 0, as if the lost write were durable. Now every
 * later flush fails until the disk is reopened.
 * The device: ext2 (no journal to abort; errors=continue) on a loop device whose sparse
 * backing file lives on a small tmpfs. Filling that tmpfs makes the loop device fail
 * writes to blocks not yet backed (EIO); removing the filler heals it. (This kernel has
 * no device-mapper for an error target.) Needs root, as `make test` runs in CI.
 */
static void test_data_sync_error_is_sticky(void **state)
{
	struct ctx *c = *state;
	char cmd[768], sub[128];
	struct overlay *o;
	FILE *p;
	int err;

	assert_int_equal(geteuid(), 0);
	snprintf(cmd, sizeof(cmd),
		 "mkdir -p '%s/back' '%s/mnt' && mount -t tmpfs -o size=24m none '%s/back' && "
		 "truncate -s 64M '%s/back/dev.img' && losetup -f --show '%s/back/dev.img'",
		 c->dir, c->dir, c->dir, c->dir, c->dir);
	p = popen(cmd, "r");
	assert_non_null(p);
	if (!fgets(err_loop, sizeof(err_loop), p))
		err_loop[0] = '\0';
	pclose(p);
	err_loop[strcspn(err_loop, "\n")] = '\0';
	assert_int_equal(strncmp(err_loop, "/dev/loop", 9), 0);
	snprintf(cmd, sizeof(cmd),
		 "mkfs.ext2 -q -F '%s' && mount -o errors=continue '%s' '%s/mnt'", err_loop,
		 err_loop, c->dir);
	assert_int_equal(system(cmd), 0);
	snprintf(sub, sizeof(sub), "%s/mnt/disk", c->dir);
	assert_int_equal(overlay_create(sub, &c->id, 48 * MiB), 0);
	assert_int_equal(overlay_open(sub, &err_o), 0);
	o = err_o;
	write_grain(o, 0);
	assert_int_equal(overlay_flush(o), 0);

	/* the backing store is full: writes to blocks it has not backed yet fail */
	snprintf(cmd, sizeof(cmd), "dd if=/dev/zero of='%s/back/fill' bs=1M 2>/dev/null; true",
		 c->dir);
	assert_int_equal(system(cmd), 0);
	write_grain(o, 5000);
	err = overlay_flush(o);
	assert_true(err == -EIO || err == -ENOSPC); /* the loop driver passes ENOSPC on */
	snprintf(cmd, sizeof(cmd), "rm -f '%s/back/fill'", c->dir);
	assert_int_equal(system(cmd), 0);
	write_grain(o, 9000);
	assert_int_equal(overlay_flush(o), err); /* grain 5000 was lost: still an error */
	assert_int_equal(overlay_flush(o), err);
	overlay_close(o);
	err_o = NULL;
	/* reopened, the disk works again (the lost write's error has been reported) */
	assert_int_equal(overlay_open(sub, &err_o), 0);
	write_grain(err_o, 11000);
	assert_int_equal(overlay_flush(err_o), 0);
	overlay_close(err_o);
	err_o = NULL;
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
		cmocka_unit_test_setup_teardown(test_lazy_map_recovered, setup_shm, teardown),
		cmocka_unit_test_setup_teardown(test_lazy_map_zero_kept, setup_shm, teardown),
		cmocka_unit_test_setup_teardown(test_lazy_map_punch, setup_shm, teardown),
		cmocka_unit_test_setup_teardown(test_strict_header, setup, teardown),
		cmocka_unit_test_setup_teardown(test_second_opener_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_holes_trusted_only_where_safe, setup, teardown),
		cmocka_unit_test_setup_teardown(test_data_sync_error_is_sticky, setup,
						teardown_loop),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
