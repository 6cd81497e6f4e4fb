/*
 * aio.h - reads through Linux native AIO (libaio), for worker threads and event loops.
 *
 * Two ways to use it:
 *  - synchronous, from any worker thread: aio_pread() submits and waits on a per-thread
 *    context; nothing to set up;
 *  - event loop: aio_ctx_new() gives a context whose completions signal an eventfd
 *    (aio_ctx_fd()); register it with the loop, submit with aio_submit(), and when the fd
 *    is readable call aio_reap(), which runs each request's done callback on the caller's
 *    thread.
 *
 * O_DIRECT: pass direct = true for descriptors opened with O_DIRECT. Requests that are not
 * aligned to AIO_ALIGN (buffer, offset or length) are read through an aligned bounce
 * buffer, so callers never care. aio_direct_supported() probes whether a filesystem takes
 * O_DIRECT at all (tmpfs before Linux 6.6 refuses it with EINVAL).
 *
 * Native AIO is only asynchronous for O_DIRECT descriptors: on a buffered descriptor the
 * kernel performs the read inside io_submit(). So the synchronous helper reads buffered
 * descriptors with a plain pread (measured faster: one syscall instead of two, see
 * tests/bench/bench_store_read.c), and an event loop that must never block should use
 * O_DIRECT descriptors.
 *
 * Errors: 0 or a negative errno; a read that ends before len bytes (end of file) is -EIO.
 */
#ifndef RACKDISK_CACHE_AIO_H
#define RACKDISK_CACHE_AIO_H

#include <libaio.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define AIO_ALIGN 4096u

struct aio_ctx;

struct aio_req {
	/* set by the caller before aio_submit(); the request must stay valid until done */
	int fd;
	bool direct;
	void *buf;
	size_t len;
	uint64_t off;
	void (*done)(struct aio_req *req, int res); /* res: 0 or a negative errno */
	void *arg;
	/* private */
	struct iocb iocb;
	void *bounce;
	size_t skip; /* offset of the caller's bytes within the bounce buffer */
};

/* A context for up to depth requests in flight, signalling an eventfd on completion. */
int aio_ctx_new(unsigned depth, struct aio_ctx **out);
/* Waits (bounded) for requests still in flight, without running their callbacks. */
void aio_ctx_free(struct aio_ctx *ctx);
int aio_ctx_fd(const struct aio_ctx *ctx);
unsigned aio_ctx_inflight(const struct aio_ctx *ctx);

/* Submits a read. -EAGAIN when depth requests are already in flight. */
int aio_submit(struct aio_ctx *ctx, struct aio_req *req);
/* Runs the callbacks of completed requests without blocking; returns how many ran. */
int aio_reap(struct aio_ctx *ctx);
/* Blocks until at least one request completes or timeout_ms passes, then reaps. */
int aio_wait(struct aio_ctx *ctx, int timeout_ms);

/* Reads exactly len bytes at off: submit and wait on a per-thread context. */
int aio_pread(int fd, void *buf, size_t len, uint64_t off, bool direct);
/* The same, always through io_submit (aio_pread() skips it for buffered descriptors);
 * kept for the benchmark that justifies that choice. */
int aio_pread_native(int fd, void *buf, size_t len, uint64_t off, bool direct);

/* True when files in directory dir can be opened with O_DIRECT. */
bool aio_direct_supported(const char *dir);

#endif
