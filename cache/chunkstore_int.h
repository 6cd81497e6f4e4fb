/*
 * chunkstore_int.h - shared between chunkstore.c and chunkstore_scan.c; not for other
 * folders.
 */
#ifndef RACKDISK_CACHE_CHUNKSTORE_INT_H
#define RACKDISK_CACHE_CHUNKSTORE_INT_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/hash.h"

/* The largest chunk an image may have (DESIGN.md section 2): anything bigger is junk. */
#define CHUNKSTORE_MAX_CHUNK (16u << 20)

typedef void (*cs_report_fn)(void *arg, const char *path, const char *problem);

struct cs_scan_rec {
	struct chunk_hash h;
	uint32_t len;
};

struct cs_scan {
	/* in */
	const char *dir;     /* the store's root (for the paths in reports) */
	int chunks_fd;	     /* <dir>/chunks, open */
	bool verify;	     /* re-hash every file */
	bool repair;	     /* unlink what is wrong */
	cs_report_fn report; /* may be NULL */
	void *report_arg;
	/* out */
	struct cs_scan_rec *recs; /* malloc'd, nrecs of them */
	size_t nrecs;
	uint64_t problems;
	uint64_t removed;
};

/*
 * Scans the 256 <hh> directories below chunks_fd with getdents64 (in parallel), keeping
 * well-named regular files of sane size (re-hashed when verify) and reporting the rest.
 * Missing <hh> directories are fine. 0 or a negative errno.
 */
int cs_scan_chunks(struct cs_scan *s);

/* Removes (reports) every file in <dir>/tmp. Returns the number found, or -errno. */
int cs_clean_tmp(const char *dir, bool repair, cs_report_fn report, void *arg);

/* Re-hashes an open chunk file of len bytes: 1 = matches h, 0 = does not, < 0 = error. */
int cs_verify_fd(int fd, uint32_t len, const struct chunk_hash *h);

/* ---- the descriptor cache (chunkstore_fdcache.c) ---- */

#define FDCACHE_MAX	1024
#define FDCACHE_BUCKETS 2048
/* A reader looks for idle descriptors of files its owner has evicted (unlinked) at most this
 * often, at its next get: each one keeps the evicted file's blocks allocated. */
#define FDCACHE_SWEEP_NS 1000000000ull

/* An open descriptor for a chunk file, shared by every ref on that chunk. */
struct fd_slot {
	struct chunk_hash h;
	int fd;	 /* buffered */
	int dfd; /* O_DIRECT, opened on first read; -1 not yet, -2 refused */
	uint32_t len;
	uint32_t refs;
	bool stale; /* no longer in the table: closed on the last release */
	struct fd_slot *chain, *lru_prev, *lru_next;
};

struct fdcache {
	pthread_mutex_t lock;
	int chunks_fd; /* <dir>/chunks, set by the store's open */
	struct fd_slot *tab[FDCACHE_BUCKETS];
	struct fd_slot *lru_head, *lru_tail; /* idle slots, most recent at head */
	unsigned count;			     /* slots in tab */
	uint64_t busy;			     /* slots with refs > 0 */
	bool sweep_unlinked;		     /* a reader: close idle slots of evicted files */
	uint64_t next_sweep_ns;
	uint64_t swept;			     /* descriptors closed by sweeps */
};

void fdcache_init(struct fdcache *c);
void fdcache_destroy(struct fdcache *c);
/* A referenced slot for chunk h, opening its file if needed. -ENOENT when absent. */
int fdcache_get(struct fdcache *c, const struct chunk_hash *h, struct fd_slot **out);
/* A reader: closes the idle descriptors of evicted files, if a sweep is due. */
void fdcache_sweep(struct fdcache *c);
void fdcache_put(struct fdcache *c, struct fd_slot *s);
/* Forgets the descriptor of a chunk about to be removed (closed now or on its last put). */
void fdcache_drop(struct fdcache *c, const struct chunk_hash *h);
/* The slot's O_DIRECT descriptor, opened on first use; -1 if the file refuses it. */
int fdcache_direct_fd(struct fd_slot *s);
uint64_t fdcache_busy(struct fdcache *c);

#endif
