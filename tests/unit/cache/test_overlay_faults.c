/*
 * test_overlay_faults.c - the overlay map under write and sync errors of overlay.map,
 * injected by wrapping pwrite, fdatasync and fsync (the Makefile links this test with
 * -Wl,--wrap=pwrite64,--wrap=fdatasync,--wrap=fsync: with a 64-bit off_t, pwrite is
 * pwrite64). A
 * "crash" is a copy of the files taken while the overlay is open: what a power cut at
 * that moment leaves, as far as the page cache holds what the writes said.
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

#include <cmocka.h>

#include "cache/overlay.h"
#include "cache/overlay_format.h"

/* ---- fault injection ---- */

/* A pwrite at tear_off writes tear_len bytes (a torn write) and fails with ENOSPC, once. */
static long long tear_off = -1;
static size_t tear_len = 40;
/* The fail_sync-th fdatasync or fsync from now (1 = the next) fails with EIO, once. */
static int fail_sync;

ssize_t __real_pwrite64(int fd, const void *buf, size_t len, off_t off);
int __real_fdatasync(int fd);
int __real_fsync(int fd);

ssize_t __wrap_pwrite64(int fd, const void *buf, size_t len, off_t off)
{
	if (off == tear_off) {
		tear_off = -1;
		if (__real_pwrite64(fd, buf, len < tear_len ? len : tear_len, off) < 0)
			return -1;
		errno = ENOSPC;
		return -1;
	}
	return __real_pwrite64(fd, buf, len, off);
}

int __wrap_fdatasync(int fd)
{
	if (fail_sync > 0 && --fail_sync == 0) {
		errno = EIO;
		return -1;
	}
	return __real_fdatasync(fd);
}

int __wrap_fsync(int fd)
{
	if (fail_sync > 0 && --fail_sync == 0) {
		errno = EIO;
		return -1;
	}
	return __real_fsync(fd);
}

static long long slot_at(uint64_t page, int slot)
{
	return (long long)(OVERLAY_PAGES_OFF + (2 * page + (uint64_t)slot) * OVERLAY_SLOT_SIZE);
}

/* ---- fixture ---- */

struct ctx {
	char dir[64];
	char crash[96];
};

static int setup(void **state)
{
	struct ctx *c = calloc(1, sizeof(*c));

	if (!c)
		return -1;
	snprintf(c->dir, sizeof(c->dir), "/tmp/rd-ovlf-XXXXXX");
	if (!mkdtemp(c->dir))
		return -1;
	snprintf(c->crash, sizeof(c->crash), "%s/crash", c->dir);
	tear_off = -1;
	fail_sync = 0;
	*state = c;
	return 0;
}

static int teardown(void **state)
{
	struct ctx *c = *state;
	char cmd[128];

	tear_off = -1;
	fail_sync = 0;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", c->dir);
	if (system(cmd) != 0)
		return -1;
	free(c);
	return 0;
}

static struct overlay *make(struct ctx *c)
{
	struct chunk_hash id;
	struct overlay *o = NULL;

	memset(id.b, 0x5a, sizeof(id.b));
	assert_int_equal(overlay_create(c->dir, &id, 256ull << 20), 0);
	assert_int_equal(overlay_open(c->dir, &o), 0);
	return o;
}

/* The files as a crash now would leave them, opened. */
static struct overlay *crash_copy(struct ctx *c)
{
	struct overlay *o = NULL;
	char cmd[512];
	int rc;

	snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir '%s' && cp '%s/%s' '%s/%s' '%s/'",
		 c->crash, c->crash, c->dir, OVERLAY_MAP_FILE, c->dir, OVERLAY_DATA_FILE,
		 c->crash);
	assert_int_equal(system(cmd), 0);
	rc = overlay_open(c->crash, &o);
	if (rc)
		fail_msg("the overlay after a crash does not open: %s", strerror(-rc));
	return o;
}

/* ---- tests ---- */

/*
 * Invariant 4 across an error: a page's first flush writes slot 0, syncs, then writes
 * slot 1. When that second write fails, slot 0 is already the page's only durable copy,
 * so the retry must go to slot 1. It used to go to slot 0 again (the page still counted as
 * never flushed): a crash tearing that write left no valid copy, and the disk refused to
 * open (-EUCLEAN) until fsck, which turned its UNMAPped grains back into image data.
 */
