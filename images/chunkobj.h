/*
 * chunkobj.h - chunk objects as stored in a repository: chunks/<hh>/<hash>, the
 * zstd-compressed bytes of one chunk (a single zstd frame with its content size set).
 *
 * Decoding always checks the decompressed length and the SHA-256: a truncated, corrupt
 * or substituted object is an error of its source, never data.
 */
#ifndef RACKDISK_IMAGES_CHUNKOBJ_H
#define RACKDISK_IMAGES_CHUNKOBJ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/hash.h"

/* Upper bound on the compressed size of a chunk of `len` bytes. */
size_t chunkobj_bound(size_t len);

/* Compresses src[0..len) into dst (dst_cap >= chunkobj_bound(len)) at `level`.
 * Returns the object size or a negative errno. */
long chunkobj_encode(const void *src, size_t len, void *dst, size_t dst_cap, int level);

/*
 * Decompresses obj[0..obj_len) into out, which must hold exactly `expect_len` bytes,
 * and verifies the result against *h.
 * Errors: -EBADMSG corrupt or truncated frame, -EMSGSIZE wrong decompressed size,
 * -EILSEQ hash mismatch.
 */
int chunkobj_decode(const void *obj, size_t obj_len, void *out, size_t expect_len,
		    const struct chunk_hash *h);

/* After chunkobj_decode returned -EBADMSG: true when obj looks like the beginning of a
 * valid frame cut short (a truncated object) rather than damaged bytes. */
bool chunkobj_is_truncated(const void *obj, size_t obj_len);

/* Short name of a decode error for reports ("missing", "truncated", "corrupt",
 * "wrong size", "wrong hash"), or NULL for errors that are not about the object. */
const char *chunkobj_strerror(int err, bool truncated);

/* Relative path of a chunk object in a repository: "chunks/<hh>/<hash>". */
void chunkobj_path(const struct chunk_hash *h, char *buf, size_t len);

#endif
