/*
 * overlay.h - a disk's copy-on-write overlay: the data file and its allocation map
 * (format in overlay_format.h, invariants at the top of overlay.c). Internal to cache/:
 * disk.c is its only user outside the tests and the fuzzer.
 *
 * The overlay knows grains and their states, not images or chunks. Grain g's data, when
 * its state is DATA, is at byte g * OVERLAY_GRAIN of overlay_data_fd().
 *
 * Concurrency: overlay_state_of() and overlay_run() may be called at any time from any
 * thread without a lock. overlay_set() may run concurrently with itself only for
 * different grains (disk.c's range locks see to it) and never concurrently with
 * overlay_grow() (which the caller runs with every range lock held). overlay_flush() may
 * be called from any thread at any time.
 */
#ifndef RACKDISK_CACHE_OVERLAY_H
#define RACKDISK_CACHE_OVERLAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/overlay_format.h"
#include "common/hash.h"

struct overlay;

#define OVERLAY_MAP_FILE "overlay.map"
#define OVERLAY_DATA_FILE "overlay.data"

/* Problem reporter for load and fsck (path may be a file or "page N"). */
typedef void (*overlay_report_fn)(void *arg, const char *path, const char *problem);

/* Creates overlay.data and overlay.map in dir (which must not hold a map). */
int overlay_create(const char *dir, const struct chunk_hash *image_id, uint64_t size);

/*
 * Opens dir's overlay. A page with no valid copy fails the open with -EUCLEAN (run
 * disk_fsck); a torn newer copy beside a valid older one is the normal trace of a crash
 * and is not an error.
 */
int overlay_open(const char *dir, struct overlay **out);
/* The disk size in dir's overlay header (newest valid copy), without opening the overlay
 * or taking its lock: -EUCLEAN when neither header copy is valid. */
int overlay_read_size(const char *dir, uint64_t *size);
/* Writes the map pages that flushes left out and marks the overlay clean (a failure is
 * logged: the next open recovers as after a crash), then frees it. */
void overlay_close(struct overlay *o);

/*
 * Parses a whole overlay.map image held in memory (the fuzzer's entry point, and what
 * fsck does through the same code). The result has no files: overlay_flush() and
 * overlay_grow() on it fail with -EBADF. report may be NULL. Returns 0, -EUCLEAN when a
 * page is corrupt (after reporting every problem), -EINVAL for a bad header.
 */
int overlay_parse(const void *buf, size_t len, overlay_report_fn report, void *arg,
		  struct overlay **out);

uint64_t overlay_size(const struct overlay *o);
uint64_t overlay_ngrains(const struct overlay *o);
const struct chunk_hash *overlay_image_id(const struct overlay *o);
int overlay_data_fd(const struct overlay *o);
uint64_t overlay_data_grains(const struct overlay *o); /* grains in state DATA */

enum overlay_state overlay_state_of(const struct overlay *o, uint64_t g);

/* Length (>= 1, <= n) of the run of grains from g that share g's state, in *st. */
uint64_t overlay_run(const struct overlay *o, uint64_t g, uint64_t n, enum overlay_state *st);

/*
 * Sets grains [g, g+n) to st in memory; the change is persisted by the next
 * overlay_flush(). For DATA, the caller has written the grains' data to the data file
 * before the call (invariant 2 of overlay.c). -ENOMEM when a map page cannot be
 * allocated.
 */
int overlay_set(struct overlay *o, uint64_t g, uint64_t n, enum overlay_state st);

/* Releases the data file's space for grains [g, g+n) (punches a hole), which the caller
 * has set ZERO. When the durable map may lack some of those grains' DATA (invariant 9 of
 * overlay.c) it flushes first. */
int overlay_punch(struct overlay *o, uint64_t g, uint64_t n);

/* Makes every overlay_set() and data write completed before the call durable. A flush
 * whose only map changes are grains going IMAGE -> DATA syncs the data file alone when the
 * overlay may (invariant 9 of overlay.c); close then writes the map. */
int overlay_flush(struct overlay *o);

/* Grows to new_size bytes (durable on return). The caller excludes overlay_set(). */
int overlay_grow(struct overlay *o, uint64_t new_size);

/* Counters for tests and stats. */
struct overlay_stats {
	uint64_t flushes;        /* overlay_flush() calls that synced */
	uint64_t flushes_joined; /* calls satisfied by a flush that started after them */
	uint64_t pages_written;
	uint64_t punch_unsupported; /* punches the filesystem refused (space not released) */
	uint64_t map_skipped;       /* flushes that left IMAGE -> DATA grains to the data file */
	uint64_t recovered;         /* grains taken from the data file at an unclean open */
	uint64_t punch_flushes;     /* punches that first flushed the map (invariant 9) */
	bool lazy_map;              /* the overlay may skip the map (HOLES, invariant 9) */
};
void overlay_get_stats(const struct overlay *o, struct overlay_stats *st);

/* Checks dir's overlay (see disk_fsck). */
int overlay_fsck(const char *dir, bool repair, overlay_report_fn report, void *arg);

#endif
