/*
 * seed.h - the seed repository client: fetches one chunk object, decompresses it and
 * checks its hash (DESIGN.md sections 2 and 5).
 *
 * The seed is a published repository behind any HTTP(S) server, or a local directory
 * (file://PATH or a plain path; used by tests and the demo). HTTP requests reuse
 * keep-alive connections from a pool of libcurl easy handles, so parallel callers each
 * get a warm connection; the fetcher bounds the parallelism with its worker threads.
 *
 * Thread safety: every call may be made from any thread at once, except seed_close().
 */
#ifndef RACKDISK_CLUSTER_SEED_H
#define RACKDISK_CLUSTER_SEED_H

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

#include "common/hash.h"
#include "common/hugebuf.h"

struct seed;

struct seed_opts {
	const char *url; /* http(s)://, file:///PATH, file://localhost/PATH, a directory (repoloc.h) */
	uint64_t request_timeout_ms; /* one request, whole transfer (default 10000) */
	uint64_t connect_timeout_ms; /* TCP + TLS connect (default 3000) */
	/* A transfer slower than low_speed_bytes per second for low_speed_secs is abandoned
	 * (a stalled or crawling seed); defaults 16384 and 5. */
	uint64_t low_speed_bytes;
	uint64_t low_speed_secs;
	const char *ca_file; /* PEM CA bundle for https (NULL: the system's) */
};

int seed_open(const struct seed_opts *o, struct seed **out);
void seed_close(struct seed *s);

/* The repository location as configured, without the user:password@ of a URL (for log
 * messages: repoloc_shown). */
const char *seed_url(const struct seed *s);

/*
 * Fetches chunk *h into out[0..len), decompressed and verified. The object is received
 * into rxbuf, the caller's, reserved here to the largest valid object for len (and kept
 * for the next call). deadline_ns (CLOCK_MONOTONIC, 0 = none) caps the request on top of
 * request_timeout_ms.
 * Errors:
 *   -ENOENT     the repository has no such object (HTTP 404/410, no file);
 *   -EBADMSG    corrupt or truncated object, -EMSGSIZE wrong decompressed size,
 *   -EILSEQ     wrong hash, -EFBIG object larger than any valid encoding of len bytes
 *               (all four: a fault of the source, see seed_err_is_corrupt);
 *   -ETIMEDOUT  request or connect timeout, or too slow;
 *   -ECONNREFUSED nothing listening, -EIO other transport errors and HTTP 5xx,
 *   -EACCES     HTTP 401/403, -EKEYREJECTED TLS handshake or certificate check failed,
 *   -ECANCELED  seed_cancel() was called, -ENOMEM.
 */
int seed_get_chunk(struct seed *s, const struct chunk_hash *h, void *out, size_t len,
		   struct hugebuf *rxbuf, uint64_t deadline_ns);

/* True for the errors above that mean the seed sent bad bytes. */
static inline int seed_err_is_corrupt(int err)
{
	return err == -EBADMSG || err == -EMSGSIZE || err == -EILSEQ || err == -EFBIG;
}

struct seed_stats {
	uint64_t requests;  /* HTTP requests sent (or files read) */
	uint64_t connects;  /* new connections opened; requests - connects were reused */
	uint64_t bytes_received; /* object bytes, compressed */
};
void seed_get_stats(struct seed *s, struct seed_stats *st);

/* Makes transfers in progress and later ones end with -ECANCELED (for shutdown). */
void seed_cancel(struct seed *s);

#endif
