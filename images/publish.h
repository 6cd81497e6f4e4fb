/*
 * publish.h - publishing an image into a local repository directory (DESIGN.md section 2).
 *
 * The input is read once, by one reader thread, in chunk-sized pieces; a pool of worker
 * threads (one per core by default) detects zero chunks, hashes, and compresses and writes
 * the chunks the repository lacks. Then the manifest, then the tag, then tags/index.
 */
#ifndef RACKDISK_IMAGES_PUBLISH_H
#define RACKDISK_IMAGES_PUBLISH_H

#include <signal.h>
#include <stdint.h>

#include "common/hash.h"

#define PUBLISH_ZSTD_LEVEL 1 /* level 1: the fastest level that still compresses well */

struct publish_opts {
	const char *src;      /* raw file, block device or qcow2 */
	const char *repo_dir; /* created if missing */
	const char *name;     /* tag to point at the image; must pass publish_check_name() */
	uint32_t chunk_size;  /* 0: CHUNK_SIZE_DEFAULT */
	int level;	      /* zstd level; 0: PUBLISH_ZSTD_LEVEL */
	int workers;	      /* 0: one per online CPU */
	/* Non-NULL: once *stop is non-zero (a signal handler sets it), the publish stops
	 * before its commit, removes its temporary files and returns -EINTR. */
	volatile sig_atomic_t *stop;
};

struct publish_result {
	struct chunk_hash id;
	uint64_t size;
	uint32_t chunk_size;
	uint64_t chunks;	/* all chunks, zero ones included */
	uint64_t zero;		/* all-zero chunks (never stored) */
	uint64_t distinct;	/* distinct non-zero chunks */
	uint64_t new_objects;	/* distinct chunks written by this publish */
	uint64_t present;	/* distinct chunks the repository already held */
	uint64_t bytes_written; /* objects, manifest, tag and index */
	uint64_t elapsed_ns;
	int qcow2;
	int tag_changed;
	int index_stale; /* published, but tags/index could not be rewritten (error returned) */
};

/*
 * Publishes o->src as o->name. Returns 0, or a negative errno with a one-line reason in
 * err ("<what>: <why>"). A failed publish removes its temporary files and never touches a
 * tag; objects and a manifest it already installed stay (other images may share them).
 */
int publish_image(const struct publish_opts *o, struct publish_result *res, char *err,
		  size_t errlen);

/*
 * 0 when name can be published as a tag: repo_tag_name_valid() and not spelled like an
 * image id (repo_name_is_id). Else -EINVAL and a one-line reason in err.
 */
int publish_check_name(const char *name, char *err, size_t errlen);

/* Copies s into buf with control characters spelled \xNN, for one-line messages. */
const char *publish_printable(const char *s, char *buf, size_t len);

#endif
