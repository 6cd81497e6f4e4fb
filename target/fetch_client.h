/*
 * fetch_client.h - the module's side of the fetch socket (target/fetch_proto.h, point 2).
 *
 * A small pool of unix-socket connections to rackdiskd. A request takes an idle
 * connection (or opens one), sends one line, waits for its one reply line and gives the
 * connection back, so each tgtd worker thread in effect has its own connection and no
 * request waits behind another. A connection that saw an error or a timeout is closed,
 * never reused: its reply stream is no longer in step. rackdiskd closes a connection that
 * stays idle (appliance/fetchsrv.h, FETCHSRV_IDLE_MS): a pooled connection found closed
 * is not an error, the request is retried once on a fresh connection.
 *
 * Thread safety: every call may be made from many threads at once.
 * Errors: 0 or a negative errno. The server's "ERR <errno>" comes back as -errno only for
 * ETIMEDOUT, EAGAIN, ESHUTDOWN, ENOSPC, EDQUOT and EIO; any other daemon-side errno
 * comes back as -EIO (the chunk could not be had), so that it never reaches the
 * initiator with a meaning of this host's (EROFS: write protected, EINVAL: bad CDB).
 */
#ifndef RACKDISK_TARGET_FETCH_CLIENT_H
#define RACKDISK_TARGET_FETCH_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "common/hash.h"

struct fetch_client;

struct fetch_client_stats {
	uint64_t fetches, fetch_errors, fetch_timeouts;
	uint64_t prefetches, touches, dropped;  /* dropped: best-effort requests not sent */
	uint64_t hits;                          /* HIT requests (sent or dropped) */
	uint64_t connects;
};

/* socket_path is copied. */
int fetch_client_new(const char *socket_path, struct fetch_client **out);
void fetch_client_free(struct fetch_client *fc);

/*
 * FETCH: asks rackdiskd to make chunk *h (len bytes) present in the chunk store and
 * waits for the answer until deadline_ns (CLOCK_MONOTONIC). While the socket cannot be
 * reached, goes away mid-request or answers that it is stopping (rackdiskd restarting), it
 * keeps trying until the deadline. A deadline further off than FETCH_PROTO_TIMEOUT_MAX_MS
 * (a LUN's io_timeout_ms may be up to an hour) is asked for in parts: after the server's
 * ETIMEDOUT for a part, FETCH is sent again for what is left.
 * Returns 0 (the chunk is in the store), -ETIMEDOUT (deadline passed), -EIO (every
 * source failed, or another failure in rackdiskd), one of the server's errnos listed at
 * the top, or a negative errno from the socket.
 */
int fetch_client_fetch(struct fetch_client *fc, const struct chunk_hash *h, uint32_t len,
		       uint64_t deadline_ns);

/* CHECK: the chunk's file was found torn or corrupt; rackdiskd re-hashes it and drops
 * it if so. One attempt (no waiting for an absent server): the FETCH that follows is
 * the patient one. */
int fetch_client_check(struct fetch_client *fc, const struct chunk_hash *h, uint32_t len,
		       uint64_t deadline_ns);

/* FETCH with the chunk's place: index idx of image *image (the LUN's base image). The
 * place lets rackdiskd see the access pattern and read ahead (fetch_proto.h). */
int fetch_client_fetch_at(struct fetch_client *fc, const struct chunk_hash *h, uint32_t len,
			  const struct chunk_hash *image, uint64_t idx, uint64_t deadline_ns);

/* PREFETCH: starts a background fill; waits only for the acknowledgement. Best effort:
 * fails at once when the socket cannot be reached. */
int fetch_client_prefetch(struct fetch_client *fc, const struct chunk_hash *h, uint32_t len,
			  uint64_t deadline_ns);

/* TOUCH: reports up to FETCH_PROTO_TOUCH_MAX chunk hits. Best effort and never waits
 * for the reply: TOUCH lines go out on a connection of their own and their "OK" replies
 * are read later, without blocking. A batch is dropped (-EBUSY/-EAGAIN) while another
 * thread is sending one or the server lags; after a connection failure further
 * best-effort requests are dropped for a second, so a missing daemon costs the data
 * path nothing. */
int fetch_client_touch(struct fetch_client *fc, const struct chunk_hash *hs, size_t n,
		       uint64_t deadline_ns);

/* HIT: reports that chunk idx of image *image (hash *h) was read from the store, for
 * rackdiskd's readahead (fetch_proto.h). One-way like TOUCH, on the same connection and
 * with the same dropping rules: it never waits for rackdiskd. */
int fetch_client_hit(struct fetch_client *fc, const struct chunk_hash *image, uint64_t idx,
		     const struct chunk_hash *h, uint64_t deadline_ns);

void fetch_client_get_stats(struct fetch_client *fc, struct fetch_client_stats *st);

#endif
