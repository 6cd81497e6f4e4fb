/*
 * trace.h - a LUN's read trace: one line per guest READ, for replaying a boot (issue 6).
 *
 * lun.json's "trace" key names the file; bs_rackdisk.c calls trace_begin() when tgtd hands
 * it a READ (on tgtd's event loop, so the sequence numbers follow arrival order) and
 * trace_end() when the read has been served (on a worker thread). The file format, which
 * the replayer (tests/rack/) parses, is fixed:
 *
 *   # rackdisk-trace 1
 *   # image <image-id, 64 hex> size <LUN size in bytes>
 *   <seq> <start_us> <end_us> <offset_bytes> <length_bytes>
 *   ...
 *
 * seq counts reads from 0 in arrival order; start_us/end_us are microseconds since the
 * arrival of the LUN's first read (start: tgtd handed the command to the module; end: the
 * data was ready). Reads that fail (BUSY, MEDIUM ERROR) are not recorded: the initiator
 * retries them, and the retry is recorded.
 *
 * While the LUN is open each line is appended as its read completes (completion order,
 * so a trace survives a killed tgtd and can be sorted by whoever reads it); trace_close()
 * rewrites the file sorted by seq (= by start), atomically. Lines a full in-flight table
 * could not time are counted in a final "# dropped N" line.
 *
 * Thread safety: every function but trace_open/trace_close may be called from any thread.
 */
#ifndef RACKDISK_TARGET_TRACE_H
#define RACKDISK_TARGET_TRACE_H

#include <stdint.h>

#include "common/hash.h"

#define TRACE_FORMAT 1
/* Reads in flight at once that can be timed; tgt's iSCSI queue depth is 128 per session. */
#define TRACE_INFLIGHT 4096

struct trace;

/* Creates (truncates) path and writes the header. 0 or a negative errno. */
int trace_open(const char *path, const struct chunk_hash *image_id, uint64_t size,
	       struct trace **out);

/* A READ arrived: remembers key (the command; unique while in flight) and its time. */
void trace_begin(struct trace *t, const void *key, uint64_t now_ns);

/* The READ begun with key ended; ok = it succeeded (only those are recorded). */
void trace_end(struct trace *t, const void *key, uint64_t now_ns, uint64_t off, uint64_t len,
	       int ok);

/* The clock of trace_begin/trace_end (CLOCK_MONOTONIC), for callers that cannot include
 * common/util.h next to tgt's own util.h. */
uint64_t trace_now_ns(void);

/* Reads recorded so far. */
uint64_t trace_count(struct trace *t);

/* Rewrites the file sorted and frees t (NULL is fine). 0 or the negative errno of the
 * rewrite; t is freed either way. */
int trace_close(struct trace *t);

#endif
