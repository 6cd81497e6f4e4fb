/*
 * manifest.c - parsing, validation and canonical serialisation of image manifests.
 *
 * The id of an image is the SHA-256 of the manifest bytes exactly as published, so this
 * file has two jobs that must never be mixed up: manifest_serialize() produces the one
 * canonical text for a manifest (fixed key order, compact, one trailing newline), and
 * manifest_parse() accepts any valid text and hashes the bytes it was given, never a
 * re-serialisation of them.
 *
 * Validation refuses anything a reader could misuse: wrong types, an unknown format or
 * hash algorithm, a chunk size out of range, an entry count that disagrees with the size,
 * hashes that are not 64 hex digits. Every refusal carries a one-line reason.
 */
#include "common/util.h"
#include "images/manifest.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

bool manifest_chunk_size_valid(uint64_t n)
{
	return n >= CHUNK_SIZE_MIN && n <= CHUNK_SIZE_MAX && (n & (n - 1)) == 0;
}

static uint32_t log2_u32(uint32_t n)
{
	return (uint32_t)__builtin_ctz(n);
}

int manifest_new(uint64_t size, uint32_t chunk_size, struct manifest **out)
{
	struct manifest *m;
	uint64_t n;

	if (!manifest_chunk_size_valid(chunk_size))
		return -EINVAL;
	n = manifest_nchunks(size, chunk_size);
	if (n > SIZE_MAX / sizeof(struct chunk_hash))
		return -ENOMEM;
	m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	m->size = size;
	m->chunk_size = chunk_size;
	m->chunk_shift = log2_u32(chunk_size);
	m->nchunks = n;
	/* One extra element so that an empty image still gets non-NULL arrays. */
	m->hashes = calloc((size_t)n + 1, sizeof(*m->hashes));
	m->zero = malloc((size_t)n + 1);
	if (!m->hashes || !m->zero) {
		manifest_free(m);
		return -ENOMEM;
	}
	memset(m->zero, 1, (size_t)n + 1);
	*out = m;
	return 0;
}

void manifest_free(struct manifest *m)
{
	if (!m)
		return;
	free(m->hashes);
	free(m->zero);
	free(m);
}

uint32_t manifest_chunk_len(const struct manifest *m, uint64_t idx)
{
	uint64_t off = idx << m->chunk_shift;

	if (off >= m->size)
		return 0;
	return (uint32_t)(m->size - off < m->chunk_size ? m->size - off : m->chunk_size);
}

#define fail set_err

/* Reads a non-negative integer member; jansson integers are signed 64-bit. */
static int get_uint(json_t *root, const char *key, uint64_t *out, char *err, size_t errlen)
{
	json_t *v = json_object_get(root, key);

	if (!v)
		return fail(err, errlen, -EINVAL, "malformed manifest: missing \"%s\"", key);
	if (!json_is_integer(v) || json_integer_value(v) < 0)
		return fail(err, errlen, -EINVAL,
			    "malformed manifest: \"%s\" is not a non-negative integer", key);
	*out = (uint64_t)json_integer_value(v);
	return 0;
}

static int parse_header(json_t *root, uint64_t *size, uint64_t *cs, char *err, size_t errlen)
{
	json_t *fmt = json_object_get(root, "format");
	json_t *alg = json_object_get(root, "hash");
	int ret;

	if (!json_is_object(root))
		return fail(err, errlen, -EINVAL, "malformed manifest: not a JSON object");
	if (!fmt)
		return fail(err, errlen, -EINVAL, "malformed manifest: missing \"format\"");
	if (!json_is_integer(fmt))
		return fail(err, errlen, -EINVAL,
			    "malformed manifest: \"format\" is not an integer");
	if (json_integer_value(fmt) != MANIFEST_FORMAT)
		return fail(err, errlen, -EPROTONOSUPPORT,
			    "unknown manifest format %lld (this build reads format %d)",
			    (long long)json_integer_value(fmt), MANIFEST_FORMAT);
	if (!json_is_string(alg))
		return fail(err, errlen, -EINVAL, "malformed manifest: missing or bad \"hash\"");
	if (strcmp(json_string_value(alg), "sha256") != 0)
		return fail(err, errlen, -EPROTONOSUPPORT, "unknown hash algorithm \"%s\"",
			    json_string_value(alg));
	ret = get_uint(root, "size", size, err, errlen);
	if (!ret)
		ret = get_uint(root, "chunk_size", cs, err, errlen);
	if (ret)
		return ret;
	if (!manifest_chunk_size_valid(*cs))
		return fail(err, errlen, -ERANGE,
			    "chunk size %llu is not a power of two from 64 KiB to 16 MiB",
			    (unsigned long long)*cs);
	return 0;
}

