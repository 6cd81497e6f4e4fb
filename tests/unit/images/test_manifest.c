/*
 * test_manifest.c - manifest parsing, validation and canonical serialisation.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "images/manifest.h"

#define H1 "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"
#define H2 "ffeeddccbbaa99887766554433221100ffeeddccbbaa99887766554433221100"

static int parse(const char *text, struct manifest **m, char *err)
{
	return manifest_parse(text, strlen(text), m, err, 256);
}

static void test_valid(void **state)
{
	const char *text = "{\"format\":1,\"size\":200000,\"chunk_size\":65536,\"hash\":\"sha256\","
			   "\"chunks\":[\"" H1 "\",null,\"" H2 "\",null]}";
	struct manifest *m = NULL;
	struct chunk_hash h, id;
	char err[256] = "";

	assert_int_equal(parse(text, &m, err), 0);
	assert_non_null(m);
	assert_int_equal(m->size, 200000);
	assert_int_equal(m->chunk_size, 65536);
	assert_int_equal(m->chunk_shift, 16);
	assert_int_equal(m->nchunks, 4);
	assert_false(manifest_chunk_is_zero(m, 0));
	assert_true(manifest_chunk_is_zero(m, 1));
	assert_false(manifest_chunk_is_zero(m, 2));
	assert_true(manifest_chunk_is_zero(m, 3));
	assert_int_equal(hash_from_hex(H2, 64, &h), 0);
	assert_true(hash_equal(&m->hashes[2], &h));
	assert_int_equal(manifest_chunk_len(m, 0), 65536);
	assert_int_equal(manifest_chunk_len(m, 3), 200000 - 3 * 65536);
	/* The id is the hash of exactly the given bytes. */
	hash_compute(text, strlen(text), &id);
	assert_true(hash_equal(&m->id, &id));
	manifest_free(m);
}

static void expect_error(const char *text, int want, const char *reason)
{
	struct manifest *m = NULL;
	char err[256] = "";

	assert_int_equal(parse(text, &m, err), want);
	assert_null(m);
	assert_non_null(strstr(err, reason));
	assert_null(strchr(err, '\n')); /* one line */
}

static void test_malformed(void **state)
{
	expect_error("{\"format\":1,", -EINVAL, "malformed");
	expect_error("[1,2]", -EINVAL, "malformed");
	expect_error("", -EINVAL, "malformed");
	expect_error("{\"format\":1,\"size\":1,\"chunk_size\":65536,\"hash\":\"sha256\"}", -EINVAL,
		     "chunks");
	expect_error("{\"format\":1,\"size\":\"1\",\"chunk_size\":65536,\"hash\":\"sha256\","
		     "\"chunks\":[null]}",
		     -EINVAL, "size");
	expect_error("{\"format\":1,\"size\":-5,\"chunk_size\":65536,\"hash\":\"sha256\","
		     "\"chunks\":[null]}",
		     -EINVAL, "size");
	expect_error("{\"format\":1,\"size\":1,\"chunk_size\":65536,\"hash\":\"sha256\","
		     "\"chunks\":[7]}",
		     -EINVAL, "chunk 0");
	expect_error(
		"{\"format\":1,\"format\":1,\"size\":1,\"chunk_size\":65536,\"hash\":\"sha256\","
		"\"chunks\":[null]}",
		-EINVAL, "malformed");
}

static void test_unknown_version(void **state)
{
	expect_error("{\"format\":2,\"size\":1,\"chunk_size\":65536,\"hash\":\"sha256\","
		     "\"chunks\":[null]}",
		     -EPROTONOSUPPORT, "unknown manifest format 2");
	expect_error("{\"format\":1,\"size\":1,\"chunk_size\":65536,\"hash\":\"md5\","
		     "\"chunks\":[null]}",
		     -EPROTONOSUPPORT, "unknown hash");
}

static void test_sizes_disagree(void **state)
{
	/* 3 chunks needed, 2 given; and 1 needed, 2 given. */
	expect_error("{\"format\":1,\"size\":131073,\"chunk_size\":65536,\"hash\":\"sha256\","
		     "\"chunks\":[null,null]}",
		     -ERANGE, "sizes disagree");
	expect_error("{\"format\":1,\"size\":65536,\"chunk_size\":65536,\"hash\":\"sha256\","
		     "\"chunks\":[null,null]}",
		     -ERANGE, "sizes disagree");
	/* A huge size must be refused by the count check, not by allocating. */
	expect_error("{\"format\":1,\"size\":9000000000000000000,\"chunk_size\":65536,"
		     "\"hash\":\"sha256\",\"chunks\":[null]}",
		     -ERANGE, "sizes disagree");
	expect_error("{\"format\":1,\"size\":1,\"chunk_size\":65537,\"hash\":\"sha256\","
		     "\"chunks\":[null]}",
		     -ERANGE, "chunk size");
	expect_error("{\"format\":1,\"size\":1,\"chunk_size\":32768,\"hash\":\"sha256\","
		     "\"chunks\":[null]}",
		     -ERANGE, "chunk size");
	expect_error("{\"format\":1,\"size\":1,\"chunk_size\":33554432,\"hash\":\"sha256\","
		     "\"chunks\":[null]}",
		     -ERANGE, "chunk size");
}

static void test_bad_hex(void **state)
{
	expect_error("{\"format\":1,\"size\":1,\"chunk_size\":65536,\"hash\":\"sha256\","
		     "\"chunks\":[\"" H1 "0\"]}",
		     -EINVAL, "bad hex");
	expect_error("{\"format\":1,\"size\":1,\"chunk_size\":65536,\"hash\":\"sha256\","
		     "\"chunks\":["
		     "\"zz112233445566778899aabbccddeeff00112233445566778899aabbccddeeff\"]}",
		     -EINVAL, "bad hex");
	expect_error("{\"format\":1,\"size\":1,\"chunk_size\":65536,\"hash\":\"sha256\","
		     "\"chunks\":[\"\"]}",
		     -EINVAL, "bad hex");
}

