/*
 * chunkstore_fdcache.c - open descriptors of chunk files, shared by every reference to a
 * chunk and kept open (up to FDCACHE_MAX idle ones, least recently used closed first) so
 * the hot read path of a reader-mode store - the tgt module - does not open() per I/O.
 *
 * Chunk files are immutable and only ever replaced by a file with the same bytes, so a
 * cached descriptor never serves wrong data, even after the owner has unlinked the file;
 * the owner drops a chunk's descriptor before it unlinks it. A reader (another process)
 * is not told: it serves on from a descriptor of an evicted file, whose blocks stay
 * allocated while it is open, so at most once per FDCACHE_SWEEP_NS a get closes the idle
 * descriptors whose file has no name left (as does fdcache_sweep, which a reader with no
 * gets to make calls on a timer). Without that, each LU's reader could hold up to
 * FDCACHE_MAX evicted chunks' space beyond the store's capacity. open() and close() run
 * outside the lock.
 */
#include "cache/chunkstore_int.h"
#include "common/util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static uint64_t fdc_key(const struct chunk_hash *h)
{
	uint64_t k;

	memcpy(&k, h->b, sizeof(k));
	return k;
}

void fdcache_init(struct fdcache *c)
{
	memset(c, 0, sizeof(*c));
	c->chunks_fd = -1;
	pthread_mutex_init(&c->lock, NULL);
}

uint64_t fdcache_busy(struct fdcache *c)
{
	uint64_t n;

	pthread_mutex_lock(&c->lock);
	n = c->busy;
	pthread_mutex_unlock(&c->lock);
	return n;
}

static unsigned fdc_bucket(const struct chunk_hash *h)
{
	return (unsigned)(fdc_key(h) & (FDCACHE_BUCKETS - 1));
}

static void lru_unlink(struct fdcache *c, struct fd_slot *s)
{
	if (s->lru_prev)
		s->lru_prev->lru_next = s->lru_next;
	else if (c->lru_head == s)
		c->lru_head = s->lru_next;
	if (s->lru_next)
		s->lru_next->lru_prev = s->lru_prev;
	else if (c->lru_tail == s)
		c->lru_tail = s->lru_prev;
	s->lru_prev = s->lru_next = NULL;
}

static void fdc_table_del(struct fdcache *c, struct fd_slot *s)
{
	struct fd_slot **p = &c->tab[fdc_bucket(&s->h)];

	while (*p && *p != s)
		p = &(*p)->chain;
	if (*p)
		*p = s->chain;
	c->count--;
}

static void slot_close(struct fd_slot *s)
{
	if (s->fd >= 0)
		close(s->fd);
	if (s->dfd >= 0)
		close(s->dfd);
	free(s);
}

/* Takes idle slots beyond the limit out of the table; the caller closes them unlocked. */
static struct fd_slot *fdc_trim(struct fdcache *c)
{
	struct fd_slot *out = NULL;

	while (c->count > FDCACHE_MAX && c->lru_tail) {
		struct fd_slot *s = c->lru_tail;

		lru_unlink(c, s);
		fdc_table_del(c, s);
		s->chain = out;
		out = s;
	}
	return out;
}

static void close_list(struct fd_slot *s)
{
	while (s) {
		struct fd_slot *next = s->chain;
		slot_close(s);
		s = next;
	}
}

/* Takes idle slots whose file has been unlinked out of the table, if a sweep is due; the
 * caller closes them unlocked. fstat of an open descriptor is cheap next to the I/O. */
static struct fd_slot *fdc_sweep(struct fdcache *c)
{
	struct fd_slot *out = NULL, *s, *prev;
	uint64_t now;

	if (!c->sweep_unlinked || (now = now_ns()) < c->next_sweep_ns)
		return NULL;
	c->next_sweep_ns = now + FDCACHE_SWEEP_NS;
	for (s = c->lru_tail; s; s = prev) {
		struct stat st;

		prev = s->lru_prev;
		if (fstat(s->fd, &st) < 0 || st.st_nlink > 0)
			continue;
		lru_unlink(c, s);
		fdc_table_del(c, s);
		s->chain = out;
		out = s;
		c->swept++;
	}
	return out;
}

void fdcache_sweep(struct fdcache *c)
{
	struct fd_slot *trimmed;

	pthread_mutex_lock(&c->lock);
	trimmed = fdc_sweep(c);
	pthread_mutex_unlock(&c->lock);
	close_list(trimmed);
}

static struct fd_slot *fdc_lookup(struct fdcache *c, const struct chunk_hash *h)
{
	struct fd_slot *s = c->tab[fdc_bucket(h)];

	while (s && !hash_equal(&s->h, h))
		s = s->chain;
	return s;
}

