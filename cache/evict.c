/*
 * evict.c - S3-FIFO eviction for the chunk store (and plain LRU, kept as the baseline
 * the benchmark compares against).
 *
 * Why S3-FIFO. The appliance's read stream mixes two populations: a boot working set
 * re-read by many VMs (hot, small) and one-pass traffic such as a VM scanning its whole
 * disk, a backup agent or a PRE-FETCH (cold, huge). LRU puts every newly read chunk at the
 * head, so a scan three times the cache's size walks the whole boot set out of it. The
 * classic scan-resistant answers are 2Q (Johnson & Shasha, VLDB'94), ARC (Megiddo & Modha,
 * FAST'03) and S3-FIFO (Yang et al., "FIFO queues are all you need for cache eviction",
 * SOSP'23). We use S3-FIFO because:
 *  - it is the simplest of the three with the same or better hit ratio on the paper's 6594
 *    production traces (block traces included), and it is designed for exactly this case:
 *    most new objects are one-hit wonders that should leave quickly;
 *  - a hit is a 2-bit counter increment, no list move, so the lock is held for a few
 *    instructions on the hot read path (LRU and ARC move a node on every hit);
 *  - ARC is patent-encumbered (US 6,996,676) and 2Q needs tuned Kin/Kout sizes, while
 *    S3-FIFO's single 10% small-queue ratio was shown to generalise.
 *
 * The algorithm (section 4 of the paper, libCacheSim's S3FIFOv0 variant):
 *  - small FIFO S (10% of the bytes), main FIFO M (the rest), ghost FIFO G (keys only, as
 *    many entries as M holds);
 *  - insert: into M if the key is in G (it was evicted from S recently and came back),
 *    else into S;
 *  - hit: freq = min(freq + 1, 3);
 *  - evict: from S while S holds >= 10% of the capacity, else from M;
 *    S's tail: accessed (freq >= 1) -> moved to M's head with freq cleared; otherwise
 *    evicted and its key pushed to G;
 *    M's tail: freq > 0 -> reinserted at M's head with freq - 1; otherwise evicted.
 * Pinned nodes (pins > 0) are rotated to their queue's head without aging and never
 * chosen. A queue is exhausted once as many pinned nodes in a row as it holds have been
 * rotated (a full turn with no progress); any other step (a frequency decrement, a
 * promotion) restarts that count, because the node it touched may be the victim on the
 * next turn. When both queues are exhausted evict_victim() returns NULL. Every step either
 * removes a node, decrements a frequency (at most 3 per node), promotes a node (once) or
 * rotates a pinned node (at most once per node between two other steps), which bounds the
 * loop; 5 * nodes + 2 steps is its budget.
 *
 * The ghost is a ring of fingerprints plus an open-addressing map fingerprint -> insertion
 * sequence number; an entry is live while it is still in the ring (the paper's section 5
 * suggests the same "eviction time" trick).
 */
#include "cache/evict.h"

#include "common/util.h"

#include <stdlib.h>
#include <string.h>

enum { Q_NONE = 0, Q_SMALL, Q_MAIN, Q_LRU };

#define FREQ_MAX  3
#define SMALL_PCT 10
#define GHOST_MIN 16

struct fifo {
	struct evict_node *head, *tail; /* insert at head, evict from tail */
	uint64_t bytes, count;
};

struct ghost {
	uint64_t *ring; /* keys, oldest at ring[first % cap] */
	uint64_t ring_cap, first, next;
	/* map: key -> seq + 1 (0 = empty slot); linear probing, backward-shift delete */
	uint64_t *mkey, *mval;
	uint64_t mcap, mcount;
};

struct evict_policy {
	enum evict_kind kind;
	uint64_t capacity;
	struct fifo small, main; /* LRU uses main only */
	struct ghost ghost;
	uint64_t ghost_hits, promotions;
};

/* ---- FIFO lists ---- */

static void fifo_push_head(struct fifo *q, struct evict_node *n)
{
	n->prev = NULL;
	n->next = q->head;
	if (q->head)
		q->head->prev = n;
	else
		q->tail = n;
	q->head = n;
	q->bytes += n->size;
	q->count++;
}

static void fifo_unlink(struct fifo *q, struct evict_node *n)
{
	if (n->prev)
		n->prev->next = n->next;
	else
		q->head = n->next;
	if (n->next)
		n->next->prev = n->prev;
	else
		q->tail = n->prev;
	n->prev = n->next = NULL;
	q->bytes -= n->size;
	q->count--;
}

/* ---- ghost ---- */

static uint64_t mix64(uint64_t k)
{
	k ^= k >> 33;
	k *= 0xff51afd7ed558ccdULL;
	k ^= k >> 33;
	return k;
}

