/*
 * publish.c - `rackdisk image publish`: chunk, hash, compress and store an image.
 *
 * Invariants of a repository directory, as this file keeps them:
 *   1. A file under chunks/, manifests/ or tags/ is complete: it is written under tmp/,
 *      made durable and only then moved into place. Objects and manifests are named by
 *      their content and never replaced (link: an existing name is the same bytes); tags
 *      and tags/index are replaced by rename.
 *   2. Every chunk object a manifest lists is durable under chunks/ before the manifest is
 *      installed in manifests/ (objects: syncfs, link, syncfs; then the manifest).
 *   3. A tag is written after its manifest is durable, so a tag never points at a
 *      half-published image; tags/index is rewritten after the tag, from the tags/ listing.
 *      Both happen under an exclusive flock of tags/.lock, so that concurrent publishes
 *      each list the others' tags (without it, the last index written could miss a tag).
 *   4. A failed publish unlinks its temporary files and never writes a tag. It leaves the
 *      objects and the manifest it moved into chunks/ and manifests/: from that moment
 *      another publish may use them (it found them present, or installed the same bytes
 *      concurrently), and an orphan object is harmless where a missing one breaks an image.
 *   5. An object is written at most once per publish: the first worker to meet a hash
 *      claims it (claim set), later duplicates only record the hash.
 *   6. No manifest over MANIFEST_MAX_BYTES is written (every reader refuses one): an image
 *      whose manifest would pass it is refused before its input is read when even all-zero
 *      chunks would, else by the worker whose chunk holding data makes it pass, and then
 *      leaves nothing behind (invariant 4, before any object reached chunks/).
 *
 * Pipeline: the calling thread reads the input sequentially into a ring of slot buffers
 * (the input is read once); workers take filled slots, and per chunk: zero test, SHA-256,
 * claim, existence test, zstd, write to tmp/c.<run>.<index>. Links into chunks/ happen
 * after a single syncfs (much cheaper than an fsync per object), then a second syncfs makes
 * the names durable before the manifest is written.
 *
 * <run> is random, drawn once per publish: a pid is not unique enough for a name created
 * exclusively (a crashed publish leaves its files behind, and publishers in containers share
 * pid 1 and the repository), and a reused name would also let one publish install another's
 * temporary file.
 *
 * Temporary files of runs that died (killed, interrupted, crashed), in tmp/:
 *   7. A run holds an exclusive flock of tmp/run.<run>.lock from before it writes anything
 *      under tmp/ until it has removed its files; the lock file appears only once locked
 *      (created as .run.<run>.new, which no sweep touches, then renamed). So a lock file
 *      that can be locked belongs to a dead run, on any host sharing the repository's
 *      filesystem where flock is shared (local filesystems; NFS v4).
 *   8. A publish, before it reads its input, removes every file of such a dead run (c.,
 *      f., probe. with that run, then the lock file), holding that run's lock while it does.
 *      A live run's files are never removed: its lock is held. Files of no locked run
 *      (written by a publish older than the lock, or a "qcow2-" file left in the instant
 *      before source.c unlinks it) are removed after three days, as before; so are those
 *      of a run whose lock file cannot be locked for another reason than a holder (no lock
 *      manager: ENOLCK). The sweeper opens a lock file read-write (NFSv4 grants a write
 *      lock only then), and never opens what is not a regular file (a FIFO would block).
 */
#include "images/publish.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/log.h"
#include "common/util.h"
#include "images/chunkobj.h"
#include "images/manifest.h"
#include "images/repo.h"
#include "images/source.h"

#define PUBLISH_BUFFER_BYTES (256u * 1024 * 1024)

struct slot {
	uint8_t *buf;
	uint64_t idx;
	uint32_t len;
};

struct claim_set {
	struct chunk_hash *keys;
	uint8_t *used;
	size_t mask;
};

struct publish {
	const struct publish_opts *o;
	int level;
	const char *dir;
	char run[17]; /* this publish's part of temporary names, 16 random hex digits */
	int run_lock; /* fd holding the flock of tmp/run.<run>.lock (invariant 7), or -1 */
	struct manifest *m;
	uint8_t *created; /* per chunk index: this publish wrote its object (tmp or final) */
	uint8_t *renamed; /* per chunk index: the object left tmp/ (linked into chunks/) */

	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct slot *slots;
	size_t nslots;
	size_t *ring; /* filled slot ids, FIFO */
	size_t head, count;
	size_t *free_ids; /* free slot ids, stack */
	size_t nfree;
	int eof;
	int err; /* first error (negative errno); stops everyone */
	char errmsg[384];
	struct claim_set claims;

	uint64_t zero, nonzero, distinct, new_objects, present, bytes; /* under lock */
};

/* Claim set ------------------------------------------------------------------------- */

static int claims_init(struct claim_set *c, uint64_t nchunks)
{
	size_t cap = 16;

	while (cap < 2 * nchunks)
		cap *= 2;
	c->keys = malloc(cap * sizeof(*c->keys));
	c->used = calloc(cap, 1);
	c->mask = cap - 1;
	return c->keys && c->used ? 0 : -ENOMEM;
}

