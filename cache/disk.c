/*
 * disk.c - a VM disk: the base image's chunks (through the chunk store) under the
 * copy-on-write overlay of overlay.c. Reads merge, writes go to the overlay.
 *
 * Invariants (tests/unit/cache/test_disk.c and tests/fault/ check them):
 *  1. A grain's state is set to DATA only after the pwrite of its whole 4 KiB has
 *     returned; readers never lock, so they see either the old state (and the old
 *     source) or DATA with the new bytes in place.
 *  2. Every change of a grain (write, read-modify-write, unmap, compare-and-write) runs
 *     with the range lock stripes of the grain held, so sub-grain writes to one grain are
 *     serialised and a COMPARE AND WRITE is atomic against every other change of its
 *     range. Stripes are always taken in ascending index order (no deadlock); grow takes
 *     them all.
 *  3. A write with DISK_FUA returns only after disk_flush() has made it durable; a
 *     flush makes data durable before the map that describes it (overlay.c inv. 2, 7).
 *  4. Image bytes are only ever read from a chunk file of the manifest's hash (chunks are
 *     immutable and verified on entry to the store); zero chunks and bytes past the image
 *     end are never read from anywhere, they are zeros.
 *  5. disk_lba_status() reports "deallocated" only for grains that read as zeros: ZERO
 *     grains, and IMAGE grains over zero chunks or past the image end.
 */
#include "cache/disk.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache/overlay.h"
#include "common/log.h"
#include "common/util.h"

#define LOCK_REGION_SHIFT 16 /* a range lock stripe guards 64 KiB regions */
#define LOCK_STRIPES 256u
#define DEFAULT_CHUNK_FDS 256u
#define DEFAULT_IO_TIMEOUT_NS (30ull * 1000 * 1000 * 1000)
#define MISS_RETRIES 4 /* a miss callback that says "present" while it is not */

/* A cached open descriptor of one image chunk, shared by the readers of the disk. */
struct chunk_slot {
	uint64_t tag;   /* atomic: chunk index + 1; 0 while empty or being replaced */
	uint32_t users; /* atomic: readers between their tag checks and their pread */
	int fd;
	pthread_mutex_t mtx; /* serialises replacement */
} __attribute__((aligned(64)));

struct disk {
	struct overlay *ov;
	const struct manifest *img;
	struct chunkstore *store;
	disk_miss_fn miss;
	void *miss_arg;
	void (*on_access)(void *arg, const struct chunk_hash *h, uint64_t idx);
	void (*on_bad)(void *arg, const struct chunk_hash *h, uint32_t len, uint64_t deadline_ns);
	uint64_t io_timeout_ns;
	struct chunk_slot *slots;
	unsigned slot_mask;
	pthread_mutex_t locks[LOCK_STRIPES];
	/* Statistics (atomics). */
	uint64_t n_reads, n_writes, n_flushes, n_unmaps, n_misses, n_bad_chunks;
	uint64_t b_read, b_written;
};

static const uint8_t zero_grain[DISK_GRAIN];

static inline void stat_add(uint64_t *c, uint64_t v)
{
	__atomic_add_fetch(c, v, __ATOMIC_RELAXED);
}

uint64_t disk_size(const struct disk *d)
{
	return overlay_size(d->ov);
}

static int range_ok(const struct disk *d, uint64_t off, uint64_t len)
{
	uint64_t size = disk_size(d);

	return off <= size && len <= size - off ? 0 : -ERANGE;
}

/* ---- range locks (invariant 2) ---- */

static void range_stripes(uint64_t off, uint64_t len, unsigned *s0, unsigned *s1, bool *all)
{
	uint64_t r0 = off >> LOCK_REGION_SHIFT;
	uint64_t r1 = (off + (len ? len : 1) - 1) >> LOCK_REGION_SHIFT;

	*all = r1 - r0 + 1 >= LOCK_STRIPES;
	*s0 = (unsigned)(r0 % LOCK_STRIPES);
	*s1 = (unsigned)(r1 % LOCK_STRIPES);
}

