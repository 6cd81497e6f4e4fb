/*
 * test_evict.c - the S3-FIFO policy: queue moves, the ghost, pinning, and scan resistance
 * compared with LRU.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "cache/evict.h"

#define SZ 4096u

struct obj {
	struct evict_node node; /* first: a node pointer is an object pointer */
	bool cached;
};

static struct obj *objs(size_t n)
{
	struct obj *o = calloc(n, sizeof(*o));

	for (size_t i = 0; i < n; i++) {
		o[i].node.key = 1000 + i;
		o[i].node.size = SZ;
	}
	return o;
}

/* A cache of `cap` objects driven by the policy: returns true on a hit. */
static bool cache_access(struct evict_policy *p, struct obj *o, uint64_t *used, uint64_t cap)
{
	if (o->cached) {
		evict_access(p, &o->node);
		return true;
	}
	*used += o->node.size;
	while (*used > cap * SZ) {
		struct obj *v = (struct obj *)evict_victim(p);

		assert_non_null(v);
		v->cached = false;
		*used -= v->node.size;
	}
	evict_insert(p, &o->node);
	o->cached = true;
	return false;
}

static void test_unaccessed_leave_first(void **state)
{
	struct evict_policy *p = evict_new(EVICT_S3FIFO, 4 * SZ);
	struct obj *o = objs(4);

	for (int i = 0; i < 4; i++)
		evict_insert(p, &o[i].node);
	evict_access(p, &o[0].node); /* the oldest, but accessed */
	/* o[0] is promoted to main; o[1], the oldest unaccessed, is the victim */
	assert_ptr_equal(evict_victim(p), &o[1].node);
	assert_ptr_equal(evict_victim(p), &o[2].node);
	struct evict_stats st;
	evict_get_stats(p, &st);
	assert_int_equal(st.promotions, 1);
	assert_int_equal(st.main_count, 1);
	assert_int_equal(st.ghost_count, 2);
	evict_free(p);
	free(o);
}

static void test_ghost_readmits_to_main(void **state)
{
	struct evict_policy *p = evict_new(EVICT_S3FIFO, 10 * SZ);
	struct obj *o = objs(2);
	struct evict_stats st;

	evict_insert(p, &o[0].node);
	evict_insert(p, &o[1].node);
	assert_ptr_equal(evict_victim(p), &o[0].node);
	evict_insert(p, &o[0].node); /* came back while remembered by the ghost */
	evict_get_stats(p, &st);
	assert_int_equal(st.ghost_hits, 1);
	assert_int_equal(st.main_count, 1);
	assert_int_equal(st.small_count, 1);
	evict_free(p);
	free(o);
}

/* Puts o[0..n) in main through the ghost: inserted, evicted from small, inserted again. */
static void into_main(struct evict_policy *p, struct obj *o, int n)
{
	for (int i = 0; i < n; i++)
		evict_insert(p, &o[i].node);
	for (int i = 0; i < n; i++)
		assert_ptr_equal(evict_victim(p), &o[i].node);
	for (int i = 0; i < n; i++)
		evict_insert(p, &o[i].node);
}

static void test_main_frequency_ages(void **state)
{
	struct evict_policy *p = evict_new(EVICT_S3FIFO, 10 * SZ);
	struct obj *o = objs(3);

	into_main(p, o, 3);
	for (int k = 0; k < 5; k++) /* capped at 3 */
		evict_access(p, &o[0].node);
	evict_access(p, &o[1].node);
	/* o[2] has no credit, then o[1] (one credit), then o[0] (three) */
	assert_ptr_equal(evict_victim(p), &o[2].node);
	assert_ptr_equal(evict_victim(p), &o[1].node);
	assert_ptr_equal(evict_victim(p), &o[0].node);
	assert_null(evict_victim(p));
	evict_free(p);
	free(o);
}

static void test_pinned_never_chosen(void **state)
{
	for (int kind = EVICT_S3FIFO; kind <= EVICT_LRU; kind++) {
		struct evict_policy *p = evict_new(kind, 3 * SZ);
		struct obj *o = objs(3);

		for (int i = 0; i < 3; i++) {
			o[i].node.pins = 1;
			evict_insert(p, &o[i].node);
		}
		assert_null(evict_victim(p)); /* everything pinned */
		o[1].node.pins = 0;
		assert_ptr_equal(evict_victim(p), &o[1].node);
		assert_null(evict_victim(p));
		o[0].node.pins = 0;
		assert_ptr_equal(evict_victim(p), &o[0].node);
		evict_free(p);
		free(o);
	}
}

/* Pinned nodes beside hot ones: a hot node needs a turn per credit to cool down, and the
 * pinned ones met on each turn must not make the queue look exhausted meanwhile. */
