/*
 * trace.c - a LUN's read trace (see trace.h).
 *
 * Reads in flight sit in a small open-addressing table keyed by the command pointer, so the
 * start time taken on tgtd's event loop reaches the worker that ends the read without a
 * field in tgt's struct scsi_cmd. Finished reads are kept in memory (about 40 bytes each; a
 * boot issues thousands) for the sorted rewrite at close, and appended to the file at once.
 */
#include "target/trace.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/util.h"

/* The longest line: five 20-digit numbers, four spaces and a newline. */
#define TRACE_LINE_MAX 112

struct trace_rec {
	uint64_t seq, start_us, end_us, off, len;
};

struct trace_slot {
	const void *key;  /* NULL: free */
	uint64_t start_ns, seq;
};

struct trace {
	pthread_mutex_t lock;
	char *path;
	int fd;
	char header[TRACE_LINE_MAX * 2];
	/* Everything below is protected by lock. */
	bool started;
	uint64_t base_ns;  /* arrival of the first read */
	uint64_t next_seq;
	uint64_t dropped;  /* reads not timed: table full, or no memory for the record */
	struct trace_rec *recs;
	size_t nrecs, cap;
	struct trace_slot slots[TRACE_INFLIGHT];
};

int trace_open(const char *path, const struct chunk_hash *image_id, uint64_t size,
	       struct trace **out)
{
	char hex[HASH_HEX_LEN + 1];
	struct trace *t;
	int n, ret;

	*out = NULL;
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->fd = -1;
	pthread_mutex_init(&t->lock, NULL);
	t->path = strdup(path);
	if (!t->path) {
		ret = -ENOMEM;
		goto fail;
	}
	hash_to_hex(image_id, hex);
	n = snprintf(t->header, sizeof(t->header), "# rackdisk-trace %d\n# image %s size %" PRIu64
		     "\n", TRACE_FORMAT, hex, size);
	if (n < 0 || (size_t)n >= sizeof(t->header)) {
		ret = -EOVERFLOW;
		goto fail;
	}
	t->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
	if (t->fd < 0) {
		ret = -errno;
		goto fail;
	}
	ret = pwrite_full(t->fd, t->header, (size_t)n, 0);
	if (ret)
		goto fail;
	*out = t;
	return 0;
fail:
	if (t->fd >= 0)
		close(t->fd);
	pthread_mutex_destroy(&t->lock);
	free(t->path);
	free(t);
	return ret;
}

static size_t slot_of(const void *key)
{
	uint64_t h = (uint64_t)(uintptr_t)key;

	/* Commands are heap objects: the low bits are alignment, mix the rest. */
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return (size_t)(h % TRACE_INFLIGHT);
}

void trace_begin(struct trace *t, const void *key, uint64_t now_ns)
{
	size_t i, s;

	pthread_mutex_lock(&t->lock);
	if (!t->started) {
		t->started = true;
		t->base_ns = now_ns;
	}
	s = slot_of(key);
	for (i = 0; i < TRACE_INFLIGHT; i++, s = (s + 1) % TRACE_INFLIGHT) {
		if (!t->slots[s].key) {
			t->slots[s].key = key;
			t->slots[s].start_ns = now_ns;
			t->slots[s].seq = t->next_seq++;
			break;
		}
	}
	if (i == TRACE_INFLIGHT)
		t->dropped++;
	pthread_mutex_unlock(&t->lock);
}

