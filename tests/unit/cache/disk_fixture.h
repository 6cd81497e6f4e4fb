/*
 * disk_fixture.h - shared by the disk unit tests, the crash test and the disk benchmark:
 * a temporary directory holding a chunk store, a synthetic image (manifest + chunks) and
 * a disk over it. Header-only (static functions) so each program takes what it uses.
 */
#ifndef RACKDISK_TESTS_DISK_FIXTURE_H
#define RACKDISK_TESTS_DISK_FIXTURE_H

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/chunkstore.h"
#include "cache/disk.h"
#include "common/hash.h"
#include "common/util.h"
#include "images/manifest.h"

struct fixture {
	char root[128];
	char store_dir[PATH_MAX];
	char disk_dir[PATH_MAX];
	struct chunkstore *cs;
	struct manifest *m;
	uint8_t *image; /* the image's bytes, m->size of them */
};

/* Image byte at pos: a pattern that differs per position and per seed. */
static inline uint8_t fx_image_byte(uint64_t pos, unsigned seed)
{
	uint64_t x = (pos / 8) * 0x9e3779b97f4a7c15ull + seed * 0x632be59bd9b4e019ull;

	x ^= x >> 29;
	return (uint8_t)(x >> (8 * (pos % 8)));
}

static inline int fx_rm_rf(const char *path)
{
	char cmd[PATH_MAX + 32];
	int n = snprintf(cmd, sizeof(cmd), "rm -rf '%s'", path);

	if (n < 0 || (size_t)n >= sizeof(cmd) ||
	    (strstr(path, "/tmp/") != path && strstr(path, "/dev/shm/rd-") != path))
		return -EINVAL;
	return system(cmd) == 0 ? 0 : -EIO;
}

/* Opens (or reopens) the store of fx in owner mode. */
static inline int fx_open_store(struct fixture *fx)
{
	struct chunkstore_opts so = { .dir = fx->store_dir };
	int rc = mkdir_p(fx->store_dir, 0755);

	if (rc < 0)
		return rc;
	return chunkstore_open(&so, &fx->cs);
}

/*
 * Makes a temporary fixture with an image of `size` bytes cut at chunk_size. Chunk i is
 * all zeros when zero_every && i % zero_every == zero_every - 1. Chunks go into the store
 * when `insert` (else the store starts empty). The disk is created with disk_size bytes
 * (0: the image's size rounded up to 512).
 */
static inline int fx_setup(struct fixture *fx, uint64_t size, uint32_t chunk_size,
			   unsigned zero_every, bool insert, uint64_t disk_size, unsigned seed)
{
	char *json = NULL;
	size_t jlen;
	int rc;

	memset(fx, 0, sizeof(*fx));
	/* RD_FIXTURE_DIR: another filesystem (tests/bench/on_ext4_journal.sh) */
	snprintf(fx->root, sizeof(fx->root), "%s/rd-disk-XXXXXX",
		 getenv("RD_FIXTURE_DIR") ? getenv("RD_FIXTURE_DIR") : "/tmp");
	if (!mkdtemp(fx->root))
		return -errno;
	snprintf(fx->store_dir, sizeof(fx->store_dir), "%s/store", fx->root);
	snprintf(fx->disk_dir, sizeof(fx->disk_dir), "%s/disk", fx->root);
	rc = fx_open_store(fx);
	if (rc < 0)
		return rc;
	rc = manifest_new(size, chunk_size, &fx->m);
	if (rc < 0)
		return rc;
	fx->image = calloc(1, size ? size : 1);
	if (!fx->image)
		return -ENOMEM;
	for (uint64_t i = 0; i < fx->m->nchunks; i++) {
		uint64_t start = i * chunk_size;
		uint64_t len = MIN((uint64_t)chunk_size, size - start);

		if (zero_every && i % zero_every == zero_every - 1)
			continue;
		for (uint64_t p = start; p < start + len; p++)
			fx->image[p] = fx_image_byte(p, seed);
		hash_compute(fx->image + start, len, &fx->m->hashes[i]);
		fx->m->zero[i] = 0;
		if (insert) {
			rc = chunkstore_insert(fx->cs, &fx->m->hashes[i], fx->image + start, len);
			if (rc < 0)
				return rc;
		}
	}
	rc = manifest_serialize(fx->m, &json, &jlen);
	free(json);
	if (rc < 0)
		return rc;
	if (!disk_size)
		disk_size = DIV_ROUND_UP(size, 512) * 512;
	return disk_create(fx->disk_dir, &fx->m->id, disk_size);
}

/* Inserts chunk idx of the fixture's image into the store. */
static inline int fx_insert_chunk(struct fixture *fx, uint64_t idx)
{
	uint64_t start = idx * fx->m->chunk_size;

	return chunkstore_insert(fx->cs, &fx->m->hashes[idx], fx->image + start,
				 manifest_chunk_len(fx->m, idx));
}

static inline int fx_open_disk(struct fixture *fx, struct disk **d)
{
	struct disk_opts o = { .dir = fx->disk_dir, .image = fx->m, .store = fx->cs };

	return disk_open(&o, d);
}

static inline void fx_teardown(struct fixture *fx)
{
	if (fx->cs)
		chunkstore_close(fx->cs);
	manifest_free(fx->m);
	free(fx->image);
	if (fx->root[0])
		fx_rm_rf(fx->root);
	memset(fx, 0, sizeof(*fx));
}

#endif
