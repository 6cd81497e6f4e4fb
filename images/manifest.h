/*
 * manifest.h - the image manifest: what an image is made of (DESIGN.md section 2).
 *
 * An image is immutable. It is cut into fixed-size chunks; each chunk is named by the
 * SHA-256 of its uncompressed bytes, and an all-zero chunk is recorded as null (never
 * stored, never fetched). The last chunk may be short when the image size is not a
 * multiple of the chunk size. The image id is the SHA-256 of the manifest's bytes, so
 * the manifest text as published is canonical: parse it, never re-serialise it to find
 * the id.
 *
 * JSON form (format 1):
 *   {"format": 1, "size": <bytes>, "chunk_size": <bytes>, "hash": "sha256",
 *    "chunks": ["<64 hex>" | null, ...]}
 * with exactly ceil(size / chunk_size) entries.
 */
#ifndef RACKDISK_IMAGES_MANIFEST_H
#define RACKDISK_IMAGES_MANIFEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/hash.h"

#define MANIFEST_FORMAT	   1
#define CHUNK_SIZE_MIN	   (64u * 1024)
#define CHUNK_SIZE_MAX	   (16u * 1024 * 1024)
#define CHUNK_SIZE_DEFAULT (1024u * 1024)
/* A manifest larger than this is refused before it is parsed (64 PiB at 1 MiB chunks
 * would be far more; this bounds memory on hostile input), and never written: about 4 M
 * chunks that hold data (67 bytes of text each), 53 M all-zero ones (5 bytes). */
#define MANIFEST_MAX_BYTES (256u * 1024 * 1024)

struct manifest {
	uint64_t size;		   /* image size in bytes */
	uint32_t chunk_size;	   /* power of two, CHUNK_SIZE_MIN..CHUNK_SIZE_MAX */
	uint32_t chunk_shift;	   /* log2(chunk_size) */
	uint64_t nchunks;	   /* ceil(size / chunk_size) */
	struct chunk_hash *hashes; /* nchunks entries; undefined where zero[i] */
	uint8_t *zero;		   /* nchunks flags: 1 = all-zero chunk (null in JSON) */
	struct chunk_hash id;	   /* SHA-256 of the manifest bytes */
};

/* True when n is a power of two within CHUNK_SIZE_MIN..CHUNK_SIZE_MAX. */
bool manifest_chunk_size_valid(uint64_t n);

/* Allocates an empty manifest for an image of `size` bytes cut at `chunk_size`;
 * all chunks start as zero. -EINVAL for a bad chunk size, -ENOMEM. */
int manifest_new(uint64_t size, uint32_t chunk_size, struct manifest **out);

/*
 * Parses and validates manifest bytes, and computes the id over exactly those bytes.
 * Errors: -EINVAL malformed JSON or wrong types, -EPROTONOSUPPORT unknown format,
 * -ERANGE sizes that disagree (entry count, chunk size, size), -E2BIG over the limit.
 * When err is non-NULL a one-line reason is written there (errlen bytes).
 */
int manifest_parse(const char *buf, size_t len, struct manifest **out, char *err, size_t errlen);

/*
 * Serialises to canonical JSON (malloc'd, caller frees) and sets m->id to its hash. -E2BIG,
 * before allocating anything, when the text would pass MANIFEST_MAX_BYTES (no reader would
 * accept it); -ENOMEM.
 */
int manifest_serialize(struct manifest *m, char **buf, size_t *len);

/*
 * The length of the text manifest_serialize() writes for an image of `size` bytes cut at
 * `chunk_size` (valid), `nonzero` of whose chunks hold data: the length depends on nothing
 * else. Counting every other chunk as zero gives a lower bound while the chunks are still
 * being read, which is how publish refuses an image early rather than after reading it.
 */
uint64_t manifest_text_len(uint64_t size, uint32_t chunk_size, uint64_t nonzero);

/* How many chunks an image of `size` bytes has at `chunk_size` (the last may be short);
 * never overflows, whatever a hostile manifest says. */
static inline uint64_t manifest_nchunks(uint64_t size, uint64_t chunk_size)
{
	return size / chunk_size + (size % chunk_size != 0);
}

void manifest_free(struct manifest *m);

/* Length in bytes of chunk idx (the last one may be short). */
uint32_t manifest_chunk_len(const struct manifest *m, uint64_t idx);

static inline bool manifest_chunk_is_zero(const struct manifest *m, uint64_t idx)
{
	return m->zero[idx] != 0;
}

#endif
