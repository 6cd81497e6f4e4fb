/*
 * test_util.c - parse_size: the forms the config, the API and the CLI accept, and the
 * ones they must refuse rather than misread.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

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

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_size_accepts),
		cmocka_unit_test(test_parse_size_refuses),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
