/*
 * chunkstore.h - the appliance's local, content-addressed chunk store (DESIGN.md sec. 3).
 *
 * Chunks live as uncompressed files <dir>/chunks/<hh>/<hash>, published atomically.
 * Files are immutable, so a reader holding an open descriptor is never hurt by eviction.
 *
 * Two modes:
 *  - owner (rackdiskd, tests): keeps the in-memory index, enforces the capacity with
 *    scan-resistant eviction, pins chunks that are being read or filled, and calls the
 *    hooks so the cluster layer can announce/withdraw chunks in the directory;
 *  - reader (the tgt module inside tgtd): no index and no eviction; a lookup opens the
 *    file if it exists. Only the owner ever creates or removes chunk files.
 *
 * Thread safety: every call may be made from any thread at once.
 * Errors: 0 or a negative errno; -ENOENT is a miss.
 */
#ifndef RACKDISK_CACHE_CHUNKSTORE_H
#define RACKDISK_CACHE_CHUNKSTORE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/hash.h"

struct chunkstore;
struct chunk_ref; /* a pinned chunk; valid until chunkstore_put() */

struct chunkstore_hooks {
	void *arg;
	/* After a chunk is stored and indexed: it may now be served to peers. It is not yet
	 * on stable storage (a power loss may lose it: peers then get a 404 and fall back,
	 * never bad data, as they re-hash what they receive); see chunkstore.c inv. 2. */
	void (*announce)(void *arg, const struct chunk_hash *h);
	/* Before a chunk's file is removed: peers must stop asking for it. */
	void (*withdraw)(void *arg, const struct chunk_hash *h);
};

struct chunkstore_opts {
	const char *dir;     /* the store's root; chunks/ is created below it */
	uint64_t capacity;   /* bytes of chunk data; 0 = unlimited */
	bool reader;	     /* reader mode (see above) */
	bool direct_io;	     /* read and insert with O_DIRECT where the filesystem allows it */
	bool verify_on_open; /* owner: re-hash every chunk while rebuilding the index */
	struct chunkstore_hooks hooks;
};

struct chunkstore_stats {
	uint64_t hits, misses; /* chunkstore_get() outcomes */
	uint64_t inserts, evictions;
	uint64_t insert_failures; /* chunkstore_insert() errors: a chunk fetched and verified
				   * that the store could not keep (no room, I/O error) */
	uint64_t bytes_inserted, bytes_evicted, bytes_read;
	uint64_t nchunks, bytes_used, capacity;
	uint64_t pinned;	  /* chunks pinned right now */
	uint64_t dropped_corrupt; /* files found torn or corrupt and removed */
	uint64_t reader_verified; /* reader: files re-hashed at first open (invariant 1a) */
	uint64_t reader_corrupt;  /* reader: ... and found torn or corrupt (not served) */
};

/*
 * Owner: creates <dir>/chunks and <dir>/tmp if needed, takes <dir>/lock (-EBUSY while
 * another owner has the store open), removes temp files left by a crash and files that
 * cannot be chunks, and rebuilds the index (a million chunks take a few seconds; see
 * tests/bench/bench_store_open.c). Chunks found at open are re-hashed on their first
 * chunkstore_get() unless verify_on_open already did it. When the store was not closed
 * cleanly last time (no <dir>/clean marker: crash, kill -9, power loss), open re-hashes
 * every chunk and drops the bad ones before it returns, as verify_on_open does, so
 * readers started after open never see a file torn by a power loss. The owner must open
 * the store before starting any reader of it.
 * Reader: <dir>/chunks must exist (-ENOENT otherwise); nothing is scanned or written.
 * direct_io: reads, and inserts of aligned data, bypass the page cache. It falls back to
 * buffered I/O (logged) where the filesystem refuses O_DIRECT; buffered is the default
 * because it is faster for cached chunks (cache/aio.c).
 */
