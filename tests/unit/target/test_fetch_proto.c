/*
 * test_fetch_proto.c - the fetch socket's request lines (target/fetch_proto.h): FETCH with
 * and without its place (image id, chunk index), the first version's forms, and lines the
 * protocol does not allow.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "common/hash.h"
#include "images/manifest.h"
#include "target/fetch_proto.h"

#define HEX_A "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
#define HEX_B "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"

static int parse(const char *line, struct fetch_req *r)
{
	return fetch_proto_parse(line, strlen(line), r);
}

static void test_fetch_old_form(void **state)
{
	struct fetch_req r;
	struct chunk_hash a;

	assert_int_equal(hash_from_hex(HEX_A, HASH_HEX_LEN, &a), 0);
	assert_int_equal(parse("FETCH " HEX_A " 1048576 30000", &r), 0);
	assert_int_equal(r.cmd, FETCH_CMD_FETCH);
	assert_true(hash_equal(&r.h, &a));
	assert_int_equal(r.len, 1048576);
	assert_int_equal(r.timeout_ms, 30000);
	assert_false(r.has_pos);
	/* A trailing newline is accepted (the server may pass the whole line). */
	assert_int_equal(parse("FETCH " HEX_A " 4096 1\n", &r), 0);
	assert_int_equal(r.len, 4096);
}

static void test_fetch_with_place(void **state)
{
	struct chunk_hash a, b;
	struct fetch_req r;

	assert_int_equal(hash_from_hex(HEX_A, HASH_HEX_LEN, &a), 0);
	assert_int_equal(hash_from_hex(HEX_B, HASH_HEX_LEN, &b), 0);
	assert_int_equal(parse("FETCH " HEX_A " 65536 250 " HEX_B " 12345", &r), 0);
	assert_true(r.has_pos);
	assert_true(hash_equal(&r.h, &a));
	assert_true(hash_equal(&r.image, &b));
	assert_int_equal(r.idx, 12345);
	assert_int_equal(r.timeout_ms, 250);
	assert_int_equal(parse("FETCH " HEX_A " 65536 250 " HEX_B " 18446744073709551615", &r),
			 0);
	assert_int_equal(r.idx, UINT64_MAX);
}

static void test_format_round_trip(void **state)
{
	char line[FETCH_PROTO_FETCH_LINE_MAX];
	struct chunk_hash a, b;
	struct fetch_req r;
	size_t n;

	assert_int_equal(hash_from_hex(HEX_A, HASH_HEX_LEN, &a), 0);
	assert_int_equal(hash_from_hex(HEX_B, HASH_HEX_LEN, &b), 0);
	/* The longest line fits the buffer the header sizes for it. */
	n = fetch_proto_format_fetch(line, sizeof(line), &a, CHUNK_SIZE_MAX,
				     FETCH_PROTO_TIMEOUT_MAX_MS, &b, UINT64_MAX);
	assert_int_equal(n, strlen(line));
	assert_int_equal(line[n - 1], '\n');
	assert_int_equal(fetch_proto_parse(line, n, &r), 0);
	assert_true(r.has_pos && hash_equal(&r.h, &a) && hash_equal(&r.image, &b));
	assert_int_equal(r.len, CHUNK_SIZE_MAX);
	assert_int_equal(r.timeout_ms, FETCH_PROTO_TIMEOUT_MAX_MS);
	assert_int_equal(r.idx, UINT64_MAX);
	/* Without a place: exactly the first version's line. */
	n = fetch_proto_format_fetch(line, sizeof(line), &a, 4096, 7, NULL, 99);
	assert_string_equal(line, "FETCH " HEX_A " 4096 7\n");
	assert_int_equal(fetch_proto_parse(line, n, &r), 0);
	assert_false(r.has_pos);
}

static void test_prefetch_and_touch(void **state)
{
	char line[FETCH_PROTO_LINE_MAX + 80];
	struct fetch_req r;
	size_t len;

	assert_int_equal(parse("PREFETCH " HEX_B " 65536", &r), 0);
	assert_int_equal(r.cmd, FETCH_CMD_PREFETCH);
	assert_int_equal(r.len, 65536);
	/* CHECK: a chunk file the module found bad */
	assert_int_equal(parse("CHECK " HEX_A " 4096", &r), 0);
	assert_int_equal(r.cmd, FETCH_CMD_CHECK);
	assert_int_equal(r.len, 4096);
	assert_int_equal(parse("CHECK " HEX_A, &r), -EPROTO);
	assert_int_equal(parse("CHECK " HEX_A " 4096 1", &r), -EPROTO);
	assert_int_equal(parse("CHECK " HEX_A " 0", &r), -EPROTO);
	assert_int_equal(parse("TOUCH " HEX_A " " HEX_B, &r), 0);
	assert_int_equal(r.cmd, FETCH_CMD_TOUCH);
	assert_int_equal(r.ntouch, 2);
	/* FETCH_PROTO_TOUCH_MAX hashes are fine, one more is not. */
	len = (size_t)snprintf(line, sizeof(line), "TOUCH");
	for (int i = 0; i < FETCH_PROTO_TOUCH_MAX; i++)
		len += (size_t)snprintf(line + len, sizeof(line) - len, " %s", HEX_A);
	assert_int_equal(fetch_proto_parse(line, len, &r), 0);
	assert_int_equal(r.ntouch, FETCH_PROTO_TOUCH_MAX);
	len += (size_t)snprintf(line + len, sizeof(line) - len, " %s", HEX_A);
	assert_int_equal(fetch_proto_parse(line, len, &r), -EPROTO);
}