/* Applies op to every stripe lock covering the range, always in ascending stripe order so
 * that two ranges never lock in opposite orders. */
static void range_locks_apply(struct disk *d, uint64_t off, uint64_t len,
			      int (*op)(pthread_mutex_t *))
{
	unsigned s0, s1;
	bool all;

	range_stripes(off, len, &s0, &s1, &all);
	if (all) {
		s0 = 0;
		s1 = LOCK_STRIPES - 1;
	}
	if (s0 <= s1) {
		for (unsigned s = s0; s <= s1; s++)
			op(&d->locks[s]);
		return;
	}
	/* Wrapped: [0, s1] then [s0, N), still ascending. */
	for (unsigned s = 0; s <= s1; s++)
		op(&d->locks[s]);
	for (unsigned s = s0; s < LOCK_STRIPES; s++)
		op(&d->locks[s]);
}

static void lock_range(struct disk *d, uint64_t off, uint64_t len)
{
	range_locks_apply(d, off, len, pthread_mutex_lock);
}

static void unlock_range(struct disk *d, uint64_t off, uint64_t len)
{
	range_locks_apply(d, off, len, pthread_mutex_unlock);
}

/* ---- image chunks ---- */

static uint32_t chunk_len(const struct manifest *m, uint64_t idx)
{
	uint64_t start = idx << m->chunk_shift;

	return (uint32_t)MIN((uint64_t)m->chunk_size, m->size - start);
}

/* Opens our own descriptor of a pinned chunk: a dup when the store's is buffered, else a
 * buffered open of its path (reads here are small and hot; the page cache serves them). */
static int ref_to_fd(struct disk *d, const struct chunk_hash *h, struct chunk_ref *ref)
{
	char path[PATH_MAX];
	int sfd = chunk_ref_fd(ref), fl = sfd >= 0 ? fcntl(sfd, F_GETFL) : -1, fd;

	if (fl >= 0 && !(fl & O_DIRECT)) {
		fd = fcntl(sfd, F_DUPFD_CLOEXEC, 0);
		return fd < 0 ? -errno : fd;
	}
	chunkstore_path(d->store, h, path, sizeof(path));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	return fd < 0 ? -errno : fd;
}

/* Returns an open descriptor of chunk idx, calling the miss callback while it is absent
 * until the command's deadline: *deadline, set at the command's first miss to io_timeout
 * from then, so that a command spanning several missing chunks ends within one timeout. */
static int chunk_open(struct disk *d, uint64_t idx, uint64_t *deadline)
{
	const struct chunk_hash *h = &d->img->hashes[idx];
	uint32_t len = chunk_len(d->img, idx);
	struct chunk_ref *ref;
	int rc;

	for (int tries = 0;; tries++) {
		rc = chunkstore_get(d->store, h, &ref);
		if (rc == 0) {
			if (chunk_ref_len(ref) != len)
				rc = -EIO; /* the store verifies; a wrong length is a bug */
			else
				rc = ref_to_fd(d, h, ref);
			chunkstore_put(d->store, ref);
			return rc;
		}
		if (rc == -EBADMSG) {
			/* A reader found the file torn or corrupt (chunkstore.c invariant 1a):
			 * the owner re-checks and drops it, and the miss fetches a fresh copy. */
			stat_add(&d->n_bad_chunks, 1);
			if (d->on_bad)
				d->on_bad(d->miss_arg, h, len, *deadline ? *deadline :
					  now_ns() + d->io_timeout_ns);
		} else if (rc != -ENOENT) {
			return rc;
		}
		if (!d->miss)
			return -EIO;
		if (!*deadline)
			*deadline = now_ns() + d->io_timeout_ns;
		if (now_ns() >= *deadline)
			return -ETIMEDOUT;
		if (tries >= MISS_RETRIES) {
			log_warn("disk: chunk %llu still missing after its miss callback",
				 (unsigned long long)idx);
			return -EIO;
		}
		stat_add(&d->n_misses, 1);
		rc = d->miss(d->miss_arg, h, idx, len, *deadline);
		if (rc < 0)
			return rc;
	}
}