int chunkstore_open(const struct chunkstore_opts *o, struct chunkstore **out);
/* Owner: syncfs()es the store's filesystem and writes <dir>/clean (the next open then
 * skips the full re-hash); on any error it leaves no marker. Then frees everything. */
void chunkstore_close(struct chunkstore *cs);

/*
 * Looks a chunk up and pins it. -ENOENT on a miss (also for a chunk found torn or corrupt,
 * which the owner then drops). A reader answers -EBADMSG for a file it found torn or
 * corrupt the first time it opened it (invariant 1a in chunkstore.c); its owner should be
 * told (chunkstore_recheck). Readers keep up to 1024 idle descriptors open (LRU), so a
 * hot chunk costs no open(); a reader holding a descriptor of a chunk the owner has since
 * evicted still reads the right bytes (chunks are immutable).
 */
int chunkstore_get(struct chunkstore *cs, const struct chunk_hash *h, struct chunk_ref **out);
void chunkstore_put(struct chunkstore *cs, struct chunk_ref *ref);
/* Reader: closes the idle descriptors it keeps of chunks the owner has evicted since
 * (their space stays allocated while they are open). Gets do this at most once a second;
 * a reader that may go without gets for long calls this on a timer. Owner: nothing. */
void chunkstore_sweep(struct chunkstore *cs);
int chunk_ref_fd(const struct chunk_ref *ref);
uint32_t chunk_ref_len(const struct chunk_ref *ref);

/* Reads len bytes at off within a pinned chunk (through the aio layer). -ERANGE beyond
 * the chunk's end. */
int chunkstore_read(struct chunkstore *cs, struct chunk_ref *ref, void *buf, size_t len,
		    uint32_t off);

/*
 * Stores a chunk. The caller has verified that data hashes to *h (every source does so
 * before it calls this). No fsync: the chunk is readable at once and reaches stable
 * storage with the kernel's writeback or at close (a power loss before that loses it,
 * and the next open verifies the whole store). Makes room by eviction if needed;
 * -ENOSPC when everything is pinned. Inserting a chunk already present is a successful
 * no-op. Owner mode only.
 */
int chunkstore_insert(struct chunkstore *cs, const struct chunk_hash *h, const void *data,
		      size_t len);
/* (Reader mode: -EROFS. len 0 or above 16 MiB: -EINVAL.) */

bool chunkstore_contains(struct chunkstore *cs, const struct chunk_hash *h);

/* Owner: re-hashes chunk *h's file now, whatever was verified before (a reader reported
 * it bad, invariant 1a), and drops it when it is torn or corrupt. Returns 1 when it was
 * dropped, 0 when it is good or absent, or a negative errno (-EROFS for a reader). */
int chunkstore_recheck(struct chunkstore *cs, const struct chunk_hash *h);

/* Records accesses seen by another process (the tgt module) for the eviction policy. */
void chunkstore_touch(struct chunkstore *cs, const struct chunk_hash *h);

/* Path of a chunk's file (whether or not it exists). */
void chunkstore_path(const struct chunkstore *cs, const struct chunk_hash *h, char *buf,
		     size_t len);

/* Calls fn for every indexed chunk (owner mode), e.g. for the bulk announce at start. */
int chunkstore_foreach(struct chunkstore *cs,
		       int (*fn)(void *arg, const struct chunk_hash *h, uint32_t len), void *arg);

void chunkstore_get_stats(struct chunkstore *cs, struct chunkstore_stats *st);

/*
 * Consistency check of a store directory without opening it (repair while an owner has it
 * open: -EBUSY; a read-only check then skips tmp/): re-hashes every chunk
 * file, removes torn/corrupt/misnamed/temp files when repair is true, and reports each
 * problem through report (may be NULL). Returns the number of problems found (>= 0) or
 * a negative errno.
 */
int chunkstore_fsck(const char *dir, bool repair,
		    void (*report)(void *arg, const char *path, const char *problem), void *arg);

#endif
