/*
 * chunkstore.c - the local content-addressed chunk store (DESIGN.md section 3).
 *
 * Invariants (tests/unit/cache/test_chunkstore.c checks each, by number):
 *  1. A file under chunks/ is complete and its bytes hash to its name whenever anyone may
 *     read it. Inserts write a temp file in tmp/ and rename it into chunks/<hh>/, without
 *     fsync: the store is soft state (any chunk can be fetched again), so an insert need
 *     not be durable, only never torn once served. A crash of the process alone cannot
 *     tear a renamed file (the page cache survives it); a power loss can (its data may
 *     not have reached the disk before the rename did). Hence the clean-shutdown marker
 *     <dir>/clean: chunkstore_close() syncfs()es the filesystem and then writes it
 *     durably; chunkstore_open() removes it durably before anything can be inserted, and
 *     when it was absent (crash, power loss, kill -9, a new store) re-hashes every chunk
 *     file and drops the bad ones before open returns, i.e. before the owner serves any
 *     chunk and before any reader is started (rackdiskd opens the store before it spawns
 *     tgtd). With the marker present, open still removes tmp/ and empty, oversized or
 *     misnamed files, and the owner re-hashes a chunk found at open the first time it
 *     serves it. A torn or corrupt file is never served by chunkstore_get().
 *  1a. Readers (the tgt module, another process) learn from <dir>/session, written by the
 *     owner's open, which chunks that owner vouches for: "verified" (its open re-hashed
 *     every file, and it verifies what it inserts), or "since <ns>" (a clean open: files
 *     changed at or after that CLOCK_REALTIME instant are its own verified inserts; older
 *     ones were not re-hashed). A reader re-hashes a file the session does not vouch for
 *     (no session file: every file) the first time it opens it, and answers -EBADMSG for
 *     a bad one, dropping its descriptor, so that its owner can be told (rackdiskd
 *     re-checks and drops it, chunkstore_recheck) and a fresh copy is opened next time.
 *  2. A chunk is announced once its file is in place under chunks/ and it is in the index
 *     (a peer told about it can read it at once), but before it is on stable storage:
 *     until the next syncfs (close) or the kernel's own writeback (vm.dirty_expire, 30 s
 *     by default) a power loss may lose it. That costs a peer a 404 and a fallback to
 *     another source, never bad data: peers re-hash every chunk they receive, and the
 *     store re-verifies itself and re-announces what survived at the next start.
 *  3. The withdraw hook runs before the chunk's file is unlinked, and after the chunk has
 *     left the index (no new pin can be taken on it).
 *  4. A pinned chunk (a live chunk_ref, or an insert in progress) is never evicted; when
 *     everything evictable is pinned, an insert that needs room fails with -ENOSPC.
 *  5. bytes_used (the sum of indexed and in-flight chunk lengths) stays <= capacity after
 *     every insert returns (an open with more data than capacity evicts down to it).
 *  6. Only the owner creates or removes files, and only one owner has a store open at a
 *     time (flock on <dir>/lock); readers never write.
 *  7. A hash is in at most one state at a time: filling (not readable, not evictable),
 *     present (readable, in the policy) or removing (not readable; an insert of the same
 *     hash waits until its file is gone, so it never unlinks a newer copy).
 *
 * State diagram of an index entry (owner mode):
 *   (absent) --chunkstore_insert--> filling --file renamed--> present --announce-->
 *   present --evict_victim()/corrupt--> removing --withdraw, unlink--> (absent)
 *
 * Locking: one mutex (cs->lock) guards the index, the policy and the counters, and is
 * held only for O(1) work: no file I/O, hashing or hook runs under it (evict_victim() is
 * amortised O(1)). The descriptor cache (chunkstore_fdcache.c) has its own lock. On the 2-core
 * appliance a sharded index would add cost (the policy is global anyway) without removing
 * contention.
 *
 * Memory: ~90 bytes per indexed chunk (the entry and its bucket), so 1M chunks ~ 90 MB.
 */
#include "cache/chunkstore.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache/aio.h"
#include "cache/chunkstore_int.h"
#include "cache/evict.h"
#include "common/log.h"
#include "common/util.h"

#define SLAB_ENTRIES		4096
#define CHUNKSTORE_CLEAN_MARKER "clean"
#define CHUNKSTORE_SESSION	"session" /* invariant 1a */

enum { SESSION_NONE, SESSION_VERIFIED, SESSION_SINCE };

/* Hashes of chunks a reader has verified (or its owner vouches for): open addressing. */
struct vset {
	struct chunk_hash *v;
	bool *used;
	size_t cap, n;
};

enum { ST_FILLING = 1, ST_PRESENT, ST_REMOVING };

struct cs_entry {
	struct evict_node node; /* node.size is the chunk's length; node.pins its pins */
	struct chunk_hash h;
	struct cs_entry *chain;
	uint8_t state;
	bool verified; /* its bytes were hashed since this store was opened */
};

struct chunk_ref {
	struct fd_slot *slot;
	struct cs_entry *e; /* owner mode */
};