/* Puts a freshly opened descriptor of chunk idx into its slot, retiring the old one. */
static void slot_install(struct chunk_slot *s, uint64_t idx, int fd)
{
	pthread_mutex_lock(&s->mtx);
	if (__atomic_load_n(&s->tag, __ATOMIC_SEQ_CST) == idx + 1) {
		pthread_mutex_unlock(&s->mtx);
		close(fd); /* another reader got there first */
		return;
	}
	__atomic_store_n(&s->tag, 0, __ATOMIC_SEQ_CST);
	/* Readers that saw the old tag finish their pread before the fd is closed. */
	while (__atomic_load_n(&s->users, __ATOMIC_SEQ_CST))
		sched_yield();
	if (s->fd >= 0)
		close(s->fd);
	s->fd = fd;
	__atomic_store_n(&s->tag, idx + 1, __ATOMIC_SEQ_CST);
	pthread_mutex_unlock(&s->mtx);
}

/*
 * Closes the slots' descriptors of chunk files that have been removed (evicted by the
 * store's owner): an open descriptor keeps a removed file's space allocated, past the
 * store's capacity. Never waits: a slot being replaced or read from is left for the next
 * sweep. The handshake is slot_install's: the tag is cleared before users is read, so a
 * reader either is counted in users (the descriptor stays) or sees the cleared tag.
 */
unsigned disk_sweep_chunk_fds(struct disk *d)
{
	unsigned closed = 0;

	for (unsigned i = 0; i <= d->slot_mask; i++) {
		struct chunk_slot *s = &d->slots[i];
		struct stat st;
		uint64_t tag;

		if (!__atomic_load_n(&s->tag, __ATOMIC_SEQ_CST) || pthread_mutex_trylock(&s->mtx))
			continue;
		tag = __atomic_load_n(&s->tag, __ATOMIC_SEQ_CST);
		if (tag && s->fd >= 0 && fstat(s->fd, &st) == 0 && st.st_nlink == 0) {
			__atomic_store_n(&s->tag, 0, __ATOMIC_SEQ_CST);
			if (__atomic_load_n(&s->users, __ATOMIC_SEQ_CST) == 0) {
				close(s->fd);
				s->fd = -1;
				closed++;
			} else {
				__atomic_store_n(&s->tag, tag, __ATOMIC_SEQ_CST);
			}
		}
		pthread_mutex_unlock(&s->mtx);
	}
	return closed;
}

/* Reads len bytes at coff of image chunk idx straight into buf. */
static int chunk_pread(struct disk *d, uint64_t idx, void *buf, size_t len, uint32_t coff,
		       uint64_t *deadline)
{
	struct chunk_slot *s = &d->slots[idx & d->slot_mask];
	int rc, fd;

	for (int attempt = 0; attempt < 3; attempt++) {
		if (__atomic_load_n(&s->tag, __ATOMIC_SEQ_CST) == idx + 1) {
			__atomic_add_fetch(&s->users, 1, __ATOMIC_SEQ_CST);
			if (__atomic_load_n(&s->tag, __ATOMIC_SEQ_CST) == idx + 1) {
				rc = pread_full(s->fd, buf, len, coff);
				__atomic_sub_fetch(&s->users, 1, __ATOMIC_SEQ_CST);
				goto done;
			}
			__atomic_sub_fetch(&s->users, 1, __ATOMIC_SEQ_CST);
		}
		fd = chunk_open(d, idx, deadline);
		if (fd < 0)
			return fd;
		slot_install(s, idx, fd);
	}
	/* Other readers keep taking the slot: read through a private descriptor. */
	fd = chunk_open(d, idx, deadline);
	if (fd < 0)
		return fd;
	rc = pread_full(fd, buf, len, coff);
	close(fd);
done:
	if (rc == 0 && d->on_access)
		d->on_access(d->miss_arg, &d->img->hashes[idx], idx);
	return rc;
}

