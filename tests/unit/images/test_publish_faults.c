/*
 * test_publish_faults.c - publish_image when reading its input goes wrong, injected by
 * wrapping read and fstat (tests/unit/images.mk links this test with -Wl,--wrap=read and
 * -Wl,--wrap=fstat64: with a 64-bit off_t, fstat is fstat64). A wrapper acts only on the
 * file it is aimed at (found through /proc/self/fd), so qemu-img's pipes and the repository
 * files are read as usual.
 *
 * Each failure must say what happened (an input that shrank is not a device error) and
 * leave the repository without a tag, a manifest, an object or a temporary file.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
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

#include "images/manifest.h"
#include "images/publish.h"
#include "tests/unit/images/publish_fixture.h"

#define KIB 1024

/* ---- fault injection ---- */

/* READ_DATA: every read of the target returns bytes that are not zero (a sparse file then
 * stands for a huge image holding data, read at the speed of its holes). */
enum read_fault { READ_OK, READ_SHRINK, READ_EIO, READ_DATA };

static enum read_fault read_fault;
static char read_target[PATH_MAX]; /* the file the read fault applies to */
static int reads_seen;		   /* reads of read_target so far */
static const char *fstat_fail;	   /* fstat of a file whose name holds this fails (EIO) */

ssize_t __real_read(int fd, void *buf, size_t len);
int __real_fstat64(int fd, struct stat64 *st);

/* The name fd was opened under ("... (deleted)" once unlinked), or "" */
ssize_t __wrap_read(int fd, void *buf, size_t len)
{
	char name[PATH_MAX];

	if (read_fault == READ_DATA) {
		ssize_t n = __real_read(fd, buf, len);

		fd_name(fd, name, sizeof(name));
		if (n > 0 && !strcmp(name, read_target)) {
			reads_seen++;
			memset(buf, 0xa5, 1);
		}
		return n;
	}
	if (read_fault != READ_OK) {
		fd_name(fd, name, sizeof(name));
		if (!strcmp(name, read_target) && reads_seen++ == 1) {
			/* The second read: the first chunk is in, the image is under way. */
			if (read_fault == READ_EIO) {
				errno = EIO;
				return -1;
			}
			/* Shrink to a chunk and a half: this read gets half a chunk, then EOF. */
			if (truncate(read_target, 96 * KIB) < 0)
				return -1;
		}
	}
	return __real_read(fd, buf, len);
}

int __wrap_fstat64(int fd, struct stat64 *st)
{
	char name[PATH_MAX];

	if (fstat_fail) {
		fd_name(fd, name, sizeof(name));
		if (strstr(name, fstat_fail)) {
			errno = EIO;
			return -1;
		}
	}
	return __real_fstat64(fd, st);
}

/* ---- fixture ---- */

struct ctx {
	char dir[64];
	char src[96];
	char repo[96];
	struct publish_opts o;
	struct publish_result res;
	char err[512];
};

static int setup(void **state)
{
	struct ctx *c = calloc(1, sizeof(*c));

	if (!c)
		return -1;
	snprintf(c->dir, sizeof(c->dir), "/tmp/rd-pubf-XXXXXX");
	if (pubfx_input(c->dir, c->src, sizeof(c->src), c->repo, sizeof(c->repo), 256 * KIB))
		return -1;
	c->o = (struct publish_opts){.src = c->src,
				     .repo_dir = c->repo,
				     .name = "x",
				     .chunk_size = 64 * KIB,
				     .workers = 2};
	memset(c->err, 'X', sizeof(c->err) - 1); /* an unwritten message shows as garbage */
	c->err[sizeof(c->err) - 1] = '\0';
	read_fault = READ_OK;
	snprintf(read_target, sizeof(read_target), "%s", c->src);
	reads_seen = 0;
	fstat_fail = NULL;
	*state = c;
	return 0;
}

static int teardown(void **state)
{
	struct ctx *c = *state;
	char cmd[128];

	read_fault = READ_OK;
	fstat_fail = NULL;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", c->dir);
	assert_int_equal(system(cmd), 0);
	free(c);
	return 0;
}

/* Files (not directories) under repo/<sub>. */
static int count_files(const struct ctx *c, const char *sub)
{
	char cmd[256], line[64] = "";
	FILE *f;

	snprintf(cmd, sizeof(cmd), "find '%s/%s' -type f 2>/dev/null | wc -l", c->repo, sub);
	f = popen(cmd, "r");
	assert_non_null(f);
	assert_non_null(fgets(line, sizeof(line), f));
	pclose(f);
	return atoi(line);
}