struct chunkstore {
	char *dir;
	int dir_fd, chunks_fd, tmp_fd, lock_fd;
	int hh_fd[256];
	bool reader, direct;
	bool owner_open; /* owner mode and opened: close may write the clean marker */
	bool io_error;	 /* an insert failed with -EIO: no clean marker at close */
	struct chunkstore_hooks hooks;
	uint64_t capacity;

	pthread_mutex_t lock;
	pthread_cond_t cond; /* an entry changed state */
	struct cs_entry **buckets;
	uint64_t nbuckets, nentries;
	struct cs_entry *free_entries;
	void **slabs;
	size_t nslabs;
	struct evict_policy *policy;
	struct chunkstore_stats st; /* guarded by lock but for stat_add() counters */
	uint64_t tmp_seq;
	/* Reader: what the owner's session vouches for, and what we verified (lock). */
	int session;
	uint64_t session_since_ns;
	struct vset verified;

	struct fdcache fdc;
};

/* The read-path counters (hits, misses, bytes_read) are atomics, outside the lock. */
static void stat_add(uint64_t *c, uint64_t n)
{
	__atomic_add_fetch(c, n, __ATOMIC_RELAXED);
}

static uint64_t hkey(const struct chunk_hash *h)
{
	uint64_t k;

	memcpy(&k, h->b, sizeof(k)); /* SHA-256 bytes are uniform already */
	return k ? k : 1;
}

/* ---- the reader's verified set ---- */

static bool vset_has(const struct vset *vs, const struct chunk_hash *h)
{
	if (!vs->cap)
		return false;
	for (size_t i = hkey(h) & (vs->cap - 1);; i = (i + 1) & (vs->cap - 1)) {
		if (!vs->used[i])
			return false;
		if (hash_equal(&vs->v[i], h))
			return true;
	}
}

static void vset_put(struct vset *vs, const struct chunk_hash *h)
{
	size_t i = hkey(h) & (vs->cap - 1);

	while (vs->used[i] && !hash_equal(&vs->v[i], h))
		i = (i + 1) & (vs->cap - 1);
	if (!vs->used[i]) {
		vs->used[i] = true;
		vs->v[i] = *h;
		vs->n++;
	}
}

/* Adds h; -ENOMEM leaves the set as it was (the chunk is then verified again later). */
static int vset_add(struct vset *vs, const struct chunk_hash *h)
{
	if (2 * (vs->n + 1) > vs->cap) {
		struct vset big = {.cap = vs->cap ? 2 * vs->cap : 1024};

		big.v = malloc(big.cap * sizeof(*big.v));
		big.used = calloc(big.cap, sizeof(*big.used));
		if (!big.v || !big.used) {
			free(big.v);
			free(big.used);
			return -ENOMEM;
		}
		for (size_t i = 0; i < vs->cap; i++)
			if (vs->used[i])
				vset_put(&big, &vs->v[i]);
		free(vs->v);
		free(vs->used);
		*vs = big;
	}
	vset_put(vs, h);
	return 0;
}

static void hex_parts(const struct chunk_hash *h, char hex[HASH_HEX_LEN + 1], unsigned *hh)
{
	hash_to_hex(h, hex);
	*hh = h->b[0];
}

/* ---- the index (cs->lock held) ---- */

static struct cs_entry *index_find(struct chunkstore *cs, const struct chunk_hash *h)
{
	struct cs_entry *e = cs->buckets[hkey(h) & (cs->nbuckets - 1)];

	while (e && !hash_equal(&e->h, h))
		e = e->chain;
	return e;
}

static void index_grow(struct chunkstore *cs)
{
	uint64_t nb = cs->nbuckets * 2;
	struct cs_entry **b = calloc(nb, sizeof(*b));

	if (!b)
		return; /* longer chains, still correct */
	for (uint64_t i = 0; i < cs->nbuckets; i++) {
		for (struct cs_entry *e = cs->buckets[i], *next; e; e = next) {
			uint64_t j = hkey(&e->h) & (nb - 1);

			next = e->chain;
			e->chain = b[j];
			b[j] = e;
		}
	}
	free(cs->buckets);
	cs->buckets = b;
	cs->nbuckets = nb;
}

static struct cs_entry *entry_alloc(struct chunkstore *cs)
{
	struct cs_entry *e;

	if (!cs->free_entries) {
		struct cs_entry *slab = calloc(SLAB_ENTRIES, sizeof(*slab));
		void **ns = realloc(cs->slabs, (cs->nslabs + 1) * sizeof(*ns));

		if (!slab || !ns) {
			free(slab);
			if (ns)
				cs->slabs = ns;
			return NULL;
		}
		cs->slabs = ns;
		cs->slabs[cs->nslabs++] = slab;
		for (size_t i = 0; i < SLAB_ENTRIES; i++) {
			slab[i].chain = cs->free_entries;
			cs->free_entries = &slab[i];
		}
	}
	e = cs->free_entries;
	cs->free_entries = e->chain;
	memset(e, 0, sizeof(*e));
	return e;
}