/* HIT: a hit's place (image id, index) and hash; the longest line fits its buffer. */
static void test_hit(void **state)
{
	char line[FETCH_PROTO_HIT_LINE_MAX];
	struct chunk_hash a, b;
	struct fetch_req r;
	size_t n;

	assert_int_equal(hash_from_hex(HEX_A, HASH_HEX_LEN, &a), 0);
	assert_int_equal(hash_from_hex(HEX_B, HASH_HEX_LEN, &b), 0);
	assert_int_equal(parse("HIT " HEX_B " 42 " HEX_A, &r), 0);
	assert_int_equal(r.cmd, FETCH_CMD_HIT);
	assert_true(r.has_pos);
	assert_true(hash_equal(&r.image, &b));
	assert_true(hash_equal(&r.h, &a));
	assert_int_equal(r.idx, 42);
	n = fetch_proto_format_hit(line, sizeof(line), &b, UINT64_MAX, &a);
	assert_int_equal(n, strlen(line));
	assert_int_equal(line[n - 1], '\n');
	assert_int_equal(fetch_proto_parse(line, n, &r), 0);
	assert_int_equal(r.cmd, FETCH_CMD_HIT);
	assert_int_equal(r.idx, UINT64_MAX);
	assert_true(hash_equal(&r.image, &b) && hash_equal(&r.h, &a));
	n = fetch_proto_format_hit(line, sizeof(line), &a, 7, &b);
	assert_string_equal(line, "HIT " HEX_A " 7 " HEX_B "\n");
}

static void test_bad_lines(void **state)
{
	static const char *const bad[] = {
		"",
		" ",
		"HELLO",
		"fetch " HEX_A " 4096 1",
		"FETCH",
		"FETCH " HEX_A,
		"FETCH " HEX_A " 4096",
		"FETCH abc 4096 1",
		"FETCH " HEX_A "0 4096 1",
		"FETCH zz112233445566778899aabbccddeeff00112233445566778899aabbccddeeff 4096 1",
		"FETCH " HEX_A " 0 1",
		"FETCH " HEX_A " 16777217 1",
		"FETCH " HEX_A " -1 1",
		"FETCH " HEX_A " 4096 -1",
		"FETCH " HEX_A " 4096 600001",
		"FETCH " HEX_A " 4096 1x",
		/* the place is both fields or none */
		"FETCH " HEX_A " 4096 1 x",
		"FETCH " HEX_A " 4096 1 " HEX_B,
		"FETCH " HEX_A " 4096 1 12 " HEX_B,
		"FETCH " HEX_A " 4096 1 " HEX_B " -3",
		"FETCH " HEX_A " 4096 1 " HEX_B " 3x",
		"FETCH " HEX_A " 4096 1 " HEX_B " 18446744073709551616",
		"FETCH " HEX_A " 4096 1 " HEX_B " 3 extra",
		"PREFETCH 0011",
		"PREFETCH " HEX_A,
		"PREFETCH " HEX_A " 4096 1",
		"TOUCH",
		"TOUCH zz",
		"HIT",
		"HIT " HEX_B,
		"HIT " HEX_B " 3",
		"HIT " HEX_B " x " HEX_A,
		"HIT " HEX_B " -1 " HEX_A,
		"HIT " HEX_B " 3 " HEX_A " extra",
		"HIT 3 " HEX_B " " HEX_A,
		"HIT " HEX_B " 18446744073709551616 " HEX_A,
	};
	struct fetch_req r;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (parse(bad[i], &r) != -EPROTO)
			fail_msg("accepted: \"%s\"", bad[i]);
	}
	/* An embedded NUL or newline is not part of any line. */
	assert_int_equal(fetch_proto_parse("FETCH " HEX_A "\0 4096 1", 78, &r), -EPROTO);
	assert_int_equal(fetch_proto_parse("TOUCH " HEX_A "\nTOUCH " HEX_A, 141, &r), -EPROTO);
	/* Longer than the protocol's limit. */
	{
		static char big[FETCH_PROTO_LINE_MAX + 2];

		memset(big, 'A', sizeof(big) - 1);
		assert_int_equal(fetch_proto_parse(big, sizeof(big) - 1, &r), -EPROTO);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_fetch_old_form),
		cmocka_unit_test(test_fetch_with_place),
		cmocka_unit_test(test_format_round_trip),
		cmocka_unit_test(test_prefetch_and_touch),
		cmocka_unit_test(test_hit),
		cmocka_unit_test(test_bad_lines),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