/* Nothing of the failed publish is left: no tag, no manifest, no object, no temporary. */
static void assert_nothing_written(const struct ctx *c)
{
	assert_int_equal(count_files(c, "tags"), 0);
	assert_int_equal(count_files(c, "manifests"), 0);
	assert_int_equal(count_files(c, "chunks"), 0);
	assert_int_equal(count_files(c, "tmp"), 0);
}

/* ---- tests ---- */

static void test_input_that_shrinks_is_reported_as_ended_early(void **state)
{
	struct ctx *c = *state;

	read_fault = READ_SHRINK;
	assert_int_equal(publish_image(&c->o, &c->res, c->err, sizeof(c->err)), -ENODATA);
	assert_non_null(strstr(c->err, "reading input: it ended early"));
	assert_non_null(strstr(c->err, "262144 bytes"));
	assert_null(strstr(c->err, "Input/output error"));
	assert_true(reads_seen >= 2);
	assert_nothing_written(c);
}

static void test_read_error_is_reported_as_a_read_error(void **state)
{
	struct ctx *c = *state;

	read_fault = READ_EIO;
	assert_int_equal(publish_image(&c->o, &c->res, c->err, sizeof(c->err)), -EIO);
	assert_string_equal(c->err, "reading input at byte 65536: Input/output error");
	assert_nothing_written(c);
}

/* Without faults the same fixture publishes: the tests above fail for their fault. */
static void test_unfaulted_publish_succeeds(void **state)
{
	struct ctx *c = *state;

	assert_int_equal(publish_image(&c->o, &c->res, c->err, sizeof(c->err)), 0);
	assert_string_equal(c->err, "");
	assert_int_equal(c->res.chunks, 4);
	assert_int_equal(count_files(c, "tags"), 3); /* x, index, .lock */
}

/*
 * An image whose manifest would pass MANIFEST_MAX_BYTES is refused while it is read, as
 * soon as the chunks holding data make that certain, and leaves nothing (invariant 6 of
 * publish.c). The image is just under the size at which even an all-zero manifest passes
 * the limit (that one is refused before reading: tests/integration/test_images.py), so a
 * few hundred chunks of data decide.
 */
static void test_manifest_over_the_limit_is_refused_while_reading(void **state)
{
	struct ctx *c = *state;
	uint64_t n = 0;

	while (manifest_text_len((n + 1000) * 64 * KIB, 64 * KIB, 0) <= MANIFEST_MAX_BYTES)
		n += 1000; /* n chunks fit if all are zero; 1000 more would not */
	assert_int_equal(truncate(c->src, (off_t)(n * 64 * KIB)), 0);
	read_fault = READ_DATA;
	assert_int_equal(publish_image(&c->o, &c->res, c->err, sizeof(c->err)), -E2BIG);
	assert_non_null(strstr(c->err, "268435456-byte limit"));
	assert_non_null(strstr(c->err, "--chunk-size 1M or larger")); /* 3.3 M chunks at 1M */
	assert_true(reads_seen < 20000); /* refused early: not after reading 3 TiB */
	assert_nothing_written(c);
}

/* fstat of the converted raw file fails: the reason is written, not left unset. */
static void test_qcow2_fstat_failure_says_why(void **state)
{
	struct ctx *c = *state;
	char qcow[128], cmd[512];

	snprintf(qcow, sizeof(qcow), "%s/in.qcow2", c->dir);
	snprintf(cmd, sizeof(cmd), "qemu-img convert -q -f raw -O qcow2 '%s' '%s'", c->src, qcow);
	assert_int_equal(system(cmd), 0);
	c->o.src = qcow;
	fstat_fail = "/tmp/qcow2-raw.";
	assert_int_equal(publish_image(&c->o, &c->res, c->err, sizeof(c->err)), -EIO);
	snprintf(cmd, sizeof(cmd), "%s: converted qcow2: Input/output error", qcow);
	assert_string_equal(c->err, cmd);
	assert_nothing_written(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_input_that_shrinks_is_reported_as_ended_early,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_read_error_is_reported_as_a_read_error, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_unfaulted_publish_succeeds, setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_manifest_over_the_limit_is_refused_while_reading, setup, teardown),
		cmocka_unit_test_setup_teardown(test_qcow2_fstat_failure_says_why, setup, teardown),
	};

	return cmocka_run_group_tests_name("publish faults", tests, NULL, NULL);
}