static void test_first_flush_second_copy_fails(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make(c), *k;

	assert_int_equal(overlay_set(o, 10, 5, OVL_ZERO), 0);
	tear_off = slot_at(0, 1);
	assert_int_equal(overlay_flush(o), -ENOSPC);
	assert_int_equal(tear_off, -1); /* the fault was hit */
	assert_int_equal(overlay_set(o, 20, 1, OVL_ZERO), 0);
	/* A write to slot 0 now would overwrite the only durable copy: tear it if it comes. */
	tear_off = slot_at(0, 0);
	assert_int_equal(overlay_flush(o), 0);
	assert_int_not_equal(tear_off, -1);
	tear_off = -1;
	k = crash_copy(c);
	assert_int_equal(overlay_state_of(k, 10), OVL_ZERO);
	assert_int_equal(overlay_state_of(k, 14), OVL_ZERO);
	assert_int_equal(overlay_state_of(k, 20), OVL_ZERO);
	assert_int_equal(overlay_state_of(k, 15), OVL_IMAGE);
	overlay_close(k);
	overlay_close(o);
}

/* The same when the second copy's write returns but its sync fails. */
static void test_first_flush_second_sync_fails(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make(c), *k;

	assert_int_equal(overlay_set(o, 30, 2, OVL_ZERO), 0);
	/* syncs of one flush: the data file, the first copies, the second copies */
	fail_sync = 3;
	assert_int_equal(overlay_flush(o), -EIO);
	assert_int_equal(fail_sync, 0);
	assert_int_equal(overlay_set(o, 40, 1, OVL_ZERO), 0);
	tear_off = slot_at(0, 0);
	assert_int_equal(overlay_flush(o), 0);
	assert_int_not_equal(tear_off, -1);
	tear_off = -1;
	k = crash_copy(c);
	assert_int_equal(overlay_state_of(k, 30), OVL_ZERO);
	assert_int_equal(overlay_state_of(k, 31), OVL_ZERO);
	assert_int_equal(overlay_state_of(k, 40), OVL_ZERO);
	overlay_close(k);
	overlay_close(o);
}

/* A failed first copy: nothing of the page is durable, and a torn slot 0 beside an
 * all-zero slot 1 reads as a page never written (invariant 4's exception). The retry
 * writes the page whole. */
static void test_first_flush_first_copy_fails(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make(c), *k;

	assert_int_equal(overlay_set(o, 50, 1, OVL_ZERO), 0);
	tear_off = slot_at(0, 0);
	assert_int_equal(overlay_flush(o), -ENOSPC);
	k = crash_copy(c);
	assert_int_equal(overlay_state_of(k, 50), OVL_IMAGE); /* never acknowledged */
	overlay_close(k);
	assert_int_equal(overlay_flush(o), 0);
	k = crash_copy(c);
	assert_int_equal(overlay_state_of(k, 50), OVL_ZERO);
	overlay_close(k);
	overlay_close(o);
}

/* An update (not a first flush) that fails is retried in the same, non-newest slot: the
 * newest copy is never touched. */
static void test_update_fails_keeps_newest(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make(c), *k;

	assert_int_equal(overlay_set(o, 60, 1, OVL_ZERO), 0);
	assert_int_equal(overlay_flush(o), 0); /* first flush: both slots, gen 1 */
	assert_int_equal(overlay_set(o, 61, 1, OVL_ZERO), 0);
	assert_int_equal(overlay_flush(o), 0); /* update: slot 1 is now the newest */
	assert_int_equal(overlay_set(o, 62, 1, OVL_ZERO), 0);
	tear_off = slot_at(0, 0);
	assert_int_equal(overlay_flush(o), -ENOSPC);
	k = crash_copy(c);
	assert_int_equal(overlay_state_of(k, 61), OVL_ZERO);
	assert_int_equal(overlay_state_of(k, 62), OVL_IMAGE);
	overlay_close(k);
	tear_off = slot_at(0, 1); /* the newest copy: a retry must not write it */
	assert_int_equal(overlay_flush(o), 0);
	assert_int_not_equal(tear_off, -1);
	tear_off = -1;
	k = crash_copy(c);
	assert_int_equal(overlay_state_of(k, 62), OVL_ZERO);
	overlay_close(k);
	overlay_close(o);
}

/*
 * A writeback error met by a grow's sync of overlay.data is remembered like a flush's:
 * the kernel reports it once, so a flush after the grow would otherwise succeed without
 * the pages it dropped, and call writes made before the grow durable.
 */
static void test_grow_sync_error_fails_later_flushes(void **state)
{
	struct ctx *c = *state;
	struct overlay *o = make(c);

	fail_sync = 1;
	assert_int_equal(overlay_grow(o, 512ull << 20), -EIO);
	assert_int_equal(fail_sync, 0);
	assert_int_equal(overlay_flush(o), -EIO);
	assert_int_equal(overlay_grow(o, 768ull << 20), -EIO);
	overlay_close(o);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_first_flush_second_copy_fails, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_first_flush_second_sync_fails, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_first_flush_first_copy_fails, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_update_fails_keeps_newest, setup, teardown),
		cmocka_unit_test_setup_teardown(test_grow_sync_error_fails_later_flushes, setup,
						teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