static int ghost_map_grow(struct ghost *g)
{
	uint64_t ncap = g->mcap ? g->mcap * 2 : 64;
	uint64_t *nk = calloc(ncap, sizeof(*nk)), *nv = calloc(ncap, sizeof(*nv));

	if (!nk || !nv) {
		free(nk);
		free(nv);
		return -1;
	}
	for (uint64_t i = 0; i < g->mcap; i++) {
		if (!g->mval[i])
			continue;
		uint64_t j = mix64(g->mkey[i]) & (ncap - 1);
		while (nv[j])
			j = (j + 1) & (ncap - 1);
		nk[j] = g->mkey[i];
		nv[j] = g->mval[i];
	}
	free(g->mkey);
	free(g->mval);
	g->mkey = nk;
	g->mval = nv;
	g->mcap = ncap;
	return 0;
}

static int64_t ghost_slot(const struct ghost *g, uint64_t key)
{
	if (!g->mcap)
		return -1;
	for (uint64_t j = mix64(key) & (g->mcap - 1);; j = (j + 1) & (g->mcap - 1)) {
		if (!g->mval[j])
			return -1;
		if (g->mkey[j] == key)
			return (int64_t)j;
	}
}

static void ghost_map_del(struct ghost *g, uint64_t i)
{
	uint64_t mask = g->mcap - 1;

	g->mval[i] = 0;
	g->mcount--;
	/* backward-shift: move later members of the probe run into the hole */
	for (uint64_t j = (i + 1) & mask; g->mval[j]; j = (j + 1) & mask) {
		uint64_t home = mix64(g->mkey[j]) & mask;
		bool movable = i <= j ? (home <= i || home > j) : (home <= i && home > j);

		if (movable) {
			g->mkey[i] = g->mkey[j];
			g->mval[i] = g->mval[j];
			g->mval[j] = 0;
			i = j;
		}
	}
}

static void ghost_pop_oldest(struct ghost *g)
{
	uint64_t seq = g->first++;
	uint64_t key = g->ring[seq % g->ring_cap];
	int64_t s = ghost_slot(g, key);

	/* the map may point at a newer copy of the same key: leave that one */
	if (s >= 0 && g->mval[s] == seq + 1)
		ghost_map_del(g, (uint64_t)s);
}

static int ghost_ring_grow(struct ghost *g)
{
	uint64_t ncap = g->ring_cap ? g->ring_cap * 2 : 64;
	uint64_t *nr = malloc(ncap * sizeof(*nr));

	if (!nr)
		return -1;
	/* keep each key at seq % cap, so sequence numbers stay valid */
	for (uint64_t s = g->first; s < g->next; s++)
		nr[s % ncap] = g->ring[s % g->ring_cap];
	free(g->ring);
	g->ring = nr;
	g->ring_cap = ncap;
	return 0;
}

static void ghost_push(struct ghost *g, uint64_t key, uint64_t limit)
{
	if (g->next - g->first >= g->ring_cap && ghost_ring_grow(g) < 0) {
		if (!g->ring_cap)
			return;	     /* out of memory: no ghost at all, still correct */
		ghost_pop_oldest(g); /* out of memory: forget more, stay correct */
	}
	if ((g->mcount + 1) * 4 > g->mcap * 3 && ghost_map_grow(g) < 0)
		return;
	uint64_t seq = g->next++;
	int64_t s = ghost_slot(g, key);

	g->ring[seq % g->ring_cap] = key;
	if (s < 0) {
		uint64_t j = mix64(key) & (g->mcap - 1);
		while (g->mval[j])
			j = (j + 1) & (g->mcap - 1);
		g->mkey[j] = key;
		s = (int64_t)j;
		g->mcount++;
	}
	g->mval[s] = seq + 1;
	while (g->next - g->first > limit)
		ghost_pop_oldest(g);
}

/* True (and forgets the key) when key is in the ghost. */
static bool ghost_take(struct ghost *g, uint64_t key)
{
	int64_t s = ghost_slot(g, key);

	if (s < 0)
		return false;
	ghost_map_del(g, (uint64_t)s);
	return true;
}

/* As many ghost entries as M holds objects when full (estimated from the mean size). */
static uint64_t ghost_limit(const struct evict_policy *p)
{
	uint64_t n = p->small.count + p->main.count;
	uint64_t bytes = p->small.bytes + p->main.bytes;
	uint64_t avg = n ? MAX(bytes / n, 1) : 1;
	uint64_t lim = p->capacity ? p->capacity * (100 - SMALL_PCT) / 100 / avg : n;

	return lim < GHOST_MIN ? GHOST_MIN : lim;
}

/* ---- the policy ---- */

struct evict_policy *evict_new(enum evict_kind kind, uint64_t capacity)
{
	struct evict_policy *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->kind = kind;
	p->capacity = capacity;
	return p;
}