static void index_add(struct chunkstore *cs, struct cs_entry *e)
{
	uint64_t j;

	if (cs->nentries >= cs->nbuckets)
		index_grow(cs);
	j = hkey(&e->h) & (cs->nbuckets - 1);
	e->node.key = hkey(&e->h);
	e->chain = cs->buckets[j];
	cs->buckets[j] = e;
	cs->nentries++;
}

static void index_del(struct chunkstore *cs, struct cs_entry *e)
{
	struct cs_entry **p = &cs->buckets[hkey(&e->h) & (cs->nbuckets - 1)];

	while (*p && *p != e)
		p = &(*p)->chain;
	if (*p)
		*p = e->chain;
	cs->nentries--;
	e->chain = cs->free_entries;
	cs->free_entries = e;
}

/* ---- removal and eviction ---- */

struct victims {
	struct cs_entry **v;
	size_t n, cap;
};

/* Marks e removing and queues it (cs->lock held). */
static int victims_add(struct chunkstore *cs, struct victims *vs, struct cs_entry *e)
{
	if (vs->n == vs->cap) {
		size_t ncap = vs->cap ? vs->cap * 2 : 8;
		struct cs_entry **nv = realloc(vs->v, ncap * sizeof(*nv));

		if (!nv)
			return -ENOMEM;
		vs->v = nv;
		vs->cap = ncap;
	}
	evict_remove(cs->policy, &e->node);
	e->state = ST_REMOVING;
	cs->st.bytes_used -= e->node.size;
	cs->st.nchunks--;
	vs->v[vs->n++] = e;
	return 0;
}

/* Withdraws, unlinks and forgets each victim (cs->lock not held). Invariant 3. */
static void victims_remove(struct chunkstore *cs, struct victims *vs, bool corrupt)
{
	for (size_t i = 0; i < vs->n; i++) {
		struct cs_entry *e = vs->v[i];
		char hex[HASH_HEX_LEN + 1];
		unsigned hh;

		if (cs->hooks.withdraw)
			cs->hooks.withdraw(cs->hooks.arg, &e->h);
		fdcache_drop(&cs->fdc, &e->h);
		hex_parts(&e->h, hex, &hh);
		if (unlinkat(cs->hh_fd[hh], hex, 0) < 0 && errno != ENOENT)
			log_warn("chunk store: cannot remove chunk %s: %s", hex, strerror(errno));
		pthread_mutex_lock(&cs->lock);
		if (corrupt) {
			cs->st.dropped_corrupt++;
		} else {
			cs->st.evictions++;
			cs->st.bytes_evicted += e->node.size;
		}
		index_del(cs, e);
		pthread_cond_broadcast(&cs->cond);
		pthread_mutex_unlock(&cs->lock);
	}
	free(vs->v);
	vs->v = NULL;
	vs->n = vs->cap = 0;
}

/* Chooses victims until bytes_used fits the capacity (cs->lock held). -ENOSPC if it can't. */
static int make_room(struct chunkstore *cs, struct victims *vs)
{
	while (cs->capacity && cs->st.bytes_used > cs->capacity) {
		struct evict_node *n = evict_victim(cs->policy);

		if (!n)
			return -ENOSPC;
		struct cs_entry *e = (struct cs_entry *)n; /* node is the first member */
		if (victims_add(cs, vs, e) < 0) {
			evict_insert(cs->policy, n); /* keep it; try again later */
			return -ENOMEM;
		}
	}
	return 0;
}

/* Drops a present, pinned-by-us entry whose file turned out bad or missing. */
static void drop_bad(struct chunkstore *cs, struct cs_entry *e, bool corrupt)
{
	struct victims vs = {0};
	bool queued;

	pthread_mutex_lock(&cs->lock);
	if (!--e->node.pins)
		cs->st.pinned--;
	queued = e->state == ST_PRESENT && !e->node.pins && victims_add(cs, &vs, e) == 0;
	pthread_mutex_unlock(&cs->lock);
	if (queued)
		victims_remove(cs, &vs, corrupt);
	free(vs.v);
}

/* ---- open and close ---- */