static void test_pinned_beside_hot_still_evicts(void **state)
{
	struct evict_policy *p = evict_new(EVICT_S3FIFO, 10 * SZ);
	struct obj *o = objs(3);

	into_main(p, o, 3);
	o[0].node.pins = 1;
	o[1].node.pins = 1;
	for (int k = 0; k < 3; k++)
		evict_access(p, &o[2].node);
	assert_ptr_equal(evict_victim(p), &o[2].node);
	assert_null(evict_victim(p)); /* only pinned ones left */
	evict_free(p);
	free(o);
}

/* M all pinned, S small (below its target) with one node read once: the node S promotes
 * is the victim; M's pinned nodes met again must not make M look exhausted before it. */
static void test_promoted_node_found_behind_pinned_main(void **state)
{
	struct evict_policy *p = evict_new(EVICT_S3FIFO, 100 * SZ);
	struct obj *o = objs(2);

	evict_insert(p, &o[0].node);
	assert_ptr_equal(evict_victim(p), &o[0].node); /* its key goes to the ghost */
	evict_insert(p, &o[0].node);                   /* ghost hit: into M */
	o[0].node.pins = 1;
	evict_insert(p, &o[1].node);                   /* S, far below S's target */
	evict_access(p, &o[1].node);
	assert_ptr_equal(evict_victim(p), &o[1].node);
	assert_null(evict_victim(p));
	evict_free(p);
	free(o);
}

static void test_lru_order(void **state)
{
	struct evict_policy *p = evict_new(EVICT_LRU, 3 * SZ);
	struct obj *o = objs(3);

	for (int i = 0; i < 3; i++)
		evict_insert(p, &o[i].node);
	evict_access(p, &o[0].node);
	assert_ptr_equal(evict_victim(p), &o[1].node);
	assert_ptr_equal(evict_victim(p), &o[2].node);
	assert_ptr_equal(evict_victim(p), &o[0].node);
	evict_free(p);
	free(o);
}

/*
 * A hot set of 40 objects in a 100-object cache, re-read between the reads of a scan of
 * 300 distinct objects: S3-FIFO keeps the hot set, LRU loses part of it.
 */
static unsigned hot_hits_during_scan(enum evict_kind kind, unsigned *hot_left)
{
	const unsigned cap = 100, nhot = 40, nscan = 300;
	struct evict_policy *p = evict_new(kind, cap * SZ);
	struct obj *hot = objs(nhot), *scan = objs(nscan);
	uint64_t used = 0;
	unsigned hits = 0;

	for (unsigned i = 0; i < nscan; i++)
		scan[i].node.key = 1u << 20 | i;
	for (int round = 0; round < 3; round++) /* warm: the boot set is read a few times */
		for (unsigned i = 0; i < nhot; i++)
			cache_access(p, &hot[i], &used, cap);
	for (unsigned i = 0; i < nscan; i++) {
		cache_access(p, &scan[i], &used, cap);
		if (i % 5 == 0) /* the other VMs keep reading their boot set, slowly */
			hits += cache_access(p, &hot[(i / 5) % nhot], &used, cap);
	}
	*hot_left = 0;
	for (unsigned i = 0; i < nhot; i++)
		*hot_left += hot[i].cached;
	evict_free(p);
	free(hot);
	free(scan);
	return hits;
}

static void test_scan_resistance_vs_lru(void **state)
{
	unsigned s3_left, lru_left;
	unsigned s3 = hot_hits_during_scan(EVICT_S3FIFO, &s3_left);
	unsigned lru = hot_hits_during_scan(EVICT_LRU, &lru_left);

	printf("# hot hits during scan: s3-fifo %u/60 (hot left %u/40), lru %u/60 (left %u/40)\n",
	       s3, s3_left, lru, lru_left);
	assert_int_equal(s3, 60);
	assert_int_equal(s3_left, 40);
	assert_true(lru < s3);
	assert_true(lru_left < 40);
}

static void test_victim_bounded_with_many_credits(void **state)
{
	const unsigned n = 1000;
	struct evict_policy *p = evict_new(EVICT_S3FIFO, n * SZ);
	struct obj *o = objs(n);

	for (unsigned i = 0; i < n; i++) {
		evict_insert(p, &o[i].node);
		for (int k = 0; k < 3; k++)
			evict_access(p, &o[i].node);
	}
	/* every object has full credit: a victim is still found, in bounded steps */
	assert_non_null(evict_victim(p));
	evict_free(p);
	free(o);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_unaccessed_leave_first),
		cmocka_unit_test(test_ghost_readmits_to_main),
		cmocka_unit_test(test_main_frequency_ages),
		cmocka_unit_test(test_pinned_never_chosen),
		cmocka_unit_test(test_pinned_beside_hot_still_evicts),
		cmocka_unit_test(test_promoted_node_found_behind_pinned_main),
		cmocka_unit_test(test_lru_order),
		cmocka_unit_test(test_scan_resistance_vs_lru),
		cmocka_unit_test(test_victim_bounded_with_many_credits),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