int fdcache_get(struct fdcache *c, const struct chunk_hash *h, struct fd_slot **out)
{
	char rel[HASH_HEX_LEN + 8], hex[HASH_HEX_LEN + 1];
	struct fd_slot *s, *ns, *trimmed;
	struct stat stbuf;
	unsigned hh;

	pthread_mutex_lock(&c->lock);
	trimmed = fdc_sweep(c);
	s = fdc_lookup(c, h);
	if (s) {
		if (!s->refs++)
			lru_unlink(c, s);
		if (s->refs == 1)
			c->busy++;
		pthread_mutex_unlock(&c->lock);
		close_list(trimmed);
		*out = s;
		return 0;
	}
	pthread_mutex_unlock(&c->lock);
	close_list(trimmed);

	ns = calloc(1, sizeof(*ns));
	if (!ns)
		return -ENOMEM;
	hash_to_hex(h, hex);
	hh = h->b[0];
	snprintf(rel, sizeof(rel), "%02x/%s", hh, hex);
	ns->h = *h;
	ns->dfd = -1;
	ns->fd = openat(c->chunks_fd, rel, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (ns->fd < 0 || fstat(ns->fd, &stbuf) < 0) {
		int err = -errno;

		slot_close(ns);
		return err;
	}
	if (!S_ISREG(stbuf.st_mode) || stbuf.st_size <= 0 || stbuf.st_size > CHUNKSTORE_MAX_CHUNK) {
		slot_close(ns);
		return -ENOENT; /* not a chunk the owner would have published */
	}
	ns->len = (uint32_t)stbuf.st_size;

	pthread_mutex_lock(&c->lock);
	s = fdc_lookup(c, h);
	if (s) { /* another thread opened it meanwhile: use that one */
		if (!s->refs++)
			lru_unlink(c, s);
	} else {
		s = ns;
		ns = NULL;
		s->refs = 1;
		s->chain = c->tab[fdc_bucket(h)];
		c->tab[fdc_bucket(h)] = s;
		c->count++;
	}
	if (s->refs == 1)
		c->busy++;
	trimmed = fdc_trim(c);
	pthread_mutex_unlock(&c->lock);
	if (ns)
		slot_close(ns);
	close_list(trimmed);
	*out = s;
	return 0;
}

void fdcache_put(struct fdcache *c, struct fd_slot *s)
{
	struct fd_slot *trimmed = NULL;
	bool close_it = false;

	pthread_mutex_lock(&c->lock);
	if (--s->refs == 0) {
		c->busy--;
		if (s->stale) {
			close_it = true;
		} else {
			s->lru_next = c->lru_head;
			if (c->lru_head)
				c->lru_head->lru_prev = s;
			else
				c->lru_tail = s;
			c->lru_head = s;
			trimmed = fdc_trim(c);
		}
	}
	pthread_mutex_unlock(&c->lock);
	if (close_it)
		slot_close(s);
	close_list(trimmed);
}

void fdcache_drop(struct fdcache *c, const struct chunk_hash *h)
{
	struct fd_slot *s;
	bool close_it = false;

	pthread_mutex_lock(&c->lock);
	s = fdc_lookup(c, h);
	if (s) {
		fdc_table_del(c, s);
		if (s->refs) {
			s->stale = true;
		} else {
			lru_unlink(c, s);
			close_it = true;
		}
	}
	pthread_mutex_unlock(&c->lock);
	if (close_it)
		slot_close(s);
}

int fdcache_direct_fd(struct fd_slot *s)
{
	int fd = __atomic_load_n(&s->dfd, __ATOMIC_ACQUIRE), expected = -1;
	char path[32];

	if (fd >= 0 || fd == -2)
		return fd >= 0 ? fd : -1;
	snprintf(path, sizeof(path), "/proc/self/fd/%d", s->fd);
	fd = open(path, O_RDONLY | O_DIRECT | O_CLOEXEC);
	if (fd < 0) { /* refused: remember, read buffered */
		__atomic_compare_exchange_n(&s->dfd, &expected, -2, false, __ATOMIC_ACQ_REL,
					    __ATOMIC_ACQUIRE);
		return -1;
	}
	if (!__atomic_compare_exchange_n(&s->dfd, &expected, fd, false, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE)) {
		close(fd);
		fd = expected;
	}
	return fd;
}

void fdcache_destroy(struct fdcache *c)
{
	for (unsigned i = 0; i < FDCACHE_BUCKETS; i++) {
		for (struct fd_slot *s = c->tab[i], *next; s; s = next) {
			next = s->chain;
			slot_close(s);
		}
		c->tab[i] = NULL;
	}
	pthread_mutex_destroy(&c->lock);
}