static int open_dirs(struct chunkstore *cs)
{
	char path[PATH_MAX];

	cs->dir_fd = open(cs->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (cs->dir_fd < 0)
		return -errno;
	if (cs->reader) {
		cs->chunks_fd = openat(cs->dir_fd, "chunks", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		return cs->chunks_fd < 0 ? -errno : 0;
	}
	/* Invariant 6: one owner at a time. */
	cs->lock_fd = openat(cs->dir_fd, "lock", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (cs->lock_fd < 0)
		return -errno;
	if (flock(cs->lock_fd, LOCK_EX | LOCK_NB) < 0)
		return errno == EWOULDBLOCK ? -EBUSY : -errno;
	for (const char *sub = "chunks"; sub; sub = strcmp(sub, "chunks") ? NULL : "tmp") {
		if (mkdirat(cs->dir_fd, sub, 0755) < 0 && errno != EEXIST)
			return -errno;
	}
	cs->chunks_fd = openat(cs->dir_fd, "chunks", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	cs->tmp_fd = openat(cs->dir_fd, "tmp", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (cs->chunks_fd < 0 || cs->tmp_fd < 0)
		return -errno;
	for (unsigned i = 0; i < 256; i++) {
		char hh[3];

		snprintf(hh, sizeof(hh), "%02x", i);
		if (mkdirat(cs->chunks_fd, hh, 0755) < 0 && errno != EEXIST)
			return -errno;
		cs->hh_fd[i] = openat(cs->chunks_fd, hh, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (cs->hh_fd[i] < 0)
			return -errno;
	}
	if (fsync(cs->chunks_fd) < 0 || fsync(cs->dir_fd) < 0)
		return -errno;
	snprintf(path, sizeof(path), "%s/tmp", cs->dir);
	cs->direct = cs->direct && aio_direct_supported(path);
	return 0;
}

/*
 * Takes the clean-shutdown marker (invariant 1): removes it, durably, before anything
 * can be inserted, so a stop that does not reach chunkstore_close() leaves no marker.
 * *was_clean tells whether the previous owner closed the store cleanly.
 */
static int take_clean_marker(struct chunkstore *cs, bool *was_clean)
{
	*was_clean = false;
	if (unlinkat(cs->dir_fd, CHUNKSTORE_CLEAN_MARKER, 0) < 0)
		return errno == ENOENT ? 0 : -errno;
	*was_clean = true;
	return fsync(cs->dir_fd) < 0 ? -errno : 0;
}

/*
 * Makes everything written since open durable (syncfs: one flush for all inserts, where
 * the store used to pay an fsync per chunk), then writes the marker that lets the next
 * open skip the full verification. Any error leaves no marker: the next open verifies.
 */
static void write_clean_marker(struct chunkstore *cs)
{
	char path[PATH_MAX];
	uint64_t t0 = now_ns();
	int ret = 0;

	if (cs->io_error)
		ret = -EIO;
	else if (syncfs(cs->dir_fd) < 0)
		ret = -errno;
	if (!ret) {
		snprintf(path, sizeof(path), "%s/%s", cs->dir, CHUNKSTORE_CLEAN_MARKER);
		ret = write_file_atomic(path, "clean\n", 6);
	}
	if (ret)
		log_warn("chunk store %s: no clean-shutdown marker (%s): the next open re-hashes "
			 "every chunk",
			 cs->dir, strerror(-ret));
	else
		log_debug("chunk store %s: synced and marked clean in %.3f s", cs->dir,
			  (double)(now_ns() - t0) / 1e9);
}

/* Rebuilds the index from the files under chunks/ (owner mode). */
static int rebuild_index(struct chunkstore *cs, bool verify, bool unclean)
{
	struct cs_scan s = {
		.dir = cs->dir, .chunks_fd = cs->chunks_fd, .verify = verify, .repair = true};
	struct victims vs = {0};
	uint64_t t0 = now_ns();
	int ret;

	ret = cs_clean_tmp(cs->dir, true, NULL, NULL); /* invariant 1: torn temp files */
	if (ret < 0)
		return ret;
	s.verify = verify || unclean; /* invariant 1: an unclean stop may have left torn files */
	ret = cs_scan_chunks(&s);
	if (ret)
		return ret;
	if (unclean && !verify && s.nrecs)
		log_info("chunk store %s: not closed cleanly last time: re-hashed all %zu chunks "
			 "before serving any (%llu bad)",
			 cs->dir, s.nrecs, (unsigned long long)s.problems);
	pthread_mutex_lock(&cs->lock);
	while (cs->nbuckets < s.nrecs && cs->nbuckets < (1ull << 40)) {
		uint64_t nb = cs->nbuckets;

		index_grow(cs); /* empty yet: cheap, and no rehash per doubling below */
		if (cs->nbuckets == nb)
			break;
	}
	for (size_t i = 0; i < s.nrecs && !ret; i++) {
		struct cs_entry *e = entry_alloc(cs);

		if (!e) {
			ret = -ENOMEM;
			break;
		}
		e->h = s.recs[i].h;
		e->node.size = s.recs[i].len;
		e->state = ST_PRESENT;
		e->verified = s.verify;
		index_add(cs, e);
		evict_insert(cs->policy, &e->node);
		cs->st.nchunks++;
		cs->st.bytes_used += e->node.size;
	}
	cs->st.dropped_corrupt += s.problems;
	if (!ret) /* invariant 5: a smaller capacity than last time */
		ret = make_room(cs, &vs);
	pthread_mutex_unlock(&cs->lock);
	free(s.recs);
	victims_remove(cs, &vs, false);
	if (!ret)
		log_info("chunk store %s: %llu chunks, %llu bytes, %llu problem files dropped, "
			 "opened in %.3f s",
			 cs->dir, (unsigned long long)cs->st.nchunks,
			 (unsigned long long)cs->st.bytes_used, (unsigned long long)s.problems,
			 (double)(now_ns() - t0) / 1e9);
	return ret;
}

/*
 * Invariant 1a: tells readers which files this owner vouches for. Files changed from
 * since_ns (taken before the scan) on are this session's inserts. A failure leaves no
 * session file: readers then verify every file they open.
 */
static void write_session(struct chunkstore *cs, bool all_verified, uint64_t since_ns)
{
	char path[PATH_MAX], buf[64];
	int n, ret;

	snprintf(path, sizeof(path), "%s/%s", cs->dir, CHUNKSTORE_SESSION);
	n = all_verified ? snprintf(buf, sizeof(buf), "verified\n") :
			   snprintf(buf, sizeof(buf), "since %llu\n",
				    (unsigned long long)since_ns);
	ret = write_file_atomic(path, buf, (size_t)n);
	if (ret) {
		unlinkat(cs->dir_fd, CHUNKSTORE_SESSION, 0);
		log_warn("chunk store %s: cannot write %s (%s): readers will re-hash every "
			 "chunk they open", cs->dir, path, strerror(-ret));
	}
}

static void read_session(struct chunkstore *cs)
{
	char path[PATH_MAX], *buf = NULL;
	unsigned long long since;
	size_t len;

	cs->session = SESSION_NONE;
	snprintf(path, sizeof(path), "%s/%s", cs->dir, CHUNKSTORE_SESSION);
	if (read_file(path, 64, &buf, &len))
		return;
	if (!strcmp(buf, "verified\n")) {
		cs->session = SESSION_VERIFIED;
	} else if (sscanf(buf, "since %llu", &since) == 1) {
		cs->session = SESSION_SINCE;
		cs->session_since_ns = since;
	}
	free(buf);
}

static uint64_t realtime_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int chunkstore_open(const struct chunkstore_opts *o, struct chunkstore **out)
{
	uint64_t since_ns;
	struct chunkstore *cs;
	int ret;

	if (!o || !o->dir || !*o->dir)
		return -EINVAL;
	cs = calloc(1, sizeof(*cs));
	if (!cs)
		return -ENOMEM;
	cs->dir_fd = cs->chunks_fd = cs->tmp_fd = cs->lock_fd = -1;
	for (unsigned i = 0; i < 256; i++)
		cs->hh_fd[i] = -1;
	pthread_mutex_init(&cs->lock, NULL);
	pthread_cond_init(&cs->cond, NULL);
	fdcache_init(&cs->fdc);
	cs->reader = o->reader;
	cs->fdc.sweep_unlinked = o->reader;
	cs->direct = o->direct_io;
	cs->hooks = o->hooks;
	cs->capacity = o->capacity;
	cs->st.capacity = o->capacity;
	cs->dir = strdup(o->dir);
	cs->nbuckets = 1024;
	cs->buckets = calloc(cs->nbuckets, sizeof(*cs->buckets));
	cs->policy = evict_new(EVICT_S3FIFO, o->capacity);
	if (!cs->dir || !cs->buckets || !cs->policy) {
		ret = -ENOMEM;
		goto fail;
	}
	ret = open_dirs(cs);
	if (ret)
		goto fail;
	/* After the lock (open_dirs): no earlier owner can write anything from now on.
	 * File times use a coarse clock, up to a tick behind: an insert in the first tick
	 * may look older and be re-hashed by a reader once, which is only slower. */
	since_ns = realtime_ns();
	cs->fdc.chunks_fd = cs->chunks_fd;
	/* A reader cannot create a probe file: its descriptors fall back one by one. */
	if (o->direct_io && !cs->direct)
		log_warn("chunk store %s: the filesystem refuses O_DIRECT; using buffered I/O",
			 cs->dir);
	if (!cs->reader) {
		bool clean;

		ret = take_clean_marker(cs, &clean);
		if (ret)
			goto fail;
		/* Invariant 1a: the dead owner's session vouched for files a power loss may
		 * have torn; readers must not trust them while the re-hash below runs. */
		if (!clean && unlinkat(cs->dir_fd, CHUNKSTORE_SESSION, 0) == 0 &&
		    fsync(cs->dir_fd) < 0) {
			ret = -errno;
			goto fail;
		}
		ret = rebuild_index(cs, o->verify_on_open, !clean);
		if (ret)
			goto fail;
		write_session(cs, o->verify_on_open || !clean, since_ns);
		cs->owner_open = true;
	} else {
		read_session(cs);
	}
	*out = cs;
	return 0;
fail:
	chunkstore_close(cs);
	return ret;
}

void chunkstore_close(struct chunkstore *cs)
{
	if (!cs)
		return;
	if (cs->owner_open)
		write_clean_marker(cs); /* while we still hold the lock (invariant 6) */
	for (unsigned i = 0; i < 256; i++)
		if (cs->hh_fd[i] >= 0)
			close(cs->hh_fd[i]);
	if (cs->chunks_fd >= 0)
		close(cs->chunks_fd);
	if (cs->tmp_fd >= 0)
		close(cs->tmp_fd);
	if (cs->dir_fd >= 0)
		close(cs->dir_fd);
	if (cs->lock_fd >= 0)
		close(cs->lock_fd); /* releases the flock */
	for (size_t i = 0; i < cs->nslabs; i++)
		free(cs->slabs[i]);
	free(cs->slabs);
	free(cs->buckets);
	evict_free(cs->policy);
	pthread_mutex_destroy(&cs->lock);
	pthread_cond_destroy(&cs->cond);
	fdcache_destroy(&cs->fdc);
	free(cs->verified.v);
	free(cs->verified.used);
	free(cs->dir);
	free(cs);
}

/* ---- lookups ---- */

/* Owner: pins a present entry. Returns it, or NULL on a miss. */
static struct cs_entry *pin_entry(struct chunkstore *cs, const struct chunk_hash *h, bool *verified)
{
	struct cs_entry *e;

	pthread_mutex_lock(&cs->lock);
	e = index_find(cs, h);
	if (!e || e->state != ST_PRESENT) {
		pthread_mutex_unlock(&cs->lock);
		return NULL;
	}
	if (!e->node.pins++)
		cs->st.pinned++;
	evict_access(cs->policy, &e->node);
	*verified = e->verified;
	pthread_mutex_unlock(&cs->lock);
	return e;
}

static void unpin_entry(struct chunkstore *cs, struct cs_entry *e)
{
	pthread_mutex_lock(&cs->lock);
	if (!--e->node.pins)
		cs->st.pinned--;
	pthread_mutex_unlock(&cs->lock);
}

/* Owner: the first use of a chunk found at open re-hashes it (invariant 1). */
static int check_first_use(struct chunkstore *cs, struct cs_entry *e, struct fd_slot *s)
{
	int ret = s->len == e->node.size ? cs_verify_fd(s->fd, s->len, &e->h) : 0;

	if (ret < 0)
		return ret;
	if (!ret) {
		char hex[HASH_HEX_LEN + 1];

		hash_to_hex(&e->h, hex);
		log_warn("chunk store %s: chunk %s is torn or corrupt; dropped", cs->dir, hex);
		return -ENOENT;
	}
	pthread_mutex_lock(&cs->lock);
	e->verified = true;
	pthread_mutex_unlock(&cs->lock);
	return 0;
}

/*
 * Reader, invariant 1a: 0 when the file behind s may be served (vouched for by the owner's
 * session, or re-hashed here once), -EBADMSG when it is torn or corrupt.
 */
static int reader_check(struct chunkstore *cs, struct fd_slot *s, const struct chunk_hash *h)
{
	struct stat st;
	bool known;
	int ret;

	pthread_mutex_lock(&cs->lock);
	known = vset_has(&cs->verified, h);
	pthread_mutex_unlock(&cs->lock);
	if (known || cs->session == SESSION_VERIFIED)
		return 0;
	if (cs->session == SESSION_SINCE && fstat(s->fd, &st) == 0 &&
	    (uint64_t)st.st_ctim.tv_sec * 1000000000ull + (uint64_t)st.st_ctim.tv_nsec >=
		    cs->session_since_ns) {
		ret = 1;
	} else {
		ret = cs_verify_fd(s->fd, s->len, h);
		stat_add(&cs->st.reader_verified, 1);
	}
	if (ret < 0)
		return ret;
	if (!ret) {
		char hex[HASH_HEX_LEN + 1];

		hash_to_hex(h, hex);
		log_warn("chunk store %s: chunk %s is torn or corrupt; not served", cs->dir, hex);
		stat_add(&cs->st.reader_corrupt, 1);
		return -EBADMSG;
	}
	pthread_mutex_lock(&cs->lock);
	vset_add(&cs->verified, h);
	pthread_mutex_unlock(&cs->lock);
	return 0;
}

int chunkstore_get(struct chunkstore *cs, const struct chunk_hash *h, struct chunk_ref **out)
{
	struct chunk_ref *ref = calloc(1, sizeof(*ref));
	struct cs_entry *e = NULL;
	bool verified = true;
	int ret;

	if (!ref)
		return -ENOMEM;
	if (!cs->reader) {
		e = pin_entry(cs, h, &verified);
		if (!e) {
			free(ref);
			stat_add(&cs->st.misses, 1);
			return -ENOENT;
		}
	}
	ret = fdcache_get(&cs->fdc, h, &ref->slot);
	if (!ret && cs->reader) {
		ret = reader_check(cs, ref->slot, h);
		if (ret) {
			fdcache_put(&cs->fdc, ref->slot);
			fdcache_drop(&cs->fdc, h); /* a fresh copy is opened next time */
		}
	} else if (!ret && !verified) {
		ret = check_first_use(cs, e, ref->slot);
		if (ret)
			fdcache_put(&cs->fdc, ref->slot);
		/* Torn, corrupt or unreadable: dropped. A passing failure (no memory for the
		 * check) leaves a good chunk in place for the next caller. */
		if (ret == -ENOENT || ret == -EIO) {
			drop_bad(cs, e, true);
			e = NULL;
		}
	} else if (ret == -ENOENT && e) { /* removed behind our back */
		drop_bad(cs, e, true);
		e = NULL;
	}
	if (ret) {
		if (e)
			unpin_entry(cs, e);
		if (ret == -ENOENT)
			stat_add(&cs->st.misses, 1);
		free(ref);
		return ret;
	}
	ref->e = e;
	stat_add(&cs->st.hits, 1);
	*out = ref;
	return 0;
}

void chunkstore_put(struct chunkstore *cs, struct chunk_ref *ref)
{
	if (!ref)
		return;
	fdcache_put(&cs->fdc, ref->slot);
	if (ref->e)
		unpin_entry(cs, ref->e);
	free(ref);
}

void chunkstore_sweep(struct chunkstore *cs)
{
	fdcache_sweep(&cs->fdc);
}

int chunk_ref_fd(const struct chunk_ref *ref)
{
	return ref->slot->fd;
}

uint32_t chunk_ref_len(const struct chunk_ref *ref)
{
	return ref->slot->len;
}

int chunkstore_read(struct chunkstore *cs, struct chunk_ref *ref, void *buf, size_t len,
		    uint32_t off)
{
	struct fd_slot *s = ref->slot;
	int fd = cs->direct ? fdcache_direct_fd(s) : -1;
	int ret;

	if ((uint64_t)off + len > s->len)
		return -ERANGE;
	if (fd >= 0)
		ret = aio_pread(fd, buf, len, off, true);
	else
		ret = aio_pread(s->fd, buf, len, off, false);
	if (!ret)
		stat_add(&cs->st.bytes_read, len);
	return ret;
}

int chunkstore_recheck(struct chunkstore *cs, const struct chunk_hash *h)
{
	bool verified;
	struct cs_entry *e;
	struct fd_slot *slot;
	int ret;

	if (cs->reader)
		return -EROFS;
	e = pin_entry(cs, h, &verified);
	if (!e)
		return 0;
	/* Through a descriptor of the file as it is now: a cached one may be of an older
	 * copy that was replaced. Missing counts as bad, as in chunkstore_get. */
	fdcache_drop(&cs->fdc, h);
	ret = fdcache_get(&cs->fdc, h, &slot);
	if (ret == 0) {
		ret = check_first_use(cs, e, slot);
		fdcache_put(&cs->fdc, slot);
	}
	if (ret == -ENOENT) {
		drop_bad(cs, e, true);
		return 1;
	}
	unpin_entry(cs, e);
	return ret;
}

bool chunkstore_contains(struct chunkstore *cs, const struct chunk_hash *h)
{
	char rel[HASH_HEX_LEN + 8], hex[HASH_HEX_LEN + 1];
	unsigned hh;
	bool found;

	if (cs->reader) {
		hex_parts(h, hex, &hh);
		snprintf(rel, sizeof(rel), "%02x/%s", hh, hex);
		return faccessat(cs->chunks_fd, rel, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
	}
	pthread_mutex_lock(&cs->lock);
	struct cs_entry *e = index_find(cs, h);
	found = e && e->state == ST_PRESENT;
	pthread_mutex_unlock(&cs->lock);
	return found;
}

void chunkstore_touch(struct chunkstore *cs, const struct chunk_hash *h)
{
	struct cs_entry *e;

	if (cs->reader)
		return;
	pthread_mutex_lock(&cs->lock);
	e = index_find(cs, h);
	if (e && e->state == ST_PRESENT)
		evict_access(cs->policy, &e->node);
	pthread_mutex_unlock(&cs->lock);
}

void chunkstore_path(const struct chunkstore *cs, const struct chunk_hash *h, char *buf, size_t len)
{
	char hex[HASH_HEX_LEN + 1];
	unsigned hh;

	hex_parts(h, hex, &hh);
	snprintf(buf, len, "%s/chunks/%02x/%s", cs->dir, hh, hex);
}

/* ---- insert ---- */

/*
 * Writes chunk data into fd. With direct, the data goes to the device with O_DIRECT when
 * buffer and length are AIO_ALIGN-aligned (a fetch worker's hugebuf always is; an image's
 * short last chunk is not): a direct_io store's inserts do not grow the page cache its
 * own reads bypass, nor leave dirty pages that its first O_DIRECT read of the chunk would
 * have to flush. A device that refuses the write (EINVAL) gets it buffered.
 * Buffered: no fsync (invariant 1 says why that is safe); sync_file_range() only starts
 * the writeback of the pages just written, so dirty data never piles up for the syncfs()
 * at close and the disk is busy while the next chunk arrives.
 */
static int write_chunk(int fd, const void *data, size_t len, bool direct)
{
	int ret;

	if (direct && !((uintptr_t)data % AIO_ALIGN) && !(len % AIO_ALIGN) &&
	    fcntl(fd, F_SETFL, O_DIRECT) == 0) {
		ret = pwrite_full(fd, data, len, 0);
		if (ret != -EINVAL)
			return ret;
		if (fcntl(fd, F_SETFL, 0) < 0)
			return -errno;
	}
	ret = pwrite_full(fd, data, len, 0);
	if (!ret)
		sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE); /* a hint: errors show at close */
	return ret;
}

/* Writes the chunk's file: temp, rename. */
static int publish_file(struct chunkstore *cs, const struct chunk_hash *h, const void *data,
			size_t len)
{
	char hex[HASH_HEX_LEN + 1], tmp[HASH_HEX_LEN + 48];
	unsigned hh;
	uint64_t seq;
	int fd, ret;

	hex_parts(h, hex, &hh);
	seq = __atomic_add_fetch(&cs->tmp_seq, 1, __ATOMIC_RELAXED);
	snprintf(tmp, sizeof(tmp), "%s.%d.%llu", hex, (int)getpid(), (unsigned long long)seq);
	fd = openat(cs->tmp_fd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	ret = write_chunk(fd, data, len, cs->direct);
	if (close(fd) < 0 && !ret)
		ret = -errno;
	if (!ret && renameat(cs->tmp_fd, tmp, cs->hh_fd[hh], hex) < 0)
		ret = -errno;
	if (ret)
		unlinkat(cs->tmp_fd, tmp, 0);
	return ret;
}

/* Reserves an entry for h in the filling state (cs->lock held). 1 if already present. */
static int reserve(struct chunkstore *cs, const struct chunk_hash *h, size_t len,
		   struct cs_entry **out)
{
	struct cs_entry *e;

	/* Invariant 7: wait out a concurrent insert or removal of the same chunk. */
	while ((e = index_find(cs, h)) && e->state != ST_PRESENT)
		pthread_cond_wait(&cs->cond, &cs->lock);
	if (e)
		return 1;
	if (cs->capacity && len > cs->capacity)
		return -ENOSPC;
	e = entry_alloc(cs);
	if (!e)
		return -ENOMEM;
	e->h = *h;
	e->node.size = (uint32_t)len;
	e->state = ST_FILLING;
	e->verified = true;
	index_add(cs, e);
	cs->st.bytes_used += len;
	*out = e;
	return 0;
}

int chunkstore_insert(struct chunkstore *cs, const struct chunk_hash *h, const void *data,
		      size_t len)
{
	struct victims vs = {0};
	struct cs_entry *e = NULL;
	int ret;

	if (cs->reader)
		return -EROFS;
	if (!len || len > CHUNKSTORE_MAX_CHUNK)
		return -EINVAL;
	pthread_mutex_lock(&cs->lock);
	ret = reserve(cs, h, len, &e);
	if (ret == 0) {
		ret = make_room(cs, &vs); /* invariants 4 and 5 */
		if (ret) {
			cs->st.bytes_used -= len;
			index_del(cs, e);
			pthread_cond_broadcast(&cs->cond);
		}
	}
	if (ret < 0)
		cs->st.insert_failures++;
	pthread_mutex_unlock(&cs->lock);
	victims_remove(cs, &vs, false);
	if (ret)
		return ret == 1 ? 0 : ret;

	ret = publish_file(cs, h, data, len);

	pthread_mutex_lock(&cs->lock);
	if (ret) {
		if (ret == -EIO)
			cs->io_error = true;
		cs->st.bytes_used -= len;
		index_del(cs, e);
		cs->st.insert_failures++;
	} else {
		e->state = ST_PRESENT;
		/* Pinned until announced: evicted in between, its withdraw would come
		 * before the announce, and the directory would name us for a chunk we no
		 * longer have (invariant 3: withdrawn before evicted, never announced after). */
		if (!e->node.pins++)
			cs->st.pinned++;
		evict_insert(cs->policy, &e->node);
		cs->st.nchunks++;
		cs->st.inserts++;
		cs->st.bytes_inserted += len;
	}
	pthread_cond_broadcast(&cs->cond);
	pthread_mutex_unlock(&cs->lock);
	if (ret)
		return ret;
	/* Invariant 2: in place and indexed (not yet durable) before anyone hears of it. */
	if (cs->hooks.announce)
		cs->hooks.announce(cs->hooks.arg, h);
	unpin_entry(cs, e);
	return 0;
}

/* ---- enumeration and counters ---- */

int chunkstore_foreach(struct chunkstore *cs,
		       int (*fn)(void *arg, const struct chunk_hash *h, uint32_t len), void *arg)
{
	struct cs_scan_rec *snap;
	size_t n = 0;
	int ret = 0;

	if (cs->reader)
		return -EOPNOTSUPP;
	/* Snapshot under the lock, call fn without it: fn may call back into the store. */
	pthread_mutex_lock(&cs->lock);
	snap = malloc((cs->nentries + 1) * sizeof(*snap));
	if (snap) {
		for (uint64_t i = 0; i < cs->nbuckets; i++) {
			for (struct cs_entry *e = cs->buckets[i]; e; e = e->chain) {
				if (e->state != ST_PRESENT)
					continue;
				snap[n].h = e->h;
				snap[n++].len = e->node.size;
			}
		}
	}
	pthread_mutex_unlock(&cs->lock);
	if (!snap)
		return -ENOMEM;
	for (size_t i = 0; i < n && !ret; i++)
		ret = fn(arg, &snap[i].h, snap[i].len);
	free(snap);
	return ret;
}

void chunkstore_get_stats(struct chunkstore *cs, struct chunkstore_stats *st)
{
	pthread_mutex_lock(&cs->lock);
	*st = cs->st;
	st->hits = __atomic_load_n(&cs->st.hits, __ATOMIC_RELAXED);
	st->misses = __atomic_load_n(&cs->st.misses, __ATOMIC_RELAXED);
	st->bytes_read = __atomic_load_n(&cs->st.bytes_read, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&cs->lock);
	if (cs->reader)
		st->pinned = fdcache_busy(&cs->fdc);
}
