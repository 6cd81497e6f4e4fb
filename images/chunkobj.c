/*
 * chunkobj.c - chunk objects: one zstd frame per chunk, with its content size recorded.
 *
 * Recording the content size lets a reader refuse an object of the wrong length before
 * decompressing it, and decompress it in one call into a buffer of exactly that length.
 * Compression and decompression contexts are per thread (publish runs one worker per
 * core), created on first use and freed when the thread exits.
 */
#include "images/chunkobj.h"

#include <errno.h>
#include <pthread.h>
#include <stdio.h>

#include <zstd.h>
#include <zstd_errors.h>

static pthread_key_t cctx_key, dctx_key;
static pthread_once_t keys_once = PTHREAD_ONCE_INIT;

static void free_cctx(void *p)
{
	ZSTD_freeCCtx(p);
}

static void free_dctx(void *p)
{
	ZSTD_freeDCtx(p);
}

static void make_keys(void)
{
	pthread_key_create(&cctx_key, free_cctx);
	pthread_key_create(&dctx_key, free_dctx);
}

static ZSTD_CCtx *thread_cctx(void)
{
	ZSTD_CCtx *c;

	pthread_once(&keys_once, make_keys);
	c = pthread_getspecific(cctx_key);
	if (!c) {
		c = ZSTD_createCCtx();
		if (c && pthread_setspecific(cctx_key, c)) {
			ZSTD_freeCCtx(c);
			c = NULL;
		}
	}
	return c;
}

static ZSTD_DCtx *thread_dctx(void)
{
	ZSTD_DCtx *d;

	pthread_once(&keys_once, make_keys);
	d = pthread_getspecific(dctx_key);
	if (!d) {
		d = ZSTD_createDCtx();
		if (d && pthread_setspecific(dctx_key, d)) {
			ZSTD_freeDCtx(d);
			d = NULL;
		}
	}
	return d;
}

size_t chunkobj_bound(size_t len)
{
	return ZSTD_compressBound(len);
}

long chunkobj_encode(const void *src, size_t len, void *dst, size_t dst_cap, int level)
{
	ZSTD_CCtx *c = thread_cctx();
	size_t n;

	if (!c)
		return -ENOMEM;
	if (dst_cap < chunkobj_bound(len))
		return -ENOSPC;
	/* ZSTD_compressCCtx writes the frame content size and a checksum-free frame; the
	 * SHA-256 of the content already guards it. */
	n = ZSTD_compressCCtx(c, dst, dst_cap, src, len, level);
	if (ZSTD_isError(n))
		return -EIO;
	return (long)n;
}

int chunkobj_decode(const void *obj, size_t obj_len, void *out, size_t expect_len,
		    const struct chunk_hash *h)
{
	ZSTD_DCtx *d = thread_dctx();
	unsigned long long content;
	size_t frame, n;

	if (!d)
		return -ENOMEM;
	content = ZSTD_getFrameContentSize(obj, obj_len);
	if (content == ZSTD_CONTENTSIZE_ERROR || content == ZSTD_CONTENTSIZE_UNKNOWN)
		return -EBADMSG;
	if (content != expect_len)
		return -EMSGSIZE;
	/* Exactly one frame and nothing after it: trailing bytes mean a damaged object. */
	frame = ZSTD_findFrameCompressedSize(obj, obj_len);
	if (ZSTD_isError(frame) || frame != obj_len)
		return -EBADMSG;
	n = ZSTD_decompressDCtx(d, out, expect_len, obj, obj_len);
	if (ZSTD_isError(n))
		return -EBADMSG;
	if (n != expect_len)
		return -EMSGSIZE;
	if (!hash_verify(out, expect_len, h))
		return -EILSEQ;
	return 0;
}

bool chunkobj_is_truncated(const void *obj, size_t obj_len)
{
	size_t frame = ZSTD_findFrameCompressedSize(obj, obj_len);

	return obj_len == 0 ||
	       (ZSTD_isError(frame) && ZSTD_getErrorCode(frame) == ZSTD_error_srcSize_wrong);
}

const char *chunkobj_strerror(int err, bool truncated)
{
	switch (err) {
	case -EBADMSG:
		return truncated ? "truncated" : "corrupt";
	case -EMSGSIZE:
		return "wrong size";
	case -EILSEQ:
		return "wrong hash";
	case -ENOENT:
		return "missing";
	default:
		return NULL;
	}
}

void chunkobj_path(const struct chunk_hash *h, char *buf, size_t len)
{
	char hex[HASH_HEX_LEN + 1];

	hash_to_hex(h, hex);
	snprintf(buf, len, "chunks/%.2s/%s", hex, hex);
}