void evict_free(struct evict_policy *p)
{
	if (!p)
		return;
	free(p->ghost.ring);
	free(p->ghost.mkey);
	free(p->ghost.mval);
	free(p);
}

const char *evict_kind_name(enum evict_kind kind)
{
	return kind == EVICT_LRU ? "lru" : "s3-fifo";
}

bool evict_contains(const struct evict_node *n)
{
	return n->queue != Q_NONE;
}

static struct fifo *queue_of(struct evict_policy *p, const struct evict_node *n)
{
	return n->queue == Q_SMALL ? &p->small : &p->main;
}

void evict_insert(struct evict_policy *p, struct evict_node *n)
{
	n->freq = 0;
	if (p->kind == EVICT_LRU) {
		n->queue = Q_LRU;
		fifo_push_head(&p->main, n);
		return;
	}
	if (ghost_take(&p->ghost, n->key)) {
		p->ghost_hits++;
		n->queue = Q_MAIN;
		fifo_push_head(&p->main, n);
	} else {
		n->queue = Q_SMALL;
		fifo_push_head(&p->small, n);
	}
}

void evict_access(struct evict_policy *p, struct evict_node *n)
{
	if (n->queue == Q_NONE)
		return;
	if (p->kind == EVICT_LRU) {
		fifo_unlink(&p->main, n);
		fifo_push_head(&p->main, n);
		return;
	}
	if (n->freq < FREQ_MAX)
		n->freq++;
}

void evict_remove(struct evict_policy *p, struct evict_node *n)
{
	if (n->queue == Q_NONE)
		return;
	fifo_unlink(queue_of(p, n), n);
	n->queue = Q_NONE;
}

static struct evict_node *lru_victim(struct evict_policy *p)
{
	for (struct evict_node *n = p->main.tail; n; n = n->prev) {
		if (n->pins)
			continue;
		evict_remove(p, n);
		return n;
	}
	return NULL;
}

/*
 * One step on S's tail: returns the victim, or NULL after moving a node. A promotion
 * restarts both counts of pinned nodes seen in a row: S has lost a node, and M has one
 * that its count has not seen (left as it was, M could be called exhausted after meeting
 * its pinned nodes again and never reach the promoted one).
 */
static struct evict_node *small_step(struct evict_policy *p, uint64_t *pinned_seen,
				     uint64_t *main_pinned_seen)
{
	struct evict_node *n = p->small.tail;

	fifo_unlink(&p->small, n);
	if (n->pins) {
		(*pinned_seen)++;
		fifo_push_head(&p->small, n);
		return NULL;
	}
	if (n->freq >= 1) {
		n->freq = 0;
		n->queue = Q_MAIN;
		fifo_push_head(&p->main, n);
		p->promotions++;
		*pinned_seen = 0;
		*main_pinned_seen = 0;
		return NULL;
	}
	n->queue = Q_NONE;
	ghost_push(&p->ghost, n->key, ghost_limit(p));
	return n;
}

static struct evict_node *main_step(struct evict_policy *p, uint64_t *pinned_seen)
{
	struct evict_node *n = p->main.tail;

	fifo_unlink(&p->main, n);
	if (n->pins) {
		(*pinned_seen)++;
		fifo_push_head(&p->main, n);
		return NULL;
	}
	if (n->freq > 0) {
		n->freq--;
		fifo_push_head(&p->main, n);
		*pinned_seen = 0;
		return NULL;
	}
	n->queue = Q_NONE;
	return n;
}

struct evict_node *evict_victim(struct evict_policy *p)
{
	if (p->kind == EVICT_LRU)
		return lru_victim(p);

	uint64_t small_target = p->capacity * SMALL_PCT / 100;
	uint64_t pin_s = 0, pin_m = 0;
	uint64_t budget = 5 * (p->small.count + p->main.count) + 2;

	while (budget--) {
		/* a queue is exhausted after a full turn of pinned nodes in a row */
		bool s_ok = p->small.count && pin_s < p->small.count;
		bool m_ok = p->main.count && pin_m < p->main.count;
		struct evict_node *v;

		if (s_ok && (p->small.bytes >= small_target || !m_ok))
			v = small_step(p, &pin_s, &pin_m);
		else if (m_ok)
			v = main_step(p, &pin_m);
		else
			return NULL;
		if (v)
			return v;
	}
	return NULL;
}

void evict_get_stats(const struct evict_policy *p, struct evict_stats *st)
{
	memset(st, 0, sizeof(*st));
	st->small_bytes = p->small.bytes;
	st->main_bytes = p->main.bytes;
	st->small_count = p->small.count;
	st->main_count = p->main.count;
	st->ghost_count = p->ghost.next - p->ghost.first;
	st->ghost_hits = p->ghost_hits;
	st->promotions = p->promotions;
}
