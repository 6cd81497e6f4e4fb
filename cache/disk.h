/*
 * disk.h - a VM disk: an immutable base image (manifest + chunk store) under a private
 * copy-on-write overlay (DESIGN.md section 4).
 *
 * A disk lives in its own directory, holding the overlay data file and the allocation
 * map (4 KiB grain). Reads merge overlay and image; writes go to the overlay only.
 * Durability follows SCSI: a write with DISK_FUA, or any write followed by disk_flush(),
 * survives a crash of the process; unsynced writes may be lost but never corrupt other
 * data.
 *
 * Thread safety: every call may be made from many threads at once on one disk.
 * Errors: 0 or a negative errno. -ETIMEDOUT: a missing chunk could not be had before the
 * deadline; -EIO: the chunk's sources failed; -ERANGE: beyond the disk's end.
 */
#ifndef RACKDISK_CACHE_DISK_H
#define RACKDISK_CACHE_DISK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache/chunkstore.h"
#include "images/manifest.h"

#define DISK_GRAIN 4096u

struct disk;

/*
 * Miss callback: the owner makes chunk *h (image chunk index idx, len bytes) present in
 * the chunk store, blocking until it is or deadline_ns (CLOCK_MONOTONIC) passes.
 * Returns 0 when the chunk is now in the store, or a negative errno.
 */
typedef int (*disk_miss_fn)(void *arg, const struct chunk_hash *h, uint64_t idx, uint32_t len,
			    uint64_t deadline_ns);

struct disk_opts {
	const char *dir;              /* the disk's overlay directory */
	const struct manifest *image; /* borrowed: must outlive the disk */
	struct chunkstore *store;     /* borrowed */
	disk_miss_fn miss;            /* may be NULL: a miss is then -EIO */
	void *miss_arg;
	uint64_t io_timeout_ns;       /* a command's misses wait at most this, from its first
				       * miss, however many chunks it spans; 0 = 30 s */
	/* Optional: called for every image chunk a read used (hit or filled), with its
	 * index in the image, so that a reader-mode owner can report accesses to the
	 * store's owner and where a reader is (one chunk may sit at many indexes). */
	void (*on_chunk_access)(void *arg, const struct chunk_hash *h, uint64_t idx);
	/* Optional: a reader store found chunk *h's file torn or corrupt (chunkstore.c
	 * invariant 1a): tell its owner, who re-checks and drops it, before the miss
	 * callback asks for a fresh copy. Called with miss_arg. */
	void (*on_bad_chunk)(void *arg, const struct chunk_hash *h, uint32_t len,
			     uint64_t deadline_ns);
	/* Chunk files the disk keeps open for reads (a power of two is used, rounded up);
	 * 0 = 256. Descriptors of chunks evicted meanwhile keep their space until their
	 * slot is reused, disk_sweep_chunk_fds() runs, or the disk is closed. */
	unsigned chunk_fds;
};

/* Creates a new, empty overlay in dir (which must not hold one) for a disk of `size`
 * bytes (>= the image size, a multiple of 512) over image `image_id`. */
int disk_create(const char *dir, const struct chunk_hash *image_id, uint64_t size);

/* Opens a disk; checks that the overlay belongs to opts->image. */
int disk_open(const struct disk_opts *opts, struct disk **out);
void disk_close(struct disk *d);

uint64_t disk_size(const struct disk *d);

int disk_read(struct disk *d, void *buf, size_t len, uint64_t off);
/* disk_read() as one piece of a larger command: *deadline is that command's (0 until its
 * first miss sets it), so pass the same variable for every piece. */
int disk_read_until(struct disk *d, void *buf, size_t len, uint64_t off, uint64_t *deadline);

#define DISK_FUA 0x1u
int disk_write(struct disk *d, const void *buf, size_t len, uint64_t off, unsigned flags);

/* Makes every write completed before the call durable. */
int disk_flush(struct disk *d);

/* Releases overlay space for the range; it then reads as zeros (UNMAP, WRITE SAME with
 * UNMAP, write-zeroes). Sub-grain edges are written as zeros. */
int disk_unmap(struct disk *d, uint64_t off, uint64_t len, unsigned flags);

/*
 * COMPARE AND WRITE: atomically against every other write to the range, compares
 * [off, off+len) with cmp and, when equal, writes data there. On a mismatch returns
 * -EILSEQ and sets *miscompare_off to the first differing byte's offset within the range.
 */
int disk_compare_and_write(struct disk *d, const void *cmp, const void *data, size_t len,
			   uint64_t off, unsigned flags, uint64_t *miscompare_off);

/* disk_write(), disk_unmap() and disk_compare_and_write() as one step of a larger command
 * (WRITE SAME's pieces, UNMAP's descriptors, ORWRITE's read and retries), with that
 * command's deadline as for disk_read_until(): pass the same variable, 0 at first, to
 * every step, so that the whole command ends within one io_timeout of its first miss. */
int disk_write_until(struct disk *d, const void *buf, size_t len, uint64_t off,
		     unsigned flags, uint64_t *deadline);
int disk_unmap_until(struct disk *d, uint64_t off, uint64_t len, unsigned flags,
		     uint64_t *deadline);
int disk_compare_and_write_until(struct disk *d, const void *cmp, const void *data,
				 size_t len, uint64_t off, unsigned flags,
				 uint64_t *miscompare_off, uint64_t *deadline);

/* Grows the disk (never shrinks); the new space reads as zeros. Durable on return. */
int disk_grow(struct disk *d, uint64_t new_size);

/*
 * Calls fn for every image chunk under [off, off+len) that a read would need and that
 * the chunk store lacks (PRE-FETCH: the owner starts background fills). Does not block
 * on fetches.
 */
int disk_missing_chunks(struct disk *d, uint64_t off, uint64_t len,
			void (*fn)(void *arg, const struct chunk_hash *h, uint64_t idx,
				   uint32_t len),
			void *arg);

/*
 * Allocation status for GET LBA STATUS: from off, the length of the run that is either
 * all "mapped" (may read as non-zero: overlay data or a non-zero image chunk) or all
 * deallocated (reads as zeros: unmapped, zero chunks, beyond the image).
 */
int disk_lba_status(struct disk *d, uint64_t off, uint64_t *run_len, bool *mapped);

struct disk_stats {
	uint64_t reads, writes, flushes, unmaps;
	uint64_t bytes_read, bytes_written;
	uint64_t overlay_bytes;   /* overlay space in use */
	uint64_t misses;          /* miss callbacks made */
	uint64_t bad_chunks;      /* chunk files a reader store found torn or corrupt */
	uint64_t map_pages_written; /* overlay map page copies written */
	uint64_t map_skipped;     /* flushes that synced the data file alone (overlay.c inv. 9) */
	uint64_t recovered;       /* grains recovered from the data file at an unclean open */
};
void disk_get_stats(struct disk *d, struct disk_stats *st);

/* Closes the descriptors the disk keeps of chunk files removed since (evicted), whose
 * space they keep allocated; returns how many. Never blocks: descriptors in use are left
 * for the next call. Safe beside reads; the tgt module calls it every few seconds. */
unsigned disk_sweep_chunk_fds(struct disk *d);

/* Validates a disk directory's overlay map without opening it (rackdisk fsck). Returns
 * the number of problems (>= 0) or a negative errno. */
int disk_fsck(const char *dir, bool repair,
	      void (*report)(void *arg, const char *path, const char *problem), void *arg);

#endif