/* Reads [pos, pos+len) of the base image: chunks, zero chunks, zeros past its end. */
static int read_image(struct disk *d, uint8_t *buf, size_t len, uint64_t pos,
		      uint64_t *deadline)
{
	const struct manifest *m = d->img;

	while (len) {
		uint64_t idx = pos >> m->chunk_shift;
		uint32_t coff = (uint32_t)(pos & (m->chunk_size - 1));
		size_t n;
		int rc;

		if (pos >= m->size) {
			memset(buf, 0, len);
			return 0;
		}
		n = (size_t)MIN((uint64_t)len, (uint64_t)chunk_len(m, idx) - coff);
		if (manifest_chunk_is_zero(m, idx)) {
			memset(buf, 0, n);
		} else {
			rc = chunk_pread(d, idx, buf, n, coff, deadline);
			if (rc < 0)
				return rc;
		}
		buf += n;
		pos += n;
		len -= n;
	}
	return 0;
}

/* The merged read, without range check or statistics (also used under range locks).
 * *deadline is the command's (see chunk_open), 0 until its first miss. */
static int read_merged(struct disk *d, uint8_t *buf, size_t len, uint64_t off,
		       uint64_t *deadline)
{
	uint64_t end = off + len, pos = off;
	uint64_t gend = DIV_ROUND_UP(end, DISK_GRAIN);

	while (pos < end) {
		uint64_t g = pos / DISK_GRAIN;
		enum overlay_state st;
		uint64_t run = overlay_run(d->ov, g, gend - g, &st);
		uint64_t n = MIN(end, (g + run) * DISK_GRAIN) - pos;
		int rc = 0;

		switch (st) {
		case OVL_DATA:
			rc = pread_full(overlay_data_fd(d->ov), buf + (pos - off), n, pos);
			break;
		case OVL_ZERO:
			memset(buf + (pos - off), 0, n);
			break;
		default:
			rc = read_image(d, buf + (pos - off), n, pos, deadline);
			break;
		}
		if (rc < 0)
			return rc;
		pos += n;
	}
	return 0;
}

int disk_read_until(struct disk *d, void *buf, size_t len, uint64_t off, uint64_t *deadline)
{
	int rc = range_ok(d, off, len);

	if (rc < 0)
		return rc;
	stat_add(&d->n_reads, 1);
	stat_add(&d->b_read, len);
	return read_merged(d, buf, len, off, deadline);
}

int disk_read(struct disk *d, void *buf, size_t len, uint64_t off)
{
	uint64_t deadline = 0;

	return disk_read_until(d, buf, len, off, &deadline);
}

/* ---- writes (range locks held) ---- */

/*
 * A write to grains [g0, g1) failed after some of its bytes may have reached overlay.data:
 * the blocks it allocated under grains that are not DATA (still IMAGE or ZERO) are given
 * back. overlay.c invariant 9 lets only a write killed in flight leave such a block: an
 * open after an unclean stop takes every allocated IMAGE grain as DATA, so a block left by
 * a write that failed (the guest got an error and went on reading the image's bytes
 * there) would show its bytes after some later crash. DATA grains keep theirs.
 */
static void unwrite_grains(struct disk *d, uint64_t g0, uint64_t g1)
{
	uint64_t g = g0;

	while (g < g1) {
		enum overlay_state st;
		uint64_t run = overlay_run(d->ov, g, g1 - g, &st);
		int rc;

		if (st != OVL_DATA && (rc = overlay_punch(d->ov, g, run)) < 0)
			log_error("disk: a failed write left grains %llu-%llu allocated and they "
				  "cannot be freed (%s): after a crash they may read that write's "
				  "bytes", (unsigned long long)g,
				  (unsigned long long)(g + run - 1), strerror(-rc));
		g += run;
	}
}

/* Writes n bytes at pos inside grain g: in place when the grain is DATA, else as a
 * read-modify-write of the whole grain (invariant 1). */
