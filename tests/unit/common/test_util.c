/*
 * test_util.c - parse_size: the forms the config, the API and the CLI accept, and the
 * ones they must refuse rather than misread. write_file_atomic from concurrent threads.
 * utf8_valid_prefix: where a string stops being UTF-8 jansson would take.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <dirent.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/util.h"

static void ok(const char *s, uint64_t want)
{
	uint64_t v = 12345;

	if (parse_size(s, &v) != 0 || v != want)
		fail_msg("parse_size(\"%s\"): got %llu, want %llu", s, (unsigned long long)v,
			 (unsigned long long)want);
}

static void bad(const char *s)
{
	uint64_t v = 12345;

	if (parse_size(s, &v) != -EINVAL)
		fail_msg("parse_size(\"%s\") accepted: %llu", s, (unsigned long long)v);
	assert_int_equal(v, 12345); /* untouched */
}

static void test_parse_size_accepts(void **state)
{
	ok("0", 0);
	ok("4096", 4096);
	ok(" 64K", 65536);
	ok("1M", 1048576);
	ok("1MiB", 1048576);
	ok("1mb", 1048576);
	ok("64G", 64ULL << 30);
	ok("1.5T", 3ULL << 39);
	ok("0.5K", 512);
	ok("1.0", 1);
	ok("16383P", 16383ULL << 50);
	ok("18446744073709551615", UINT64_MAX);
	ok("2.5G ", 5ULL << 29);
	ok("9000P", 9000ULL << 50); /* above 2^63: llround overflowed here */
}

static void test_parse_size_refuses(void **state)
{
	bad("");
	bad("K");
	bad("-1");
	bad("+1");
	bad("0x10K");    /* hex */
	bad("1e3");      /* exponent */
	bad("0.3");      /* a fraction of a byte */
	bad("1.");
	bad("0.0001");
	bad("0.0001K"); /* 0.1 byte: a non-zero size that rounds to nothing */
	bad("16384P");  /* 2^64 */
	bad("2.5 G");
	bad("18446744073709551616");
	bad("99999999999999999999999");
	bad("12Q");
	bad("1KK");
	bad("1 2");
	assert_int_equal(parse_size(NULL, &(uint64_t){0}), -EINVAL);
}

/*
 * Two threads replacing one file (rackdiskd pulls one image for two concurrent disk
 * creates): every write succeeds, the file holds one writer's complete content, and no
 * temp file is left. A temp name shared by the threads made one's rename fail (ENOENT)
 * after the other had renamed the file away, or publish a file another had truncated.
 */
#define AW_ROUNDS 300

struct aw {
	const char *path;
	char fill;
	int failures;
	int first_error;
};

static void *aw_thread(void *arg)
{
	struct aw *w = arg;
	char buf[8192];

	memset(buf, w->fill, sizeof(buf));
	for (int i = 0; i < AW_ROUNDS; i++) {
		int rc = write_file_atomic(w->path, buf, sizeof(buf));

		if (rc) {
			w->failures++;
			w->first_error = w->first_error ? w->first_error : rc;
		}
	}
	return NULL;
}

static void test_write_file_atomic_concurrent(void **state)
{
	char dir[] = "/tmp/rd-util-XXXXXX", path[64], *data = NULL;
	struct aw w[2] = { { .fill = 'a' }, { .fill = 'b' } };
	pthread_t t[2];
	struct dirent *de;
	size_t len = 0;
	int entries = 0;
	DIR *d;

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/manifest", dir);
	for (int i = 0; i < 2; i++) {
		w[i].path = path;
		assert_int_equal(pthread_create(&t[i], NULL, aw_thread, &w[i]), 0);
	}
	for (int i = 0; i < 2; i++)
		pthread_join(t[i], NULL);
	assert_int_equal(w[0].failures, 0);
	assert_int_equal(w[1].failures, 0);
	assert_int_equal(read_file(path, 1 << 20, &data, &len), 0);
	assert_int_equal(len, 8192);
	for (size_t i = 1; i < len; i++)
		assert_int_equal(data[i], data[0]);
	assert_true(data[0] == 'a' || data[0] == 'b');
	free(data);
	d = opendir(dir);
	assert_non_null(d);
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			entries++;
	closedir(d);
	assert_int_equal(entries, 1); /* no temp file left */
	unlink(path);
	rmdir(dir);
}

/* Temp files a crashed process left, which had our pid (a restarted container gives a
 * daemon the same pid): their names are this process's too, and must not stop a write. */
static void test_write_file_atomic_over_a_dead_process_leftover(void **state)
{
	char dir[] = "/tmp/rd-util-XXXXXX", path[64], tmp[96], *data = NULL;
	size_t len = 0;
	int fd;

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/rec", dir);
	for (unsigned long seq = 1; seq <= 4000; seq++) {
		snprintf(tmp, sizeof(tmp), "%s/.rec.tmp.%d.%lu", dir, (int)getpid(), seq);
		fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		assert_true(fd >= 0);
		assert_int_equal(write(fd, "torn", 4), 4);
		close(fd);
	}
	assert_int_equal(write_file_atomic(path, "whole", 5), 0);
	assert_int_equal(read_file(path, 64, &data, &len), 0);
	assert_int_equal(len, 5);
	assert_memory_equal(data, "whole", 5);
	free(data);
	for (unsigned long seq = 1; seq <= 4000; seq++) {
		snprintf(tmp, sizeof(tmp), "%s/.rec.tmp.%d.%lu", dir, (int)getpid(), seq);
		unlink(tmp);
	}
	unlink(path);
	assert_int_equal(rmdir(dir), 0);
}

static void test_utf8_valid_prefix(void **state)
{
	static const struct {
		const char *s;
		size_t want;
	} cases[] = {
		{"", 0},
		{"plain ascii", 11},
		{"caf\xc3\xa9", 5},                 /* e-acute, whole */
		{"caf\xc3", 3},                     /* cut inside it */
		{"\xe2\x82\xac!", 4},               /* euro sign */
		{"\xe2\x82", 0},                    /* its first two bytes */
		{"\xf0\x9f\x98\x80x", 5},           /* U+1F600 */
		{"a\xff" "b", 1},
		{"\xc0\xaf", 0},                    /* overlong '/' */
		{"\xe0\x80\xaf", 0},                /* overlong, 3 bytes */
		{"\xed\xa0\x80", 0},                /* a UTF-16 surrogate */
		{"\xf4\x90\x80\x80", 0},            /* above U+10FFFF */
		{"ok\x80", 2},                      /* a lone continuation byte */
	};

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		size_t got = utf8_valid_prefix(cases[i].s, strlen(cases[i].s));

		if (got != cases[i].want)
			fail_msg("case %zu: got %zu, want %zu", i, got, cases[i].want);
		assert_int_equal(utf8_is_valid(cases[i].s), got == strlen(cases[i].s));
	}
	/* a limit inside a character: the character is not counted */
	assert_int_equal(utf8_valid_prefix("a\xc3\xa9", 2), 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_size_accepts),
		cmocka_unit_test(test_parse_size_refuses),
		cmocka_unit_test(test_write_file_atomic_concurrent),
		cmocka_unit_test(test_write_file_atomic_over_a_dead_process_leftover),
		cmocka_unit_test(test_utf8_valid_prefix),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