static void test_too_big(void **state)
{
	struct manifest *m = NULL;
	char err[256];

	assert_int_equal(manifest_parse("{}", (size_t)MANIFEST_MAX_BYTES + 1, &m, err, sizeof(err)),
			 -E2BIG);
}

static void test_round_trip(void **state)
{
	struct manifest *m = NULL, *back = NULL;
	char *text = NULL, *text2 = NULL;
	size_t len, len2;
	char err[256] = "";

	assert_int_equal(manifest_new(5 * 1048576 + 17, 1048576, &m), 0);
	assert_int_equal(m->nchunks, 6);
	for (uint64_t i = 0; i < m->nchunks; i += 2) {
		uint64_t v = i * 7919 + 1;

		hash_compute(&v, sizeof(v), &m->hashes[i]);
		m->zero[i] = 0;
	}
	assert_int_equal(manifest_serialize(m, &text, &len), 0);
	assert_int_equal(len, strlen(text));
	assert_int_equal(text[len - 1], '\n');
	assert_int_equal(manifest_parse(text, len, &back, err, sizeof(err)), 0);
	assert_true(hash_equal(&back->id, &m->id));
	assert_int_equal(back->size, m->size);
	assert_int_equal(back->chunk_size, m->chunk_size);
	assert_int_equal(back->nchunks, m->nchunks);
	for (uint64_t i = 0; i < m->nchunks; i++) {
		assert_int_equal(back->zero[i], m->zero[i]);
		if (!m->zero[i])
			assert_true(hash_equal(&back->hashes[i], &m->hashes[i]));
	}
	/* Canonical: serialising the parsed manifest gives the same bytes. */
	assert_int_equal(manifest_serialize(back, &text2, &len2), 0);
	assert_int_equal(len, len2);
	assert_memory_equal(text, text2, len);
	free(text);
	free(text2);
	manifest_free(m);
	manifest_free(back);
}

/* manifest_text_len is exactly the length manifest_serialize writes. */
static void test_text_len_is_the_serialized_length(void **state)
{
	static const struct {
		uint64_t size;
		uint32_t cs;
	} shapes[] = {
		{0, 65536},	     {1, 65536},
		{65536, 65536},	     {5 * 1048576 + 17, 1048576},
		{123456789, 131072}, {9, 16u * 1024 * 1024},
	};

	for (size_t k = 0; k < sizeof(shapes) / sizeof(shapes[0]); k++) {
		for (int every = 1; every <= 3; every++) { /* all, half, a third hold data */
			struct manifest *m = NULL;
			uint64_t nonzero = 0;
			char *text = NULL;
			size_t len;

			assert_int_equal(manifest_new(shapes[k].size, shapes[k].cs, &m), 0);
			for (uint64_t i = 0; i < m->nchunks; i += (uint64_t)every) {
				m->zero[i] = 0;
				nonzero++;
			}
			assert_int_equal(manifest_serialize(m, &text, &len), 0);
			assert_int_equal(manifest_text_len(shapes[k].size, shapes[k].cs, nonzero),
					 len);
			assert_int_equal(
				manifest_text_len(shapes[k].size, shapes[k].cs, 0),
				len - nonzero * 62); /* "<64 hex>" is 62 bytes more than null */
			free(text);
			manifest_free(m);
		}
	}
}

/*
 * A manifest every reader would refuse (over MANIFEST_MAX_BYTES) is never serialised: 4.1 M
 * chunks holding data would take 274,700,079 bytes. The limit falls between 4,006,498 and
 * 4,006,499 such chunks at 64 KiB.
 */
static void test_serialize_refuses_what_readers_refuse(void **state)
{
	const uint64_t n = 4100000, fit = 4006498;
	struct manifest *m = NULL;
	char *text = NULL;
	size_t len = 0;

	assert_int_equal(manifest_text_len(n * 65536, 65536, n), 274700079);
	assert_true(manifest_text_len(fit * 65536, 65536, fit) <= MANIFEST_MAX_BYTES);
	assert_true(manifest_text_len((fit + 1) * 65536, 65536, fit + 1) > MANIFEST_MAX_BYTES);
	assert_int_equal(manifest_new(n * 65536, 65536, &m), 0);
	memset(m->zero, 0, n); /* every chunk holds data (all with the zero hash: no matter) */
	assert_int_equal(manifest_serialize(m, &text, &len), -E2BIG);
	assert_null(text);
	manifest_free(m);
}

static void test_chunk_size_valid(void **state)
{
	assert_true(manifest_chunk_size_valid(64 * 1024));
	assert_true(manifest_chunk_size_valid(16 * 1024 * 1024));
	assert_false(manifest_chunk_size_valid(32 * 1024));
	assert_false(manifest_chunk_size_valid(32 * 1024 * 1024));
	assert_false(manifest_chunk_size_valid(3 * 65536));
	assert_false(manifest_chunk_size_valid(0));
	struct manifest *m = NULL;
	assert_int_equal(manifest_new(100, 1000, &m), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid),
		cmocka_unit_test(test_malformed),
		cmocka_unit_test(test_unknown_version),
		cmocka_unit_test(test_sizes_disagree),
		cmocka_unit_test(test_bad_hex),
		cmocka_unit_test(test_too_big),
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_chunk_size_valid),
		cmocka_unit_test(test_text_len_is_the_serialized_length),
		cmocka_unit_test(test_serialize_refuses_what_readers_refuse),
	};

	return cmocka_run_group_tests_name("manifest", tests, NULL, NULL);
}