static int write_partial(struct disk *d, uint64_t g, const uint8_t *src, size_t n, uint64_t pos,
			 uint64_t *deadline)
{
	uint8_t tmp[DISK_GRAIN] __attribute__((aligned(64)));
	enum overlay_state st = overlay_state_of(d->ov, g);
	int fd = overlay_data_fd(d->ov), rc;

	if (st == OVL_DATA)
		return pwrite_full(fd, src, n, pos);
	if (st == OVL_ZERO)
		memset(tmp, 0, sizeof(tmp));
	else if ((rc = read_merged(d, tmp, DISK_GRAIN, g * DISK_GRAIN, deadline)) < 0)
		return rc;
	memcpy(tmp + (pos - g * DISK_GRAIN), src, n);
	rc = pwrite_full(fd, tmp, DISK_GRAIN, g * DISK_GRAIN);
	if (rc == 0)
		rc = overlay_set(d->ov, g, 1, OVL_DATA);
	if (rc < 0)
		unwrite_grains(d, g, g + 1);
	return rc;
}

static int write_locked(struct disk *d, const uint8_t *buf, size_t len, uint64_t off,
			uint64_t *deadline)
{
	uint64_t end = off + len, hg, tg, fg0, fg1;
	bool head, tail;
	int rc;

	if (!len)
		return 0;
	hg = off / DISK_GRAIN;
	tg = (end - 1) / DISK_GRAIN;
	head = off % DISK_GRAIN != 0;
	tail = end % DISK_GRAIN != 0 && !(head && hg == tg);
	fg0 = head ? hg + 1 : hg;
	fg1 = end % DISK_GRAIN ? tg : tg + 1;
	if (head) {
		rc = write_partial(d, hg, buf, (size_t)(MIN(end, (hg + 1) * DISK_GRAIN) - off),
				   off, deadline);
		if (rc < 0)
			return rc;
	}
	if (tail) {
		uint64_t gpos = tg * DISK_GRAIN; /* >= off: tg > hg, or off is aligned */

		rc = write_partial(d, tg, buf + (gpos - off), (size_t)(end - gpos), gpos, deadline);
		if (rc < 0)
			return rc;
	}
	if (fg1 > fg0) {
		/* One pwrite at the disk offset (identity mapping), then the states. */
		rc = pwrite_full(overlay_data_fd(d->ov), buf + (fg0 * DISK_GRAIN - off),
				 (fg1 - fg0) * DISK_GRAIN, fg0 * DISK_GRAIN);
		if (rc == 0)
			rc = overlay_set(d->ov, fg0, fg1 - fg0, OVL_DATA);
		if (rc < 0) {
			unwrite_grains(d, fg0, fg1);
			return rc;
		}
	}
	return 0;
}

/* Writes zeros over [off, off+len), which holds no whole grain but its own edges. */
static int write_zeros(struct disk *d, uint64_t off, uint64_t len, uint64_t *deadline)
{
	while (len) {
		size_t n = (size_t)MIN(len, (off / DISK_GRAIN + 1) * DISK_GRAIN - off);
		int rc = write_locked(d, zero_grain, n, off, deadline);

		if (rc < 0)
			return rc;
		off += n;
		len -= n;
	}
	return 0;
}

int disk_write_until(struct disk *d, const void *buf, size_t len, uint64_t off,
		     unsigned flags, uint64_t *deadline)
{
	int rc = range_ok(d, off, len);

	if (rc < 0)
		return rc;
	stat_add(&d->n_writes, 1);
	lock_range(d, off, len);
	rc = write_locked(d, buf, len, off, deadline);
	unlock_range(d, off, len);
	if (rc == 0) {
		stat_add(&d->b_written, len);
		if (flags & DISK_FUA)
			rc = disk_flush(d);
	}
	return rc;
}

int disk_write(struct disk *d, const void *buf, size_t len, uint64_t off, unsigned flags)
{
	uint64_t deadline = 0;

	return disk_write_until(d, buf, len, off, flags, &deadline);
}

