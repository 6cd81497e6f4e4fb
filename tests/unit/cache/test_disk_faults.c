/*
 * test_disk_faults.c - disk writes that fail part way (ENOSPC after some bytes reached
 * overlay.data), injected by wrapping pwrite (the Makefile links this test with
 * -Wl,--wrap=pwrite64). A failed write must leave no block allocated under a grain that
 * still reads the image: where the filesystem's holes are trusted, an open after an
 * unclean stop takes every allocated IMAGE grain as DATA (overlay.c invariant 9), so such
 * a block would show the failed write's bytes after a later crash, bytes the guest had
 * read back as the image's since.
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <cmocka.h>

#include "cache/overlay.h"
#include "disk_fixture.h"

#define CS (64 * 1024)
#define G DISK_GRAIN

/* ---- fault injection ---- */

/* The next pwrite of fail_len bytes at fail_off writes its first fail_part bytes and
 * then fails with ENOSPC (a filesystem that ran out of space part way), once. */
static long long fail_off = -1;
static size_t fail_len, fail_part;

ssize_t __real_pwrite64(int fd, const void *buf, size_t len, off_t off);

ssize_t __wrap_pwrite64(int fd, const void *buf, size_t len, off_t off)
{
	if (off == fail_off && len == fail_len) {
		fail_off = -1;
		if (__real_pwrite64(fd, buf, fail_part, off) < 0)
			return -1;
		errno = ENOSPC;
		return -1;
	}
	return __real_pwrite64(fd, buf, len, off);
}

static void fail_next(uint64_t off, size_t len, size_t part)
{
	fail_off = (long long)off;
	fail_len = len;
	fail_part = part;
}

/* ---- fixture ---- */

struct t {
	struct fixture fx;
	struct disk *d;
	char crash[PATH_MAX];
};

/* An image of 8 chunks, all cached; the disk as large as the image. */
static int setup(void **state)
{
	struct t *t = calloc(1, sizeof(*t));

	if (!t || fx_setup(&t->fx, 8 * CS, CS, 0, true, 0, 3) < 0)
		return -1;
	if (fx_open_disk(&t->fx, &t->d) < 0)
		return -1;
	snprintf(t->crash, sizeof(t->crash), "%s/crash", t->fx.root);
	fail_off = -1;
	*state = t;
	return 0;
}

static int teardown(void **state)
{
	struct t *t = *state;

	fail_off = -1;
	disk_close(t->d);
	fx_teardown(&t->fx);
	free(t);
	return 0;
}

/* The first allocated byte of overlay.data at or after off, or -1 if none. */
static long long first_data(struct t *t, uint64_t off)
{
	char path[PATH_MAX + 32];
	long long pos;
	int fd;

	snprintf(path, sizeof(path), "%s/%s", t->fx.disk_dir, OVERLAY_DATA_FILE);
	fd = open(path, O_RDONLY);
	assert_true(fd >= 0);
	pos = lseek(fd, (off_t)off, SEEK_DATA);
	close(fd);
	return pos;
}

/* Reads [off, off+len) of the disk the files would be after a crash now (copied while
 * the disk is open, so the copy's header still says UNCLEAN) and compares it with the
 * image. */
static void crash_reads_image(struct t *t, uint64_t off, size_t len)
{
	struct disk_opts o = {.dir = t->crash, .image = t->fx.m, .store = t->fx.cs};
	char cmd[4 * PATH_MAX];
	struct disk *c = NULL;
	uint8_t *buf = malloc(len);

	assert_non_null(buf);
	snprintf(cmd, sizeof(cmd), "rm -rf '%s' && cp -a --sparse=always '%s' '%s'", t->crash,
		 t->fx.disk_dir, t->crash);
	assert_int_equal(system(cmd), 0);
	assert_int_equal(disk_open(&o, &c), 0);
	assert_int_equal(disk_read(c, buf, len, off), 0);
	assert_memory_equal(buf, t->fx.image + off, len);
	disk_close(c);
	free(buf);
}

static void reads_image(struct t *t, uint64_t off, size_t len)
{
	uint8_t *buf = malloc(len);

	assert_non_null(buf);
	assert_int_equal(disk_read(t->d, buf, len, off), 0);
	assert_memory_equal(buf, t->fx.image + off, len);
	free(buf);
}

/* ---- tests ---- */

/* Whole grains over the image: the one pwrite fails after two grains reached the file. */
static void test_failed_whole_grain_write_leaves_no_block(void **state)
{
	struct t *t = *state;
	size_t len = 8 * G;
	uint8_t *w = malloc(len);

	assert_non_null(w);
	memset(w, 0x57, len);
	fail_next(CS, len, 2 * G);
	assert_int_equal(disk_write(t->d, w, len, CS, 0), -ENOSPC);
	reads_image(t, CS, len);
	assert_int_equal(first_data(t, 0), -1);
	crash_reads_image(t, CS, len);
	/* the same write, retried, lands */
	assert_int_equal(disk_write(t->d, w, len, CS, 0), 0);
	assert_int_equal(disk_read(t->d, w, len, CS), 0);
	for (size_t i = 0; i < len; i++)
		if (w[i] != 0x57)
			fail_msg("byte %zu after the retry: %#x", i, w[i]);
	free(w);
}

/* A grain already written keeps its block (and whatever of the failed write reached it:
 * the write failed, its range is undefined); the grains that read the image lose theirs. */
static void test_failed_write_keeps_written_grains(void **state)
{
	struct t *t = *state;
	uint8_t w[4 * G];

	memset(w, 0x11, sizeof(w));
	assert_int_equal(disk_write(t->d, w, G, 2 * CS, 0), 0); /* grain 0 of chunk 2: DATA */
	memset(w, 0x22, sizeof(w));
	fail_next(2 * CS, sizeof(w), 3 * G);
	assert_int_equal(disk_write(t->d, w, sizeof(w), 2 * CS, 0), -ENOSPC);
	assert_int_equal(first_data(t, 2 * CS), 2 * CS);
	assert_true(first_data(t, 2 * CS + G) == -1);
	reads_image(t, 2 * CS + G, 3 * G);
	crash_reads_image(t, 2 * CS + G, 3 * G);
}

/* A partial grain is written as a read-modify-write of the whole grain: it failing part
 * way leaves no block either. */
static void test_failed_partial_grain_write_leaves_no_block(void **state)
{
	struct t *t = *state;
	uint8_t w[100];

	memset(w, 0x33, sizeof(w));
	fail_next(4 * CS, G, 512);
	assert_int_equal(disk_write(t->d, w, sizeof(w), 4 * CS + 10, 0), -ENOSPC);
	reads_image(t, 4 * CS, G);
	assert_int_equal(first_data(t, 0), -1);
	crash_reads_image(t, 4 * CS, G);
}

int main(void)
{
	struct stat st;

	/* tmpfs trusts holes (overlay.c invariant 9), so the crash copies take allocated
	 * IMAGE grains as DATA, as a production overlay does; /tmp may not */
	if (!getenv("RD_FIXTURE_DIR") && stat("/dev/shm", &st) == 0 && S_ISDIR(st.st_mode))
		setenv("RD_FIXTURE_DIR", "/dev/shm", 1);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_failed_whole_grain_write_leaves_no_block,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_failed_write_keeps_written_grains, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_failed_partial_grain_write_leaves_no_block,
						setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
