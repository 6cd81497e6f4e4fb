/*
 * hash.c - SHA-256 chunk names through OpenSSL's libcrypto, and hex conversion.
 */
#include "common/hash.h"

#include <errno.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/sha.h>

void hash_compute(const void *buf, size_t len, struct chunk_hash *out)
{
	/* SHA256() uses the CPU's SHA extensions where present and needs no context setup. */
	SHA256(buf, len, out->b);
}

bool hash_verify(const void *buf, size_t len, const struct chunk_hash *h)
{
	struct chunk_hash got;

	hash_compute(buf, len, &got);
	return hash_equal(&got, h);
}

void hash_to_hex(const struct chunk_hash *h, char hex[HASH_HEX_LEN + 1])
{
	static const char digits[] = "0123456789abcdef";

	for (int i = 0; i < HASH_LEN; i++) {
		hex[2 * i] = digits[h->b[i] >> 4];
		hex[2 * i + 1] = digits[h->b[i] & 0xf];
	}
	hex[HASH_HEX_LEN] = '\0';
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int hash_from_hex(const char *hex, size_t len, struct chunk_hash *out)
{
	if (len != HASH_HEX_LEN)
		return -EINVAL;
	for (int i = 0; i < HASH_LEN; i++) {
		int hi = hex_digit(hex[2 * i]);
		int lo = hex_digit(hex[2 * i + 1]);

		if (hi < 0 || lo < 0)
			return -EINVAL;
		out->b[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

bool hash_equal(const struct chunk_hash *a, const struct chunk_hash *b)
{
	return memcmp(a->b, b->b, HASH_LEN) == 0;
}

bool buf_is_zero(const void *buf, size_t len)
{
	const unsigned char *p = buf;

	/* Check the first 16 bytes by hand, then compare the buffer against itself shifted:
	 * memcmp is vectorised, and if the head is zero and buf == buf+16, all of it is. */
	if (len <= 16) {
		for (size_t i = 0; i < len; i++)
			if (p[i])
				return false;
		return true;
	}
	for (size_t i = 0; i < 16; i++)
		if (p[i])
			return false;
	return memcmp(p, p + 16, len - 16) == 0;
}