int disk_flush(struct disk *d)
{
	stat_add(&d->n_flushes, 1);
	return overlay_flush(d->ov);
}

/* Sets full grains [g0, g1) to ZERO and releases their space. Grains past the image that
 * are still IMAGE already read as zeros and are left alone (no map pages for them). */
static int unmap_grains(struct disk *d, uint64_t g0, uint64_t g1)
{
	uint64_t img_g = DIV_ROUND_UP(d->img->size, DISK_GRAIN);
	uint64_t g = g0;
	int rc;

	while (g < g1) {
		enum overlay_state st;
		uint64_t run = overlay_run(d->ov, g, g1 - g, &st);

		if (g < img_g)
			run = MIN(run, img_g - g);
		if (st == OVL_DATA || (st == OVL_IMAGE && g < img_g)) {
			/* ZERO first: readers stop reading the data file (overlay.c inv. 8). */
			rc = overlay_set(d->ov, g, run, OVL_ZERO);
			if (rc < 0)
				return rc;
			if (st == OVL_DATA && (rc = overlay_punch(d->ov, g, run)) < 0)
				return rc;
		}
		g += run;
	}
	return 0;
}

int disk_unmap_until(struct disk *d, uint64_t off, uint64_t len, unsigned flags,
		     uint64_t *deadline)
{
	uint64_t end = off + len, fg0, fg1;
	int rc = range_ok(d, off, len);

	if (rc < 0 || !len)
		return rc;
	stat_add(&d->n_unmaps, 1);
	fg0 = DIV_ROUND_UP(off, DISK_GRAIN);
	fg1 = end / DISK_GRAIN;
	if (end == disk_size(d))
		fg1 = DIV_ROUND_UP(end, DISK_GRAIN); /* the disk's last, short grain */
	lock_range(d, off, len);
	if (fg0 >= fg1) {
		rc = write_zeros(d, off, len, deadline);
		goto out;
	}
	rc = write_zeros(d, off, fg0 * DISK_GRAIN - off, deadline);
	if (rc == 0 && end > fg1 * DISK_GRAIN)
		rc = write_zeros(d, fg1 * DISK_GRAIN, end - fg1 * DISK_GRAIN, deadline);
	if (rc == 0)
		rc = unmap_grains(d, fg0, fg1);
out:
	unlock_range(d, off, len);
	if (rc == 0 && (flags & DISK_FUA))
		rc = disk_flush(d);
	return rc;
}

int disk_unmap(struct disk *d, uint64_t off, uint64_t len, unsigned flags)
{
	uint64_t deadline = 0;

	return disk_unmap_until(d, off, len, flags, &deadline);
}

int disk_compare_and_write_until(struct disk *d, const void *cmp, const void *data,
				 size_t len, uint64_t off, unsigned flags,
				 uint64_t *miscompare_off, uint64_t *deadline)
{
	const uint8_t *c = cmp;
	uint8_t *cur;
	int rc = range_ok(d, off, len);

	if (rc < 0)
		return rc;
	cur = malloc(len ? len : 1);
	if (!cur)
		return -ENOMEM;
	stat_add(&d->n_writes, 1);
	lock_range(d, off, len);
	rc = read_merged(d, cur, len, off, deadline);
	if (rc == 0 && memcmp(cur, c, len) != 0) {
		size_t i = 0;

		while (i < len && cur[i] == c[i])
			i++;
		if (miscompare_off)
			*miscompare_off = i;
		rc = -EILSEQ;
	}
	if (rc == 0)
		rc = write_locked(d, data, len, off, deadline);
	unlock_range(d, off, len);
	free(cur);
	if (rc == 0) {
		stat_add(&d->b_written, len);
		if (flags & DISK_FUA)
			rc = disk_flush(d);
	}
	return rc;
}

