/*
 * chunkstore_int.h - shared between chunkstore.c and chunkstore_scan.c; not for other
 * folders.
 */
#ifndef RACKDISK_CACHE_CHUNKSTORE_INT_H
#define RACKDISK_CACHE_CHUNKSTORE_INT_H

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
	const char *dir;      /* the store's root (for the paths in reports) */
	int chunks_fd;        /* <dir>/chunks, open */
	bool verify;          /* re-hash every file */
	bool repair;          /* unlink what is wrong */
	cs_report_fn report;  /* may be NULL */
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

#endif