static void claims_free(struct claim_set *c)
{
	free(c->keys);
	free(c->used);
}

/* Inserts h; true when it was not there yet. Called under the publish lock. */
static bool claims_add(struct claim_set *c, const struct chunk_hash *h)
{
	size_t i;

	memcpy(&i, h->b, sizeof(i)); /* SHA-256 bits are already uniform */
	for (i &= c->mask; c->used[i]; i = (i + 1) & c->mask)
		if (hash_equal(&c->keys[i], h))
			return false;
	c->used[i] = 1;
	c->keys[i] = *h;
	return true;
}

/* Repository files ------------------------------------------------------------------ */

static void set_error(struct publish *p, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void set_error(struct publish *p, int err, const char *fmt, ...)
{
	va_list ap;

	pthread_mutex_lock(&p->lock);
	if (!p->err) {
		p->err = err;
		va_start(ap, fmt);
		vsnprintf(p->errmsg, sizeof(p->errmsg), fmt, ap);
		va_end(ap);
	}
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
}

static int path_fmt(char *buf, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* snprintf for a file name: -ENAMETOOLONG rather than a truncated name, which would be
 * another file. */
static int path_fmt(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, len, fmt, ap);
	va_end(ap);
	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

static int tmp_object_path(const struct publish *p, uint64_t idx, char *buf, size_t len)
{
	return path_fmt(buf, len, "%s/tmp/c.%s.%llu", p->dir, p->run, (unsigned long long)idx);
}

static int object_path(const struct publish *p, const struct chunk_hash *h, char *buf, size_t len)
{
	char rel[128];

	chunkobj_path(h, rel, sizeof(rel));
	return path_fmt(buf, len, "%s/%s", p->dir, rel);
}

/* The longest names publish makes under the repository fit in PATH_MAX (the object names,
 * chunks/<hh>/<hash>, are shorter than a manifest's). Checked before anything is written. */
static int check_path_room(const struct publish *p)
{
	char buf[PATH_MAX];
	int ret;

	ret = path_fmt(buf, sizeof(buf), "%s/manifests/%0*d.json", p->dir, HASH_HEX_LEN, 0);
	if (!ret)
		ret = path_fmt(buf, sizeof(buf), "%s/tags/%s", p->dir, p->o->name);
	if (!ret)
		ret = path_fmt(buf, sizeof(buf), "%s/tmp/c.%s.%llu", p->dir, p->run, ULLONG_MAX);
	if (!ret)
		ret = path_fmt(buf, sizeof(buf), "%s/tmp/.run.%s.new", p->dir, p->run);
	return ret;
}

/* Writes buf to path (created exclusively), optionally fsyncs it; unlinks it on error. */
static int write_new_file(const char *path, const void *buf, size_t len, bool sync)
{
	int fd, ret;

	fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	ret = pwrite_full(fd, buf, len, 0);
	if (!ret && sync && fsync(fd) < 0)
		ret = -errno;
	if (close(fd) < 0 && !ret)
		ret = -errno;
	if (ret)
		unlink(path);
	return ret;
}

/*
 * Moves tmp to dst without replacing an existing dst (invariant 1): link, then unlink the
 * temporary name. 0 also when dst exists: content-addressed, it holds the same bytes.
 */
static int install_new(const char *tmp, const char *dst)
{
	if (link(tmp, dst) < 0 && errno != EEXIST)
		return -errno;
	unlink(tmp);
	return 0;
}

/*
 * Invariant 1 for one small file: tmp/, fsync, move, fsync dir. A manifest (replace false)
 * is installed by install_new; a tag or the index replaces the old one by rename.
 */
static int install_file(const struct publish *p, const char *rel, const char *rel_dir,
			const void *buf, size_t len, bool replace)
{
	char tmp[PATH_MAX], dst[PATH_MAX], d[PATH_MAX];
	int ret;

	if (path_fmt(tmp, sizeof(tmp), "%s/tmp/f.%s", p->dir, p->run) ||
	    path_fmt(dst, sizeof(dst), "%s/%s", p->dir, rel) ||
	    path_fmt(d, sizeof(d), "%s/%s", p->dir, rel_dir))
		return -ENAMETOOLONG;
	ret = write_new_file(tmp, buf, len, true);
	if (ret)
		return ret;
	ret = replace ? (rename(tmp, dst) < 0 ? -errno : 0) : install_new(tmp, dst);
	if (ret) {
		unlink(tmp);
		return ret;
	}
	return fsync_dir(d);
}

static bool file_exists(const char *path)
{
	return access(path, F_OK) == 0;
}

/*
 * The error for an image whose manifest would pass MANIFEST_MAX_BYTES with `nonzero` chunks
 * holding data (so far): names the limit and the smallest chunk size at which the manifest
 * fits whatever the image holds (invariant 6).
 */
static void manifest_limit_error(uint64_t size, uint32_t cs, uint64_t nonzero, char *buf,
				 size_t len)
{
	char s1[32], s2[32], data[64], hint[96];
	uint32_t big = cs;

	if (nonzero)
		snprintf(data, sizeof(data), "%llu of them holding data so far",
			 (unsigned long long)nonzero);
	else
		snprintf(data, sizeof(data), "even if all were zero");
	do
		big *= 2;
	while (big <= CHUNK_SIZE_MAX &&
	       manifest_text_len(size, big, manifest_nchunks(size, big)) > MANIFEST_MAX_BYTES);
	if (big <= CHUNK_SIZE_MAX)
		snprintf(hint, sizeof(hint), "publish it with --chunk-size %u%s or larger",
			 (unsigned)(big >= MiB ? big / MiB : big / KiB), big >= MiB ? "M" : "K");
	else if (cs < CHUNK_SIZE_MAX)
		snprintf(hint, sizeof(hint), "only --chunk-size 16M, the largest, may fit it");
	else
		snprintf(hint, sizeof(hint), "it is too large to publish");
	snprintf(buf, len,
		 "image of %s: at chunk size %s its manifest (%llu chunks, %s) would pass the "
		 "%u-byte limit that readers accept; %s",
		 format_size(size, s1, sizeof(s1)), format_size(cs, s2, sizeof(s2)),
		 (unsigned long long)manifest_nchunks(size, cs), data, MANIFEST_MAX_BYTES,
		 hint);
}

/* Workers --------------------------------------------------------------------------- */

static int store_chunk(struct publish *p, const struct slot *s, uint8_t *zbuf, size_t zcap)
{
	const struct chunk_hash *h = &p->m->hashes[s->idx];
	char path[PATH_MAX];
	bool first;
	long n;
	int ret;

	pthread_mutex_lock(&p->lock);
	first = claims_add(&p->claims, h);
	if (first)
		p->distinct++;
	pthread_mutex_unlock(&p->lock);
	if (!first)
		return 0;
	ret = object_path(p, h, path, sizeof(path));
	if (ret)
		return ret;
	if (file_exists(path)) {
		pthread_mutex_lock(&p->lock);
		p->present++;
		pthread_mutex_unlock(&p->lock);
		return 0;
	}
	n = chunkobj_encode(s->buf, s->len, zbuf, zcap, p->level);
	if (n < 0)
		return (int)n;
	ret = tmp_object_path(p, s->idx, path, sizeof(path));
	if (!ret)
		ret = write_new_file(path, zbuf, (size_t)n, false);
	if (ret)
		return ret;
	p->created[s->idx] = 1; /* each index belongs to one worker: no lock needed */
	pthread_mutex_lock(&p->lock);
	p->new_objects++;
	p->bytes += (uint64_t)n;
	pthread_mutex_unlock(&p->lock);
	return 0;
}

static void process(struct publish *p, const struct slot *s, uint8_t *zbuf, size_t zcap)
{
	char msg[384];
	uint64_t nonzero;
	int ret;

	if (buf_is_zero(s->buf, s->len)) {
		pthread_mutex_lock(&p->lock);
		p->zero++;
		pthread_mutex_unlock(&p->lock);
		return; /* m->zero[] starts all ones */
	}
	pthread_mutex_lock(&p->lock);
	nonzero = ++p->nonzero;
	pthread_mutex_unlock(&p->lock);
	/* Invariant 6: the chunks not seen yet count as zero, so this only refuses for sure. */
	if (manifest_text_len(p->m->size, p->m->chunk_size, nonzero) > MANIFEST_MAX_BYTES) {
		manifest_limit_error(p->m->size, p->m->chunk_size, nonzero, msg, sizeof(msg));
		set_error(p, -E2BIG, "%s", msg);
		return;
	}
	hash_compute(s->buf, s->len, &p->m->hashes[s->idx]);
	p->m->zero[s->idx] = 0;
	ret = store_chunk(p, s, zbuf, zcap);
	if (ret)
		set_error(p, ret, "writing chunk objects: %s", strerror(-ret));
}

static void *worker(void *arg)
{
	struct publish *p = arg;
	size_t zcap = chunkobj_bound(p->m->chunk_size);
	uint8_t *zbuf = malloc(zcap);

	if (!zbuf) {
		set_error(p, -ENOMEM, "out of memory");
		return NULL;
	}
	for (;;) {
		size_t id;

		pthread_mutex_lock(&p->lock);
		while (!p->count && !p->eof && !p->err)
			pthread_cond_wait(&p->cond, &p->lock);
		if (p->err || !p->count) {
			pthread_mutex_unlock(&p->lock);
			break;
		}
		id = p->ring[p->head];
		p->head = (p->head + 1) % p->nslots;
		p->count--;
		pthread_mutex_unlock(&p->lock);

		process(p, &p->slots[id], zbuf, zcap);

		pthread_mutex_lock(&p->lock);
		p->free_ids[p->nfree++] = id;
		pthread_cond_broadcast(&p->cond);
		pthread_mutex_unlock(&p->lock);
	}
	free(zbuf);
	return NULL;
}

/* The reader: the calling thread feeds slots in input order. */
static void read_input(struct publish *p, struct image_source *src)
{
	for (uint64_t i = 0; i < p->m->nchunks; i++) {
		struct slot *s;
		size_t id;
		int ret;

		if (p->o->stop && *p->o->stop) {
			set_error(p, -EINTR, "interrupted");
			return;
		}

		pthread_mutex_lock(&p->lock);
		while (!p->nfree && !p->err)
			pthread_cond_wait(&p->cond, &p->lock);
		if (p->err) {
			pthread_mutex_unlock(&p->lock);
			return;
		}
		id = p->free_ids[--p->nfree];
		pthread_mutex_unlock(&p->lock);

		s = &p->slots[id];
		s->idx = i;
		s->len = manifest_chunk_len(p->m, i);
		ret = source_read(src, s->buf, s->len);
		if (ret == -ENODATA) {
			set_error(p, ret,
				  "reading input: it ended early, short of its %llu bytes (it "
				  "shrank while being published)",
				  (unsigned long long)p->m->size);
			return;
		}
		if (ret) {
			set_error(p, ret, "reading input at byte %llu: %s",
				  (unsigned long long)(i << p->m->chunk_shift), strerror(-ret));
			return;
		}
		pthread_mutex_lock(&p->lock);
		p->ring[(p->head + p->count) % p->nslots] = id;
		p->count++;
		pthread_cond_signal(&p->cond);
		pthread_mutex_unlock(&p->lock);
	}
}

static int run_pipeline(struct publish *p, struct image_source *src, int nworkers)
{
	/* Bound the slot buffers (PUBLISH_BUFFER_BYTES): big chunks on many cores would
	 * otherwise pin gigabytes. Two slots per worker keep the reader ahead of them. */
	size_t max_slots = MAX(4, PUBLISH_BUFFER_BYTES / p->m->chunk_size);
	pthread_t *tids;
	int started = 0, ret = 0;

	nworkers = (int)MIN((size_t)nworkers, max_slots - 1);
	tids = calloc((size_t)nworkers, sizeof(*tids));
	p->nslots = MIN((size_t)nworkers * 2 + 2, max_slots);
	p->slots = calloc(p->nslots, sizeof(*p->slots));
	p->ring = calloc(p->nslots, sizeof(*p->ring));
	p->free_ids = calloc(p->nslots, sizeof(*p->free_ids));
	if (!tids || !p->slots || !p->ring || !p->free_ids) {
		ret = -ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < p->nslots; i++) {
		p->slots[i].buf = malloc(p->m->chunk_size);
		if (!p->slots[i].buf) {
			ret = -ENOMEM;
			goto out;
		}
		p->free_ids[p->nfree++] = i;
	}
	for (; started < nworkers; started++) {
		ret = -pthread_create(&tids[started], NULL, worker, p);
		if (ret) {
			set_error(p, ret, "starting workers: %s", strerror(-ret));
			break;
		}
	}
	if (!ret)
		read_input(p, src);
	pthread_mutex_lock(&p->lock);
	p->eof = 1;
	pthread_cond_broadcast(&p->cond);
	pthread_mutex_unlock(&p->lock);
	for (int i = 0; i < started; i++)
		pthread_join(tids[i], NULL);
	ret = p->err;
out:
	if (ret == -ENOMEM && !p->err)
		snprintf(p->errmsg, sizeof(p->errmsg), "out of memory");
	for (size_t i = 0; p->slots && i < p->nslots; i++)
		free(p->slots[i].buf);
	free(p->slots);
	free(p->ring);
	free(p->free_ids);
	free(tids);
	return ret;
}

/* Commit ---------------------------------------------------------------------------- */

static int sync_repo(const char *dir)
{
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC), ret = 0;

	if (fd < 0)
		return -errno;
	if (syncfs(fd) < 0)
		ret = -errno;
	close(fd);
	return ret;
}

/* Invariant 2: data durable, then names, then durable names. */
static int commit_objects(struct publish *p)
{
	char tmp[PATH_MAX], dst[PATH_MAX], hh[PATH_MAX];
	int ret = sync_repo(p->dir);

	for (uint64_t i = 0; !ret && i < p->m->nchunks; i++) {
		if (!p->created[i])
			continue;
		if (tmp_object_path(p, i, tmp, sizeof(tmp)) ||
		    object_path(p, &p->m->hashes[i], dst, sizeof(dst))) {
			ret = -ENAMETOOLONG;
			break;
		}
		/* Present by now means another publish stored it meanwhile: the same bytes. */
		ret = install_new(tmp, dst);
		if (ret == -ENOENT) {
			/* The object exists under tmp/, so ENOENT means a new <hh>/ directory. */
			snprintf(hh, sizeof(hh), "%s", dst);
			*strrchr(hh, '/') = '\0';
			ret = mkdir(hh, 0755) < 0 && errno != EEXIST ? -errno : 0;
			if (!ret)
				ret = install_new(tmp, dst);
		}
		if (ret)
			break;
		p->renamed[i] = 1;
	}
	if (!ret)
		ret = sync_repo(p->dir);
	return ret;
}

/* Invariant 4: remove this publish's temporary objects, never an object in chunks/. */
static void rollback_objects(struct publish *p)
{
	char path[PATH_MAX];

	for (uint64_t i = 0; i < p->m->nchunks; i++) {
		if (!p->created[i] || p->renamed[i])
			continue;
		if (!tmp_object_path(p, i, path, sizeof(path)))
			unlink(path);
	}
}

static int index_add(void *arg, const char *name)
{
	struct {
		char *p;
		size_t len, cap;
	} *b = arg;
	size_t n = strlen(name);

	if (b->len + n + 2 > b->cap) {
		size_t cap = (b->cap ? b->cap * 2 : 4096) + n;
		char *q = realloc(b->p, cap);

		if (!q)
			return -ENOMEM;
		b->p = q;
		b->cap = cap;
	}
	memcpy(b->p + b->len, name, n);
	b->len += n;
	b->p[b->len++] = '\n';
	b->p[b->len] = '\0';
	return 0;
}

/* tags/index, recomputed from the tags/ directory; rewritten only when it changes. */
static int write_index(struct publish *p)
{
	struct {
		char *p;
		size_t len, cap;
	} b = {0};
	char path[PATH_MAX], *old = NULL;
	struct repo *r = NULL;
	size_t oldlen = 0;
	int ret;

	ret = repo_open(p->dir, &r);
	if (ret)
		return ret;
	ret = repo_list_tags(r, index_add, &b);
	if (ret)
		goto out;
	ret = path_fmt(path, sizeof(path), "%s/tags/" REPO_TAGS_INDEX, p->dir);
	if (ret)
		goto out;
	if (read_file(path, 64 * MiB, &old, &oldlen) == 0 && oldlen == b.len &&
	    (b.len == 0 || !memcmp(old, b.p, b.len)))
		goto out;
	ret = install_file(p, "tags/" REPO_TAGS_INDEX, "tags", b.p ? b.p : "", b.len, true);
	if (!ret)
		p->bytes += b.len;
out:
	free(old);
	free(b.p);
	repo_close(r);
	return ret;
}

/*
 * Takes the repository's tag lock (invariant 3): an fd holding an exclusive flock of
 * tags/.lock, released by close. A dot name is not a tag name: listings skip it.
 */
static int lock_tags(const struct publish *p)
{
	char path[PATH_MAX];
	int fd, ret;

	ret = path_fmt(path, sizeof(path), "%s/tags/.lock", p->dir);
	if (ret)
		return ret;
	fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	while (flock(fd, LOCK_EX) < 0) {
		if (errno != EINTR) {
			ret = -errno;
			close(fd);
			return ret;
		}
	}
	return fd;
}

/* Manifest, then tag, then index (invariant 3). */
static int commit_image(struct publish *p, struct publish_result *res, char *err, size_t errlen)
{
	char hex[HASH_HEX_LEN + 1], rel[256], path[PATH_MAX], tagline[HASH_HEX_LEN + 2];
	char *text = NULL, *old = NULL;
	size_t len, oldlen;
	int ret, lock = -1;

	ret = commit_objects(p);
	if (ret) {
		snprintf(err, errlen, "writing chunk objects: %s", strerror(-ret));
		goto fail;
	}
	ret = manifest_serialize(p->m, &text, &len);
	if (ret == -E2BIG) /* the workers' check makes this unreachable: invariant 6 */
		manifest_limit_error(p->m->size, p->m->chunk_size, p->nonzero, err, errlen);
	else if (ret)
		snprintf(err, errlen, "manifest: %s", strerror(-ret));
	if (ret)
		goto fail;
	hash_to_hex(&p->m->id, hex);
	snprintf(rel, sizeof(rel), "manifests/%s.json", hex);
	ret = path_fmt(path, sizeof(path), "%s/%s", p->dir, rel);
	if (!ret && !file_exists(path)) {
		ret = install_file(p, rel, "manifests", text, len, false);
		if (ret) {
			snprintf(err, errlen, "writing manifest: %s", strerror(-ret));
			goto fail;
		}
		p->bytes += len;
	}
	snprintf(rel, sizeof(rel), "tags/%s", p->o->name); /* a valid name fits */
	if (!ret)
		ret = path_fmt(path, sizeof(path), "%s/%s", p->dir, rel);
	if (ret) {
		snprintf(err, errlen, "repository: %s", strerror(-ret));
		goto fail;
	}
	lock = lock_tags(p);
	if (lock < 0) {
		ret = lock;
		snprintf(err, errlen, "locking tags/.lock: %s", strerror(-ret));
		goto fail;
	}
	snprintf(tagline, sizeof(tagline), "%s\n", hex);
	if (read_file(path, 4096, &old, &oldlen) || strcmp(old, tagline)) {
		ret = install_file(p, rel, "tags", tagline, strlen(tagline), true);
		if (ret) {
			snprintf(err, errlen, "writing tag: %s", strerror(-ret));
			goto fail;
		}
		p->bytes += strlen(tagline);
		res->tag_changed = 1;
	}
	/* The image is published now; a stale index only affects listings over HTTP. */
	ret = write_index(p);
	if (ret) {
		res->index_stale = 1;
		snprintf(err, errlen, "image published, but tags/index not updated: %s",
			 strerror(-ret));
	}
	goto out;
fail:
	rollback_objects(p); /* and the manifest stays, like the objects: invariant 4 */
out:
	if (lock >= 0)
		close(lock);
	free(old);
	free(text);
	return ret;
}

/* Entry ----------------------------------------------------------------------------- */

const char *publish_printable(const char *s, char *buf, size_t len)
{
	static const char digits[] = "0123456789abcdef";
	size_t o = 0;

	/* Error messages are one line: user input is echoed with control bytes as \xNN. */
	for (; *s && o + 5 < len; s++) {
		unsigned char c = (unsigned char)*s;

		if (c < 0x20 || c == 0x7f) {
			buf[o++] = '\\';
			buf[o++] = 'x';
			buf[o++] = digits[c >> 4];
			buf[o++] = digits[c & 15];
		} else {
			buf[o++] = (char)c;
		}
	}
	buf[o] = '\0';
	return buf;
}

int publish_check_name(const char *name, char *err, size_t errlen)
{
	char q[PATH_MAX];

	if (!repo_tag_name_valid(name)) {
		snprintf(err, errlen,
			 "name '%s': invalid (use 1-128 of A-Z a-z 0-9 . _ -, not "
			 "starting with . or -; \"index\" is reserved)",
			 publish_printable(name ? name : "", q, sizeof(q)));
		return -EINVAL;
	}
	if (repo_name_is_id(name)) {
		snprintf(err, errlen,
			 "name '%s': 64 hex digits spell an image id, and such a tag would hide "
			 "the image with that id; choose another name",
			 name);
		return -EINVAL;
	}
	return 0;
}

/* A temporary file this old is a crashed publish's: a live one does not run for days. */
#define STALE_TMP_SECONDS (3 * 24 * 3600)

#define RUN_NAME_LEN 16

/*
 * The run a temporary name belongs to (c.<run>.<idx>, f.<run>, probe.<run>,
 * run.<run>.lock) copied into run, or false for another name.
 */
static bool tmp_name_run(const char *name, char run[RUN_NAME_LEN + 1])
{
	static const char *prefixes[] = {"c.", "f.", "probe.", "run."};
	const char *p = NULL;

	for (size_t i = 0; !p && i < ARRAY_SIZE(prefixes); i++)
		if (!strncmp(name, prefixes[i], strlen(prefixes[i])))
			p = name + strlen(prefixes[i]);
	if (!p || strspn(p, "0123456789abcdef") != RUN_NAME_LEN ||
	    (p[RUN_NAME_LEN] != '\0' && p[RUN_NAME_LEN] != '.'))
		return false;
	memcpy(run, p, RUN_NAME_LEN);
	run[RUN_NAME_LEN] = '\0';
	return true;
}

/* Removes every file of run from tmp/ (dfd), its lock file last (invariant 8). */
static void remove_run_files(int dfd, const char *run)
{
	char other[RUN_NAME_LEN + 1], lockname[64];
	struct dirent *de;
	DIR *d;
	/* A descriptor of its own: a dup would share the caller's directory offset. */
	int fd = openat(dfd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);

	if (fd < 0 || !(d = fdopendir(fd))) {
		if (fd >= 0)
			close(fd);
		return;
	}
	snprintf(lockname, sizeof(lockname), "run.%s.lock", run);
	while ((de = readdir(d)) != NULL)
		if (tmp_name_run(de->d_name, other) && !strcmp(other, run) &&
		    strcmp(de->d_name, lockname))
			unlinkat(dfd, de->d_name, 0);
	closedir(d);
	unlinkat(dfd, lockname, 0);
}

enum run_state { RUN_UNKNOWN, RUN_ALIVE, RUN_DEAD };

/* One sweep of tmp/: the directory, and whether a lock that could not be judged was
 * reported yet (once per sweep, not once per file). */
struct sweep {
	const char *dir; /* the repository, for messages */
	int dfd;	 /* tmp/ */
	bool lock_warned;
};

/*
 * Opens tmp/<lockname>, a run's lock file, for sweep_run_if_dead; -errno if there is none.
 * Read-write: NFSv4 grants an exclusive lock only on a file open for writing (EBADF
 * otherwise); read-only where we may not write it (another user's run), which a local
 * filesystem locks all the same. Only a regular file is opened, and with O_NONBLOCK: the
 * open of a FIFO waits for a writer, forever. Anything else under that name is no run's
 * lock (publish creates regular files only) and is removed, so that it is reported once.
 */
static int open_run_lock(struct sweep *sw, const char *lockname)
{
	const int flags = O_NONBLOCK | O_NOCTTY | O_NOFOLLOW | O_CLOEXEC;
	struct stat st;
	int fd, ret;

	if (fstatat(sw->dfd, lockname, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return -errno;
	if (S_ISREG(st.st_mode)) {
		fd = openat(sw->dfd, lockname, O_RDWR | flags);
		if (fd < 0 && (errno == EACCES || errno == EPERM || errno == EROFS))
			fd = openat(sw->dfd, lockname, O_RDONLY | flags);
		if (fd < 0)
			return -errno;
		ret = fstat(fd, &st) < 0 ? -errno : 0;
		if (!ret && S_ISREG(st.st_mode))
			return fd;
		close(fd);
		if (ret)
			return ret;
		/* replaced by something else since fstatat */
	}
	ret = unlinkat(sw->dfd, lockname, 0);
	log_warn("%s/tmp/%s: not a regular file, hence no publish's lock: %s", sw->dir, lockname,
		 ret ? "ignored (cannot remove it)" : "removed");
	return -EINVAL;
}

/*
 * Whether run is alive (its lock file is locked) or dead (it is not: then every file of the
 * run is removed here, under its lock), or unknown (no lock file, or one that cannot be
 * locked for another reason than a holder, say ENOLCK: the age rule decides).
 */
static enum run_state sweep_run_if_dead(struct sweep *sw, const char *run)
{
	char lockname[64];
	int fd, err;

	snprintf(lockname, sizeof(lockname), "run.%s.lock", run);
	fd = open_run_lock(sw, lockname);
	if (fd < 0)
		return RUN_UNKNOWN;
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		err = errno;
		close(fd);
		if (err == EWOULDBLOCK)
			return RUN_ALIVE;
		if (!sw->lock_warned)
			log_warn("%s/tmp/%s: cannot lock it (%s): files of runs not known to be "
				 "dead are removed after three days",
				 sw->dir, lockname, strerror(err));
		sw->lock_warned = true;
		return RUN_UNKNOWN;
	}
	remove_run_files(sw->dfd, run);
	close(fd);
	return RUN_DEAD;
}

/* Removes what dead publishes left in tmp/ (it can be a whole image's objects). */
static void sweep_stale_tmp(const struct publish *p)
{
	char path[PATH_MAX], run[RUN_NAME_LEN + 1];
	time_t now = time(NULL);
	struct sweep sw = {.dir = p->dir};
	struct dirent *de;
	struct stat st;
	DIR *d;

	if (path_fmt(path, sizeof(path), "%s/tmp", p->dir) || !(d = opendir(path)))
		return;
	sw.dfd = dirfd(d);
	/* Invariant 8: runs whose lock nobody holds, at once. A removal in this loop may
	 * hide later entries from readdir; the next publish's sweep finds those. */
	while ((de = readdir(d)) != NULL) {
		if (!strncmp(de->d_name, "run.", 4) && tmp_name_run(de->d_name, run) &&
		    strcmp(run, p->run))
			sweep_run_if_dead(&sw, run);
	}
	rewinddir(d);
	while ((de = readdir(d)) != NULL) {
		bool has_run = tmp_name_run(de->d_name, run);

		if (de->d_name[0] == '.' || (has_run && !strcmp(run, p->run)) ||
		    fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    !S_ISREG(st.st_mode) || now - st.st_mtime < STALE_TMP_SECONDS)
			continue;
		/* Days old, but of a run that holds its lock: alive, it stays. */
		if (has_run && sweep_run_if_dead(&sw, run) != RUN_UNKNOWN)
			continue;
		unlinkat(dirfd(d), de->d_name, 0);
	}
	closedir(d);
}

/*
 * Invariant 7: creates tmp/run.<run>.lock already locked (under a dot name that sweeps
 * skip, renamed once locked), and keeps its fd in p->run_lock.
 */
static int take_run_lock(struct publish *p)
{
	char tmp[PATH_MAX], path[PATH_MAX];
	int fd, ret;

	if (path_fmt(tmp, sizeof(tmp), "%s/tmp/.run.%s.new", p->dir, p->run) ||
	    path_fmt(path, sizeof(path), "%s/tmp/run.%s.lock", p->dir, p->run))
		return -ENAMETOOLONG;
	fd = open(tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	if (flock(fd, LOCK_EX | LOCK_NB) < 0 || rename(tmp, path) < 0) {
		ret = -errno;
		unlink(tmp);
		close(fd);
		return ret;
	}
	p->run_lock = fd;
	return 0;
}

/* The end of a run: its lock file goes, then the lock (invariant 7). */
static void release_run_lock(struct publish *p)
{
	char path[PATH_MAX];

	if (p->run_lock < 0)
		return;
	if (!path_fmt(path, sizeof(path), "%s/tmp/run.%s.lock", p->dir, p->run))
		unlink(path);
	close(p->run_lock);
	p->run_lock = -1;
}

static int prepare_repo(struct publish *p, char *err, size_t errlen)
{
	static const char *sub[] = {"chunks", "manifests", "tags", "tmp"};
	const char *dir = p->dir;
	char path[PATH_MAX];
	int ret;

	if (check_path_room(p)) {
		snprintf(err, errlen, "repository: path too long for the names under it");
		return -ENAMETOOLONG;
	}
	ret = mkdir_p(dir, 0755);
	for (size_t i = 0; !ret && i < ARRAY_SIZE(sub); i++) {
		ret = path_fmt(path, sizeof(path), "%s/%s", dir, sub[i]);
		if (!ret)
			ret = mkdir_p(path, 0755);
	}
	/* Existing directories on a read-only mount pass mkdir: the lock file is the probe. */
	if (!ret)
		ret = take_run_lock(p);
	if (ret)
		snprintf(err, errlen, "repository %s: cannot write: %s",
			 publish_printable(dir, path, sizeof(path)), strerror(-ret));
	else
		sweep_stale_tmp(p);
	return ret;
}

/* Draws p->run: random, so that no other run, even a crashed one, used its names. */
static int pick_run_name(struct publish *p)
{
	static const char digits[] = "0123456789abcdef";
	uint8_t r[8];

	if (getrandom(r, sizeof(r), 0) != (ssize_t)sizeof(r))
		return -errno;
	for (size_t i = 0; i < sizeof(r); i++) {
		p->run[2 * i] = digits[r[i] >> 4];
		p->run[2 * i + 1] = digits[r[i] & 15];
	}
	p->run[2 * sizeof(r)] = '\0';
	return 0;
}

static int nproc(void)
{
	long n = sysconf(_SC_NPROCESSORS_ONLN);

	return n < 1 ? 1 : n > 64 ? 64 : (int)n;
}

int publish_image(const struct publish_opts *o, struct publish_result *res, char *err,
		  size_t errlen)
{
	struct image_source src = {.fd = -1};
	struct publish p = {.o = o, .dir = o->repo_dir, .run_lock = -1};
	uint32_t cs = o->chunk_size ? o->chunk_size : CHUNK_SIZE_DEFAULT;
	char tmpdir[PATH_MAX], why[384] = "", q[PATH_MAX];
	uint64_t t0 = now_ns();
	int ret;

	memset(res, 0, sizeof(*res));
	if (errlen)
		err[0] = '\0';
	pthread_mutex_init(&p.lock, NULL);
	pthread_cond_init(&p.cond, NULL);
	p.level = o->level ? o->level : PUBLISH_ZSTD_LEVEL;
	ret = publish_check_name(o->name, err, errlen);
	if (ret)
		goto out;
	if (!manifest_chunk_size_valid(cs)) {
		snprintf(err, errlen, "chunk size %u: not a power of two from 64K to 16M", cs);
		ret = -EINVAL;
		goto out;
	}
	/* Refuse a missing or unusable source before the repository is touched; what is
	 * published is decided by source_open alone (a qcow2 is checked there). */
	ret = source_check(o->src, why, sizeof(why));
	if (ret) {
		snprintf(err, errlen, "%s: %s", publish_printable(o->src, q, sizeof(q)), why);
		goto out;
	}
	ret = pick_run_name(&p);
	if (ret) {
		snprintf(err, errlen, "random temporary names: %s", strerror(-ret));
		goto out;
	}
	ret = prepare_repo(&p, err, errlen);
	if (ret)
		goto out;
	snprintf(tmpdir, sizeof(tmpdir), "%s/tmp", o->repo_dir); /* fits: check_path_room */
	ret = source_open(o->src, tmpdir, &src, why, sizeof(why));
	if (ret) {
		snprintf(err, errlen, "%s: %s", publish_printable(o->src, q, sizeof(q)), why);
		goto out;
	}
	if (src.size == 0) {
		snprintf(err, errlen, "%s: empty image", publish_printable(o->src, q, sizeof(q)));
		ret = -EINVAL;
		goto out;
	}
	if (manifest_text_len(src.size, cs, 0) > MANIFEST_MAX_BYTES) { /* invariant 6 */
		manifest_limit_error(src.size, cs, 0, err, errlen);
		ret = -E2BIG;
		goto out;
	}
	ret = manifest_new(src.size, cs, &p.m);
	if (!ret)
		ret = claims_init(&p.claims, p.m->nchunks);
	p.created = calloc(p.m ? p.m->nchunks + 1 : 1, 1);
	p.renamed = calloc(p.m ? p.m->nchunks + 1 : 1, 1);
	if (ret || !p.created || !p.renamed) {
		snprintf(err, errlen, "out of memory");
		ret = -ENOMEM;
		goto out;
	}
	ret = run_pipeline(&p, &src, o->workers > 0 ? o->workers : nproc());
	if (!ret && o->stop && *o->stop) /* the last chunk was read: stop before the commit */
		ret = set_err(p.errmsg, sizeof(p.errmsg), -EINTR, "interrupted");
	if (ret) {
		snprintf(err, errlen, "%s", p.errmsg);
		rollback_objects(&p);
		goto out;
	}
	ret = commit_image(&p, res, err, errlen);
	if (ret && !res->index_stale)
		goto out;
	res->id = p.m->id;
	res->size = p.m->size;
	res->chunk_size = cs;
	res->chunks = p.m->nchunks;
	res->zero = p.zero;
	res->distinct = p.distinct;
	res->new_objects = p.new_objects;
	res->present = p.present;
	res->bytes_written = p.bytes;
	res->qcow2 = src.qcow2;
	res->elapsed_ns = now_ns() - t0;
out:
	source_close(&src);
	release_run_lock(&p); /* after every temporary file of the run is gone */
	claims_free(&p.claims);
	free(p.created);
	free(p.renamed);
	manifest_free(p.m);
	pthread_cond_destroy(&p.cond);
	pthread_mutex_destroy(&p.lock);
	return ret;
}