int disk_compare_and_write(struct disk *d, const void *cmp, const void *data, size_t len,
			   uint64_t off, unsigned flags, uint64_t *miscompare_off)
{
	uint64_t deadline = 0;

	return disk_compare_and_write_until(d, cmp, data, len, off, flags, miscompare_off,
					    &deadline);
}

int disk_grow(struct disk *d, uint64_t new_size)
{
	int rc;

	if (new_size < disk_size(d))
		return -EINVAL;
	/* All stripes: no overlay_set() may run while the map's page table is replaced. */
	lock_range(d, 0, (uint64_t)LOCK_STRIPES << LOCK_REGION_SHIFT);
	rc = overlay_grow(d->ov, new_size);
	unlock_range(d, 0, (uint64_t)LOCK_STRIPES << LOCK_REGION_SHIFT);
	return rc;
}

/* True when some grain of [g0, g1) reads the image. */
static bool any_image(struct disk *d, uint64_t g0, uint64_t g1)
{
	while (g0 < g1) {
		enum overlay_state st;
		uint64_t run = overlay_run(d->ov, g0, g1 - g0, &st);

		if (st == OVL_IMAGE)
			return true;
		g0 += run;
	}
	return false;
}

int disk_missing_chunks(struct disk *d, uint64_t off, uint64_t len,
			void (*fn)(void *arg, const struct chunk_hash *h, uint64_t idx,
				   uint32_t len),
			void *arg)
{
	const struct manifest *m = d->img;
	uint64_t end;
	int rc = range_ok(d, off, len);

	if (rc < 0)
		return rc;
	end = MIN(off + len, m->size);
	for (uint64_t pos = off; pos < end;) {
		uint64_t idx = pos >> m->chunk_shift;
		uint64_t cend = MIN(end, (idx << m->chunk_shift) + chunk_len(m, idx));

		if (!manifest_chunk_is_zero(m, idx) &&
		    any_image(d, pos / DISK_GRAIN, DIV_ROUND_UP(cend, DISK_GRAIN)) &&
		    !chunkstore_contains(d->store, &m->hashes[idx]))
			fn(arg, &m->hashes[idx], idx, chunk_len(m, idx));
		pos = cend;
	}
	return 0;
}

/* Whether IMAGE grain g may read non-zero, and for how many grains from g that holds. */
static bool image_mapped(const struct manifest *m, uint64_t g, uint64_t *run)
{
	uint64_t pos = g * DISK_GRAIN, gpc = m->chunk_size / DISK_GRAIN;
	uint64_t idx = pos >> m->chunk_shift;
	bool mapped;

	if (pos >= m->size) {
		*run = UINT64_MAX;
		return false;
	}
	mapped = !manifest_chunk_is_zero(m, idx);
	/* Up to the chunk's end, or the image's end for its last chunk. */
	*run = (idx + 1) * gpc - g;
	if (idx + 1 == m->nchunks)
		*run = DIV_ROUND_UP(m->size, DISK_GRAIN) - g;
	return mapped;
}

#define LBA_STATUS_SCAN_MAX (1ull << 20) /* grains looked at per call: bounds its time */

int disk_lba_status(struct disk *d, uint64_t off, uint64_t *run_len, bool *mapped)
{
	uint64_t size = disk_size(d);
	uint64_t g0 = off / DISK_GRAIN, g = g0;
	uint64_t gend = MIN(DIV_ROUND_UP(size, DISK_GRAIN), g0 + LBA_STATUS_SCAN_MAX);
	bool first = true, cls = false;

	if (off >= size)
		return -ERANGE;
	while (g < gend) {
		enum overlay_state st;
		uint64_t run = overlay_run(d->ov, g, gend - g, &st);
		bool c = st == OVL_DATA;

		if (st == OVL_IMAGE) {
			uint64_t irun;

			c = image_mapped(d->img, g, &irun);
			run = MIN(run, irun);
		}
		if (first) {
			cls = c;
			first = false;
		} else if (c != cls) {
			break;
		}
		g += run;
	}
	*mapped = cls;
	*run_len = MIN(g * DISK_GRAIN, size) - off;
	return 0;
}

