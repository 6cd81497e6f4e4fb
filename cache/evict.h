/*
 * evict.h - the chunk store's eviction policy (S3-FIFO), and plain LRU for comparison.
 *
 * The policy knows nothing about files: its owner embeds a struct evict_node in each
 * cached object, tells the policy about inserts, accesses and removals, and asks it for a
 * victim when it needs room. Sizes are in bytes; the owner decides when to evict (the
 * policy never evicts on its own). Nodes whose pins field is non-zero are never chosen.
 *
 * Not thread-safe: the owner serialises calls (the chunk store holds its lock).
 */
#ifndef RACKDISK_CACHE_EVICT_H
#define RACKDISK_CACHE_EVICT_H

#include <stdbool.h>
#include <stdint.h>

enum evict_kind {
	EVICT_S3FIFO,
	EVICT_LRU,
};

struct evict_node {
	struct evict_node *prev, *next;
	uint64_t key;  /* a fingerprint of the object, remembered by the ghost queue */
	uint32_t size; /* bytes */
	uint32_t pins; /* owned by the caller: > 0 means "never choose as a victim" */
	uint8_t queue; /* private to the policy */
	uint8_t freq;  /* private to the policy */
};

struct evict_stats {
	uint64_t small_bytes, main_bytes;
	uint64_t small_count, main_count, ghost_count;
	uint64_t ghost_hits; /* inserts that went straight to main thanks to the ghost */
	uint64_t promotions; /* small -> main moves */
};

struct evict_policy;

/* capacity: the cache's size in bytes (sizes the small queue and the ghost). */
struct evict_policy *evict_new(enum evict_kind kind, uint64_t capacity);
void evict_free(struct evict_policy *p);
const char *evict_kind_name(enum evict_kind kind);

/* A new object (node->key and node->size set by the caller; node not in the policy). */
void evict_insert(struct evict_policy *p, struct evict_node *n);
/* A hit on an object in the policy. */
void evict_access(struct evict_policy *p, struct evict_node *n);
/* Removes an object from the policy without remembering it (explicit delete). */
void evict_remove(struct evict_policy *p, struct evict_node *n);
/* True when the node is currently tracked by the policy. */
bool evict_contains(const struct evict_node *n);

/*
 * Chooses a victim, takes it out of the policy and returns it; NULL when every object is
 * pinned (or there is none). The caller then frees the object.
 */
struct evict_node *evict_victim(struct evict_policy *p);

void evict_get_stats(const struct evict_policy *p, struct evict_stats *st);

#endif