/* Removes key's slot (linear probing: later entries of its run move up). Under lock. */
static bool take_slot(struct trace *t, const void *key, struct trace_slot *out)
{
	size_t i, s = slot_of(key), j, home;

	for (i = 0; i < TRACE_INFLIGHT; i++, s = (s + 1) % TRACE_INFLIGHT) {
		if (!t->slots[s].key)
			return false;
		if (t->slots[s].key == key)
			break;
	}
	if (i == TRACE_INFLIGHT)
		return false;
	*out = t->slots[s];
	t->slots[s].key = NULL;
	/* Backward-shift deletion keeps every remaining key reachable from its home slot. */
	for (j = (s + 1) % TRACE_INFLIGHT; t->slots[j].key; j = (j + 1) % TRACE_INFLIGHT) {
		home = slot_of(t->slots[j].key);
		/* Move j into the hole s unless its home lies cyclically in (s, j]. */
		if ((j > s && (home <= s || home > j)) || (j < s && home <= s && home > j)) {
			t->slots[s] = t->slots[j];
			t->slots[j].key = NULL;
			s = j;
		}
	}
	return true;
}

static int format_rec(const struct trace_rec *r, char *buf, size_t len)
{
	return snprintf(buf, len, "%" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRIu64 "\n",
			r->seq, r->start_us, r->end_us, r->off, r->len);
}

void trace_end(struct trace *t, const void *key, uint64_t now_ns, uint64_t off, uint64_t len,
	       int ok)
{
	struct trace_slot slot;
	struct trace_rec r, *grown;
	char line[TRACE_LINE_MAX];
	size_t cap;
	int n;

	pthread_mutex_lock(&t->lock);
	if (!take_slot(t, key, &slot) || !ok)
		goto unlock;
	r.seq = slot.seq;
	r.start_us = (slot.start_ns - t->base_ns) / 1000;
	r.end_us = (now_ns > t->base_ns ? now_ns - t->base_ns : 0) / 1000;
	if (r.end_us < r.start_us)
		r.end_us = r.start_us;
	r.off = off;
	r.len = len;
	if (t->nrecs == t->cap) {
		cap = t->cap ? t->cap * 2 : 1024;
		grown = realloc(t->recs, cap * sizeof(*grown));
		if (!grown) {
			t->dropped++;
			goto unlock;
		}
		t->recs = grown;
		t->cap = cap;
	}
	t->recs[t->nrecs++] = r;
	pthread_mutex_unlock(&t->lock);

	/* O_APPEND: a short line lands whole, whatever other workers write meanwhile. A
	 * failed append only costs the unsorted copy; the close rewrites it all. */
	n = format_rec(&r, line, sizeof(line));
	if (write(t->fd, line, (size_t)n) < 0)
		return;
	return;
unlock:
	pthread_mutex_unlock(&t->lock);
}

uint64_t trace_now_ns(void)
{
	return now_ns();
}

uint64_t trace_count(struct trace *t)
{
	uint64_t n;

	pthread_mutex_lock(&t->lock);
	n = t->nrecs;
	pthread_mutex_unlock(&t->lock);
	return n;
}

static int cmp_seq(const void *a, const void *b)
{
	const struct trace_rec *x = a, *y = b;

	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

int trace_close(struct trace *t)
{
	size_t i, len, cap;
	char *buf = NULL;
	int n, ret;

	if (!t)
		return 0;
	if (t->nrecs) /* recs is NULL while empty, and qsort's base must not be */
		qsort(t->recs, t->nrecs, sizeof(t->recs[0]), cmp_seq);
	cap = sizeof(t->header) + (t->nrecs + 1) * TRACE_LINE_MAX;
	buf = malloc(cap);
	if (!buf) {
		ret = -ENOMEM;
		goto out;
	}
	len = strlen(t->header);
	memcpy(buf, t->header, len);
	for (i = 0; i < t->nrecs; i++)
		len += (size_t)format_rec(&t->recs[i], buf + len, cap - len);
	if (t->dropped) {
		n = snprintf(buf + len, cap - len, "# dropped %" PRIu64 "\n", t->dropped);
		len += (size_t)n;
	}
	ret = write_file_atomic(t->path, buf, len);
out:
	free(buf);
	close(t->fd);
	pthread_mutex_destroy(&t->lock);
	free(t->recs);
	free(t->path);
	free(t);
	return ret;
}
