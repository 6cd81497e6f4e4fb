/*
 * fetchsrv.h - the fetch socket: rackdiskd's side of target/fetch_proto.h. The tgt module
 * (inside tgtd) asks here for chunks it misses; each request is served by the fetcher
 * (FETCH, PREFETCH, HIT) or the chunk store (TOUCH).
 *
 * One thread per connection, at most FETCHSRV_MAX_CONNS at once; more are refused by
 * closing them (logged at most once per FETCHSRV_REFUSE_LOG_MS, counted in `refused`).
 * Each LUN's client keeps a pool of connections (one per tgtd worker thread that used
 * it), so after a boot storm of many LUNs most connections sit idle: a connection that
 * waits longer than the idle timeout (FETCHSRV_IDLE_MS) for its next request is closed,
 * which frees its slot and thread. The client reopens one when it next needs it
 * (fetch_client.c retries a pooled connection found closed on a fresh one).
 */
#ifndef RACKDISK_APPLIANCE_FETCHSRV_H
#define RACKDISK_APPLIANCE_FETCHSRV_H

#include <stddef.h>
#include <stdint.h>

struct chunkstore;
struct fetcher;
struct fetchsrv;

#define FETCHSRV_MAX_CONNS 1024
/* A connection idle this long (waiting for its next request line) is closed. */
#define FETCHSRV_IDLE_MS 10000
#define FETCHSRV_REFUSE_LOG_MS 10000
/* Images whose manifests are kept for readahead hints (the least recently hinted one
 * makes room for a new one); an appliance serves far fewer. */
#define FETCHSRV_IMAGES_MAX 256
/* Longest wait a FETCH may ask for. */
#define FETCHSRV_MAX_TIMEOUT_MS 600000

struct fetchsrv_stats {
	uint64_t connections, requests, fetch_ok, fetch_err, prefetches, touches, bad_requests;
	/* FETCH and HIT places passed to the readahead, and places ignored (unknown image,
	 * index out of range, manifest entry not the requested hash). */
	uint64_t hints, hints_ignored;
	/* CHECK requests (the module found a chunk file bad; drops are the store's
	 * dropped_corrupt). */
	uint64_t checks;
	/* Connections refused for lack of a slot; idle connections closed. */
	uint64_t refused, idle_closed;
};

/* Listens on path (removing a stale socket file there). */
int fetchsrv_start(const char *path, struct fetcher *f, struct chunkstore *cs,
		   struct fetchsrv **out);
/*
 * For a stop that takes tgtd down with rackdiskd: from now on every FETCH the stop ends
 * is answered EAGAIN instead of ESHUTDOWN, those waiting in the fetcher (fetcher_stop()
 * ends them) and every new one (answered at once). The module retries ESHUTDOWN until the
 * command's deadline (io_timeout_ms), so that a restarted rackdiskd serves it: right while
 * tgtd stays, but a LUN with a command running cannot be deleted, and tgtd would be
 * killed with its LUNs open. EAGAIN ends the command at once with BUSY, which the
 * initiator retries against the next tgtd. Call it before fetcher_stop().
 */
void fetchsrv_end_fetches(struct fetchsrv *s);
/* Stops accepting, ends every connection, waits for their threads (bounded). */
void fetchsrv_stop(struct fetchsrv *s);
/* Sets the idle timeout (FETCHSRV_IDLE_MS by default); tests shorten it. A connection
 * already waiting picks the new value up at its next wait. */
void fetchsrv_set_idle_ms(struct fetchsrv *s, unsigned ms);
void fetchsrv_get_stats(struct fetchsrv *s, struct fetchsrv_stats *st);

/*
 * Handles one request line of len bytes (without '\n'; a NUL among them makes it
 * malformed); writes the reply line (with '\n') into reply. Returns 0, or -EPROTO for a
 * malformed request (reply holds an ERR line and the connection is then closed). Exposed
 * for tests; f and cs may be NULL there only for requests that do not reach them.
 */
int fetchsrv_handle_line(struct fetchsrv *s, const char *line, size_t len, char *reply,
			 size_t replylen);

#endif