void disk_get_stats(struct disk *d, struct disk_stats *st)
{
	struct overlay_stats os;

	st->reads = __atomic_load_n(&d->n_reads, __ATOMIC_RELAXED);
	st->writes = __atomic_load_n(&d->n_writes, __ATOMIC_RELAXED);
	st->flushes = __atomic_load_n(&d->n_flushes, __ATOMIC_RELAXED);
	st->unmaps = __atomic_load_n(&d->n_unmaps, __ATOMIC_RELAXED);
	st->bytes_read = __atomic_load_n(&d->b_read, __ATOMIC_RELAXED);
	st->bytes_written = __atomic_load_n(&d->b_written, __ATOMIC_RELAXED);
	st->misses = __atomic_load_n(&d->n_misses, __ATOMIC_RELAXED);
	st->bad_chunks = __atomic_load_n(&d->n_bad_chunks, __ATOMIC_RELAXED);
	st->overlay_bytes = overlay_data_grains(d->ov) * DISK_GRAIN;
	overlay_get_stats(d->ov, &os);
	st->map_pages_written = os.pages_written;
	st->map_skipped = os.map_skipped;
	st->recovered = os.recovered;
}

/* ---- lifecycle ---- */

int disk_create(const char *dir, const struct chunk_hash *image_id, uint64_t size)
{
	return overlay_create(dir, image_id, size);
}

int disk_open(const struct disk_opts *opts, struct disk **out)
{
	struct disk *d;
	unsigned nslots = 1;
	int rc;

	if (!opts->dir || !opts->image || !opts->store)
		return -EINVAL;
	while (nslots < (opts->chunk_fds ? opts->chunk_fds : DEFAULT_CHUNK_FDS) && nslots < 65536)
		nslots <<= 1;
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	rc = overlay_open(opts->dir, &d->ov);
	if (rc < 0)
		goto fail;
	if (!hash_equal(overlay_image_id(d->ov), &opts->image->id)) {
		log_error("disk %s: overlay belongs to another image", opts->dir);
		rc = -EINVAL;
		goto fail;
	}
	if (overlay_size(d->ov) < opts->image->size) {
		rc = -EINVAL;
		goto fail;
	}
	d->img = opts->image;
	d->store = opts->store;
	d->miss = opts->miss;
	d->miss_arg = opts->miss_arg;
	d->on_access = opts->on_chunk_access;
	d->on_bad = opts->on_bad_chunk;
	d->io_timeout_ns = opts->io_timeout_ns ? opts->io_timeout_ns : DEFAULT_IO_TIMEOUT_NS;
	d->slots = aligned_alloc(64, nslots * sizeof(*d->slots));
	if (!d->slots) {
		rc = -ENOMEM;
		goto fail;
	}
	d->slot_mask = nslots - 1;
	for (unsigned i = 0; i < nslots; i++) {
		d->slots[i].tag = 0;
		d->slots[i].users = 0;
		d->slots[i].fd = -1;
		pthread_mutex_init(&d->slots[i].mtx, NULL);
	}
	for (unsigned i = 0; i < LOCK_STRIPES; i++)
		pthread_mutex_init(&d->locks[i], NULL);
	*out = d;
	return 0;
fail:
	overlay_close(d->ov);
	free(d);
	return rc;
}

void disk_close(struct disk *d)
{
	if (!d)
		return;
	for (unsigned i = 0; i <= d->slot_mask; i++) {
		if (d->slots[i].fd >= 0)
			close(d->slots[i].fd);
		pthread_mutex_destroy(&d->slots[i].mtx);
	}
	for (unsigned i = 0; i < LOCK_STRIPES; i++)
		pthread_mutex_destroy(&d->locks[i]);
	free(d->slots);
	overlay_close(d->ov);
	free(d);
}

int disk_fsck(const char *dir, bool repair,
	      void (*report)(void *arg, const char *path, const char *problem), void *arg)
{
	return overlay_fsck(dir, repair, report, arg);
}
