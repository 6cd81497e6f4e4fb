/*
 * hash.h - chunk hashes (SHA-256) and their hex spelling.
 *
 * A chunk is named by the SHA-256 of its uncompressed bytes (DESIGN.md section 2).
 * The binary form is what the code passes around; the 64-character lowercase hex form
 * is what appears in file names, manifests, URLs and Redis keys.
 */
#ifndef RACKDISK_COMMON_HASH_H
#define RACKDISK_COMMON_HASH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define HASH_LEN 32
#define HASH_HEX_LEN 64

struct chunk_hash {
	uint8_t b[HASH_LEN];
};

/* SHA-256 of buf[0..len) into *out. */
void hash_compute(const void *buf, size_t len, struct chunk_hash *out);

/* True when buf[0..len) hashes to *h. */
bool hash_verify(const void *buf, size_t len, const struct chunk_hash *h);

/* Writes 64 hex digits and a NUL into hex[HASH_HEX_LEN + 1]. */
void hash_to_hex(const struct chunk_hash *h, char hex[HASH_HEX_LEN + 1]);

/* Parses exactly 64 lowercase or uppercase hex digits; -EINVAL otherwise. */
int hash_from_hex(const char *hex, size_t len, struct chunk_hash *out);

bool hash_equal(const struct chunk_hash *a, const struct chunk_hash *b);

/* True when buf[0..len) is all zero bytes (fast, word at a time). */
bool buf_is_zero(const void *buf, size_t len);

#endif