static int parse_chunks(json_t *arr, struct manifest *m, char *err, size_t errlen)
{
	for (uint64_t i = 0; i < m->nchunks; i++) {
		json_t *e = json_array_get(arr, (size_t)i);
		const char *s;

		if (json_is_null(e)) {
			m->zero[i] = 1;
			continue;
		}
		if (!json_is_string(e))
			return fail(err, errlen, -EINVAL,
				    "malformed manifest: chunk %llu is neither a hash nor null",
				    (unsigned long long)i);
		s = json_string_value(e);
		if (hash_from_hex(s, json_string_length(e), &m->hashes[i]) < 0)
			return fail(err, errlen, -EINVAL,
				    "malformed manifest: chunk %llu: bad hex hash \"%.70s\"",
				    (unsigned long long)i, s);
		m->zero[i] = 0;
	}
	return 0;
}

int manifest_parse(const char *buf, size_t len, struct manifest **out, char *err, size_t errlen)
{
	struct manifest *m = NULL;
	json_error_t jerr;
	json_t *root = NULL, *arr;
	uint64_t size = 0, cs = 0, want;
	int ret;

	if (len > MANIFEST_MAX_BYTES)
		return fail(err, errlen, -E2BIG, "manifest of %zu bytes is over the %u-byte limit",
			    len, MANIFEST_MAX_BYTES);
	root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		ret = fail(err, errlen, -EINVAL, "malformed manifest: line %d: %s", jerr.line,
			   jerr.text);
		goto out;
	}
	ret = parse_header(root, &size, &cs, err, errlen);
	if (ret)
		goto out;
	arr = json_object_get(root, "chunks");
	if (!json_is_array(arr)) {
		ret = fail(err, errlen, -EINVAL, "malformed manifest: \"chunks\" is not an array");
		goto out;
	}
	/* Compare counts before allocating: a hostile size must not cost memory. */
	want = manifest_nchunks(size, cs);
	if (want != json_array_size(arr)) {
		ret = fail(err, errlen, -ERANGE,
			   "sizes disagree: size %llu at chunk size %llu needs %llu entries, "
			   "manifest has %zu",
			   (unsigned long long)size, (unsigned long long)cs,
			   (unsigned long long)want, json_array_size(arr));
		goto out;
	}
	ret = manifest_new(size, (uint32_t)cs, &m);
	if (ret) {
		fail(err, errlen, ret, "manifest: %s", strerror(-ret));
		goto out;
	}
	ret = parse_chunks(arr, m, err, errlen);
	if (ret)
		goto out;
	hash_compute(buf, len, &m->id);
	*out = m;
	m = NULL;
out:
	manifest_free(m);
	json_decref(root);
	return ret;
}

static uint64_t decimal_digits(uint64_t v)
{
	uint64_t n = 1;

	while (v >= 10) {
		v /= 10;
		n++;
	}
	return n;
}

uint64_t manifest_text_len(uint64_t size, uint32_t chunk_size, uint64_t nonzero)
{
	/* {"format":1,"size":S,"chunk_size":C,"hash":"sha256","chunks":[E,E,...]}\n with E
	 * either "<64 hex>" or null: 63 bytes around S, C and the entries. */
	uint64_t n = manifest_nchunks(size, chunk_size);

	return 63 + decimal_digits(size) + decimal_digits(chunk_size) +
	       nonzero * (HASH_HEX_LEN + 2) + (n - nonzero) * 4 + (n ? n - 1 : 0);
}

int manifest_serialize(struct manifest *m, char **buf, size_t *len)
{
	json_t *root = NULL, *arr = NULL;
	char hex[HASH_HEX_LEN + 1];
	char *text = NULL, *res;
	uint64_t nonzero = 0;
	size_t n;
	int ret = -ENOMEM;

	/* Writing what every reader refuses (manifest_parse, repo fetches) would publish an
	 * image nobody can use; checked first, as the text itself can take a gigabyte. */
	for (uint64_t i = 0; i < m->nchunks; i++)
		nonzero += !m->zero[i];
	if (manifest_text_len(m->size, m->chunk_size, nonzero) > MANIFEST_MAX_BYTES)
		return -E2BIG;
	root = json_object();
	arr = json_array();
	if (!root || !arr)
		goto out;
	/* jansson keeps insertion order, which makes this key order the canonical one. */
	if (json_object_set_new(root, "format", json_integer(MANIFEST_FORMAT)) ||
	    json_object_set_new(root, "size", json_integer((json_int_t)m->size)) ||
	    json_object_set_new(root, "chunk_size", json_integer(m->chunk_size)) ||
	    json_object_set_new(root, "hash", json_string("sha256")))
		goto out;
	for (uint64_t i = 0; i < m->nchunks; i++) {
		json_t *e;

		if (m->zero[i]) {
			e = json_null();
		} else {
			hash_to_hex(&m->hashes[i], hex);
			e = json_string(hex);
		}
		if (json_array_append_new(arr, e))
			goto out;
	}
	if (json_object_set(root, "chunks", arr))
		goto out;
	text = json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER);
	if (!text)
		goto out;
	n = strlen(text);
	res = realloc(text, n + 2);
	if (!res)
		goto out;
	text = res;
	text[n++] = '\n';
	text[n] = '\0';
	hash_compute(text, n, &m->id);
	*buf = text;
	*len = n;
	text = NULL;
	ret = 0;
out:
	free(text);
	json_decref(arr);
	json_decref(root);
	return ret;
}
