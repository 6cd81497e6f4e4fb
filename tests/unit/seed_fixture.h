/*
 * seed_fixture.h - chunk objects written into a test's seed repository where publish puts
 * them (<repo>/chunks/<hh>/<hash>), zstd-compressed as the seed client expects. Header-only,
 * for the unit tests of any directory; cmocka asserts on every step.
 */
#ifndef RACKDISK_TESTS_SEED_FIXTURE_H
#define RACKDISK_TESTS_SEED_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <zstd.h>

#include "common/hash.h"
#include "common/util.h"

/* Writes obj (any bytes, a corrupt object too) as the object named by *named. */
static inline void seed_write_object(const char *repo, const struct chunk_hash *named,
				     const void *obj, size_t len)
{
	char hex[HASH_HEX_LEN + 1], path[512];

	hash_to_hex(named, hex);
	snprintf(path, sizeof(path), "%s/chunks/%.2s", repo, hex);
	assert_int_equal(mkdir_p(path, 0755), 0);
	snprintf(path, sizeof(path), "%s/chunks/%.2s/%s", repo, hex, hex);
	assert_int_equal(write_file_atomic(path, obj, len), 0);
}

/* Publishes data, compressed, as the object named by *named (normally its own hash). */
static inline void seed_put_chunk_as(const char *repo, const struct chunk_hash *named,
				     const void *data, size_t len)
{
	size_t cap = ZSTD_compressBound(len), n;
	void *obj = malloc(cap);

	assert_non_null(obj);
	n = ZSTD_compress(obj, cap, data, len, 3);
	assert_false(ZSTD_isError(n));
	seed_write_object(repo, named, obj, n);
	free(obj);
}

#endif
