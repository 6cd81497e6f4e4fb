/*
 * bench_store_evict.c - hit ratio of S3-FIFO (the chunk store's policy) against plain LRU
 * (the baseline) on a synthetic appliance trace, simulated on the policy directly.
 *
 * The trace: a cache of C chunks; 20 VMs boot from one image and read its boot set (B
 * chunks) in their own order; then one VM scans a disk of 3 * C distinct chunks while the
 * 20 VMs keep re-reading their boot set, one boot read per `gap` scan reads (reboots, the
 * boot working set of running VMs). Reported: the hit ratio of all reads, of the boot
 * reads made during the scan, how much of the boot set is still cached when the scan
 * ends, and the hit ratio when the 20 VMs then reboot.
 *
 * Usage: bench_store_evict [--cache N] [--boot N] [--gap N] [--seed N]
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/evict.h"
#include "common/util.h"

#define CHUNK (1u << 20)
#define NVMS  20

struct obj {
	struct evict_node node; /* first */
	bool cached;
};

struct sim {
	struct evict_policy *p;
	uint64_t used, cap_bytes;
	uint64_t reads, hits, boot_reads, boot_hits;
};

static uint64_t rng_state;

static uint64_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static void sim_read(struct sim *s, struct obj *o, bool boot)
{
	s->reads++;
	s->boot_reads += boot;
	if (o->cached) {
		s->hits++;
		s->boot_hits += boot;
		evict_access(s->p, &o->node);
		return;
	}
	s->used += o->node.size;
	while (s->used > s->cap_bytes) {
		struct obj *v = (struct obj *)evict_victim(s->p);

		if (!v) {
			fprintf(stderr, "bench: no victim (bug)\n");
			exit(1);
		}
		v->cached = false;
		s->used -= v->node.size;
	}
	evict_insert(s->p, &o->node);
	o->cached = true;
}

struct result {
	double hit, scan_boot_hit, reboot_hit;
	unsigned boot_left;
};

/* Each VM reads the boot set in its own (mostly sequential) order. */
static void boot_storm(struct sim *s, struct obj *bootset, unsigned boot, unsigned *order)
{
	for (unsigned vm = 0; vm < NVMS; vm++) {
		for (unsigned i = 0; i < boot; i++)
			order[i] = i;
		for (unsigned i = 0; i < boot / 10; i++) { /* a few swaps: not identical */
			unsigned a = (unsigned)(rnd() % boot), b = (unsigned)(rnd() % boot), t;

			t = order[a];
			order[a] = order[b];
			order[b] = t;
		}
		for (unsigned i = 0; i < boot; i++)
			sim_read(s, &bootset[order[i]], true);
	}
}

static struct result run(enum evict_kind kind, unsigned cache, unsigned boot, unsigned gap,
			 uint64_t seed)
{
	unsigned nscan = 3 * cache;
	struct obj *bootset = calloc(boot, sizeof(*bootset));
	struct obj *scan = calloc(nscan, sizeof(*scan));
	unsigned *order = malloc(boot * sizeof(*order));
	struct sim s = {.cap_bytes = (uint64_t)cache * CHUNK};
	struct result r;

	s.p = evict_new(kind, s.cap_bytes);
	rng_state = seed;
	for (unsigned i = 0; i < boot; i++) {
		bootset[i].node.key = 1 + i;
		bootset[i].node.size = CHUNK;
	}
	for (unsigned i = 0; i < nscan; i++) {
		scan[i].node.key = (1ull << 40) + i;
		scan[i].node.size = CHUNK;
	}
	boot_storm(&s, bootset, boot, order);
	/* the scan, with the other VMs still reading their boot set */
	uint64_t br = s.boot_reads, bh = s.boot_hits;
	for (unsigned i = 0; i < nscan; i++) {
		sim_read(&s, &scan[i], false);
		if (i % gap == 0)
			sim_read(&s, &bootset[rnd() % boot], true);
	}
	r.scan_boot_hit = (double)(s.boot_hits - bh) / (double)(s.boot_reads - br);
	r.boot_left = 0;
	for (unsigned i = 0; i < boot; i++)
		r.boot_left += bootset[i].cached;
	/* after the scan the 20 VMs reboot */
	br = s.boot_reads;
	bh = s.boot_hits;
	boot_storm(&s, bootset, boot, order);
	r.reboot_hit = (double)(s.boot_hits - bh) / (double)(s.boot_reads - br);
	r.hit = (double)s.hits / (double)s.reads;
	evict_free(s.p);
	free(bootset);
	free(scan);
	free(order);
	return r;
}

int main(int argc, char **argv)
{
	unsigned cache = 1024, gap = 10;
	unsigned boots[] = {0, 0};
	uint64_t seed = 42;
	int bad = 0;

	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--cache"))
			cache = (unsigned)strtoul(argv[i + 1], NULL, 0);
		else if (!strcmp(argv[i], "--boot"))
			boots[0] = (unsigned)strtoul(argv[i + 1], NULL, 0);
		else if (!strcmp(argv[i], "--gap"))
			gap = (unsigned)strtoul(argv[i + 1], NULL, 0);
		else if (!strcmp(argv[i], "--seed"))
			seed = strtoull(argv[i + 1], NULL, 0);
	}
	if (!boots[0]) { /* two scenarios: boot set at 20% and 50% of the cache */
		boots[0] = cache / 5;
		boots[1] = cache / 2;
	}
	if (cache < 10 || !gap) {
		fprintf(stderr, "usage: %s [--cache N] [--boot N] [--gap N] [--seed N]\n", argv[0]);
		return 2;
	}
	printf("eviction: cache %u chunks of 1 MiB, %d VMs re-reading a boot set, one VM "
	       "scanning %u chunks (3x the cache), 1 boot read per %u scan reads\n",
	       cache, NVMS, 3 * cache, gap);
	printf("%-9s %-8s %10s %15s %14s %14s %s\n", "boot set", "policy", "hit ratio",
	       "boot hits/scan", "reboot hits", "boot set left", "survived");
	for (unsigned b = 0; b < ARRAY_SIZE(boots) && boots[b]; b++) {
		struct result s3 = run(EVICT_S3FIFO, cache, boots[b], gap, seed);
		struct result lru = run(EVICT_LRU, cache, boots[b], gap, seed);
		const struct {
			const char *name;
			struct result r;
		} rows[] = {
			{"s3-fifo", s3},
			{"lru", lru},
		};

		for (unsigned k = 0; k < 2; k++) {
			printf("%-9u %-8s %9.1f%% %14.1f%% %13.1f%% %7u/%-6u %s\n", boots[b],
			       rows[k].name, 100 * rows[k].r.hit, 100 * rows[k].r.scan_boot_hit,
			       100 * rows[k].r.reboot_hit, rows[k].r.boot_left, boots[b],
			       rows[k].r.boot_left == boots[b] ? "yes" : "no");
		}
		bad |= s3.boot_left != boots[b];
	}
	if (bad)
		printf("eviction: FAIL: the boot set did not survive the scan under s3-fifo\n");
	return bad;
}
