/*
 * test_source.c - the input of publish: reading a raw file that shrinks after it was opened,
 * and the error messages of source_check and source_open.
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
#include <unistd.h>

#include <cmocka.h>

#include "images/source.h"

#define KIB 1024

struct ctx {
	char dir[64];
	char file[96];
};

static int setup(void **state)
{
	struct ctx *c = calloc(1, sizeof(*c));
	char buf[64 * KIB];
	int fd;

	if (!c)
		return -1;
	snprintf(c->dir, sizeof(c->dir), "/tmp/rd-source-XXXXXX");
	if (!mkdtemp(c->dir))
		return -1;
	snprintf(c->file, sizeof(c->file), "%s/in.raw", c->dir);
	memset(buf, 0x5a, sizeof(buf));
	fd = open(c->file, O_WRONLY | O_CREAT | O_EXCL, 0644);
	if (fd < 0 || write(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf) || close(fd) < 0)
		return -1;
	*state = c;
	return 0;
}

static int teardown(void **state)
{
	struct ctx *c = *state;

	unlink(c->file);
	rmdir(c->dir);
	free(c);
	return 0;
}

/* A file that shrinks after source_open measured it ends early: -ENODATA, which no read
 * error returns (a failing device returns -EIO, and must not read as "ended early"). */
static void test_input_that_shrinks_ends_early(void **state)
{
	struct ctx *c = *state;
	struct image_source src;
	char err[256], buf[16 * KIB];

	assert_int_equal(source_open(c->file, c->dir, &src, err, sizeof(err)), 0);
	assert_int_equal(src.size, 64 * KIB);
	assert_false(src.qcow2);
	assert_int_equal(source_read(&src, buf, sizeof(buf)), 0);
	assert_int_equal(buf[0], 0x5a);
	assert_int_equal(truncate(c->file, 24 * KIB), 0);
	assert_int_equal(source_read(&src, buf, sizeof(buf)), -ENODATA); /* 8 KiB were left */
	assert_int_equal(source_read(&src, buf, sizeof(buf)), -ENODATA); /* at the end */
	source_close(&src);
}

/* The reason is written on every error, and the buffer is emptied on success. */
static void test_errors_say_why(void **state)
{
	struct ctx *c = *state;
	struct image_source src;
	char err[256], missing[128];

	snprintf(missing, sizeof(missing), "%s/missing.raw", c->dir);
	memset(err, 'X', sizeof(err));
	assert_int_equal(source_check(missing, err, sizeof(err)), -ENOENT);
	assert_string_equal(err, "cannot open: No such file or directory");
	memset(err, 'X', sizeof(err));
	assert_int_equal(source_open(c->dir, c->dir, &src, err, sizeof(err)), -EISDIR);
	assert_string_equal(err, "not a regular file or block device");
	memset(err, 'X', sizeof(err));
	assert_int_equal(source_check(c->file, err, sizeof(err)), 0);
	assert_string_equal(err, "");
	memset(err, 'X', sizeof(err));
	assert_int_equal(source_open(c->file, c->dir, &src, err, sizeof(err)), 0);
	assert_string_equal(err, "");
	source_close(&src);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_input_that_shrinks_ends_early, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_errors_say_why, setup, teardown),
	};

	return cmocka_run_group_tests_name("source", tests, NULL, NULL);
}
