/*
 * lun.c - opening a rackdisk LUN from its disk directory (see lun.h).
 *
 * A chunk the disk needs and the store lacks is fetched by rackdiskd: the miss callback
 * sends FETCH on the fetch socket and waits until the LUN's deadline (io_timeout_ms).
 * Chunk hits are reported back in TOUCH batches so that rackdiskd's eviction sees the
 * reads the module serves; that report is best effort and never delays a read by more
 * than one short exchange per FETCH_PROTO_TOUCH_MAX hits.
 *
 * rackdiskd's readahead sees a reader's place through FETCH (misses) and HIT (hits). A
 * hit is reported when it continues a forward run: one of the few chunks just before it
 * was read (hit or miss) within HINT_REPEAT_NS. So a sequential reader tells rackdiskd about each
 * chunk it reaches, readahead keeps its window filled ahead of it, and a random reader
 * sends nothing. Each index is reported at most once per HINT_REPEAT_NS (a chunk is
 * read in many pieces), on the one-way connection (fetch_client_hit): never a wait.
 */
#include "target/lun.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/chunkstore.h"
#include "cache/disk.h"
#include "common/util.h"
#include "images/manifest.h"
#include "target/fetch_proto.h"

/* Best-effort requests (TOUCH, PREFETCH) wait at most this long for their reply. */
#define BEST_EFFORT_NS (200ull * 1000 * 1000)
/* A batch of hits older than this is sent with the next hit even when not full. */
#define TOUCH_MAX_AGE_NS (1000ull * 1000 * 1000)
/* A chunk is reported at most once per this interval: the eviction policy needs to know
 * that a chunk is in use, not how often (direct-mapped memory of recent reports). */
#define TOUCH_REPEAT_NS (2000ull * 1000 * 1000)
#define TOUCH_RECENT 4096
/* Chunk indexes read recently (direct-mapped by index): the forward-run test and the
 * once-per-index limit of HIT. Longer than a sequential reader takes per chunk. */
#define HINT_RECENT 1024
#define HINT_REPEAT_NS (2000ull * 1000 * 1000)
/* A read continues a forward run when one of the HINT_BEHIND chunks before it was read
 * lately: an initiator with several reads in flight sees them complete out of order. */
#define HINT_BEHIND 8
#define HINT_SCAN 64
/* One PRE-FETCH command spends at most this long queueing fills. */
#define PREFETCH_BUDGET_NS (2000ull * 1000 * 1000)

struct lun {
	struct lun_config cfg;
	struct manifest *image;
	struct chunkstore *store;
	struct fetch_client *fc;
	struct disk *disk;

	pthread_mutex_t touch_lock;
	struct chunk_hash touch[FETCH_PROTO_TOUCH_MAX];   /* protected by touch_lock */
	size_t ntouch;
	uint64_t touch_first_ns;
	/* recent[] and seen[] are written under touch_lock; access_known() reads their
	 * words without it (relaxed atomics), hence the atomic stores. */
	struct {
		struct chunk_hash h;
		uint64_t tag;     /* h's first 8 bytes, for access_known() */
		uint64_t when_ns;
	} recent[TOUCH_RECENT];                           /* protected by touch_lock */
	struct {
		uint64_t idx_1;   /* chunk index + 1; 0 = empty */
		uint64_t when_ns;
		bool hinted;      /* rackdiskd heard of it (FETCH or HIT) at when_ns */
	} seen[HINT_RECENT];                              /* protected by touch_lock */
	struct lun_stats st;                              /* protected by touch_lock */
};

/* True when chunk idx was read within HINT_REPEAT_NS of now. touch_lock held. */
static bool seen_recently(struct lun *l, uint64_t idx, uint64_t now)
{
	unsigned slot = (unsigned)(idx % HINT_RECENT);

	return l->seen[slot].idx_1 == idx + 1 && now - l->seen[slot].when_ns < HINT_REPEAT_NS;
}

/* True when one of the HINT_BEHIND non-zero chunks before idx was read lately. Zero
 * chunks are stepped over (at most HINT_SCAN of them): they are never read from the
 * store, and readahead skips them too. touch_lock held. */
static bool run_before(struct lun *l, uint64_t idx, uint64_t now)
{
	unsigned nonzero = 0;

	for (uint64_t i = idx; i > 0 && idx - i < HINT_SCAN && nonzero < HINT_BEHIND; i--) {
		if (manifest_chunk_is_zero(l->image, i - 1))
			continue;
		if (seen_recently(l, i - 1, now))
			return true;
		nonzero++;
	}
	return false;
}

/*
 * Records a read of chunk idx; returns true when it should be reported as a HIT: not
 * already reported lately, and a chunk shortly before it was read lately (a forward run).
 * `fetched`: the read missed and FETCH carried the place already. touch_lock held.
 */
static bool seen_note(struct lun *l, uint64_t idx, uint64_t now, bool fetched)
{
	unsigned slot = (unsigned)(idx % HINT_RECENT);
	bool again = seen_recently(l, idx, now), hint;

	if (again && l->seen[slot].hinted)
		return false;
	hint = !fetched && run_before(l, idx, now);
	if (!again || hint || fetched) {
		__atomic_store_n(&l->seen[slot].idx_1, idx + 1, __ATOMIC_RELAXED);
		__atomic_store_n(&l->seen[slot].when_ns, now, __ATOMIC_RELAXED);
		__atomic_store_n(&l->seen[slot].hinted, hint || fetched, __ATOMIC_RELAXED);
	}
	return hint;
}

/*
 * True when lun_on_access() would do nothing for this read: the chunk was reported as
 * touched, and its index as a HIT (or FETCH), within the repeat intervals. That is nearly
 * every read of a warm disk, so it is answered without touch_lock, which tgtd's 16
 * worker threads would otherwise all take once per 4 KiB read. Racy by design (the
 * words are read one by one while a writer may be mid-update): a wrong answer either
 * takes the lock for nothing or skips one advisory report, never more.
 */
static bool access_known(struct lun *l, uint64_t tag, uint64_t idx, uint64_t now)
{
	uint64_t slot = tag % TOUCH_RECENT;
	unsigned s = (unsigned)(idx % HINT_RECENT);

	return __atomic_load_n(&l->recent[slot].tag, __ATOMIC_RELAXED) == tag &&
	       now - __atomic_load_n(&l->recent[slot].when_ns, __ATOMIC_RELAXED) <
		       TOUCH_REPEAT_NS &&
	       __atomic_load_n(&l->seen[s].idx_1, __ATOMIC_RELAXED) == idx + 1 &&
	       now - __atomic_load_n(&l->seen[s].when_ns, __ATOMIC_RELAXED) < HINT_REPEAT_NS &&
	       __atomic_load_n(&l->seen[s].hinted, __ATOMIC_RELAXED);
}

static int lun_miss(void *arg, const struct chunk_hash *h, uint64_t idx, uint32_t len,
		    uint64_t deadline_ns)
{
	struct lun *l = arg;

	if (!l->fc)
		return -EIO;
	pthread_mutex_lock(&l->touch_lock);
	seen_note(l, idx, now_ns(), true);
	pthread_mutex_unlock(&l->touch_lock);
	/* The place (image, index) lets rackdiskd's readahead follow this LUN's reads. */
	return fetch_client_fetch_at(l->fc, h, len, &l->cfg.image_id, idx, deadline_ns);
}

/* The chunk store found *h's file bad (cache/chunkstore.c invariant 1a): rackdiskd
 * re-checks and drops it; the miss that follows fetches a fresh copy. */
static void lun_on_bad(void *arg, const struct chunk_hash *h, uint32_t len, uint64_t deadline_ns)
{
	struct lun *l = arg;

	if (l->fc)
		fetch_client_check(l->fc, h, len, deadline_ns);
}

static void touch_send(struct lun *l, const struct chunk_hash *hs, size_t n)
{
	if (l->fc && n)
		fetch_client_touch(l->fc, hs, n, now_ns() + BEST_EFFORT_NS);
}

static void lun_on_access(void *arg, const struct chunk_hash *h, uint64_t idx)
{
	struct chunk_hash batch[FETCH_PROTO_TOUCH_MAX];
	struct lun *l = arg;
	uint64_t now, tag, slot;
	size_t n = 0;
	bool hint = false, touch = true;

	if (!l->fc)
		return;
	memcpy(&tag, h->b, sizeof(tag));
	slot = tag % TOUCH_RECENT;
	now = now_ns();
	if (access_known(l, tag, idx, now))
		return;
	pthread_mutex_lock(&l->touch_lock);
	hint = seen_note(l, idx, now, false);
	if (hint)
		l->st.hits_reported++;
	if (hash_equal(&l->recent[slot].h, h) && now - l->recent[slot].when_ns < TOUCH_REPEAT_NS)
		touch = false;
	if (touch) {
		l->recent[slot].h = *h;
		__atomic_store_n(&l->recent[slot].tag, tag, __ATOMIC_RELAXED);
		__atomic_store_n(&l->recent[slot].when_ns, now, __ATOMIC_RELAXED);
		if (l->ntouch == 0)
			l->touch_first_ns = now;
		l->touch[l->ntouch++] = *h;
		if (l->ntouch == FETCH_PROTO_TOUCH_MAX ||
		    now - l->touch_first_ns > TOUCH_MAX_AGE_NS) {
			n = l->ntouch;
			memcpy(batch, l->touch, n * sizeof(batch[0]));
			l->ntouch = 0;
		}
	}
	pthread_mutex_unlock(&l->touch_lock);
	/* The hit first: readahead is waiting for it, the eviction policy is not. */
	if (hint)
		fetch_client_hit(l->fc, &l->cfg.image_id, idx, h, now + BEST_EFFORT_NS);
	touch_send(l, batch, n);
}

void lun_flush_touches(struct lun *l)
{
	struct chunk_hash batch[FETCH_PROTO_TOUCH_MAX];
	size_t n;

	pthread_mutex_lock(&l->touch_lock);
	n = l->ntouch;
	memcpy(batch, l->touch, n * sizeof(batch[0]));
	l->ntouch = 0;
	pthread_mutex_unlock(&l->touch_lock);
	touch_send(l, batch, n);
}

static int load_manifest(struct lun *l, char *err, size_t errlen)
{
	char *buf = NULL;
	size_t len;
	int ret;

	ret = read_file(l->cfg.manifest, MANIFEST_MAX_BYTES, &buf, &len);
	if (ret) {
		snprintf(err, errlen, "%s: %s", l->cfg.manifest, strerror(-ret));
		return ret;
	}
	ret = manifest_parse(buf, len, &l->image, err, errlen);
	free(buf);
	if (ret)
		return ret;
	/* The copy must be the image the overlay was made for: the id is the hash of the
	 * manifest bytes, so a swapped or edited copy is caught here. */
	if (!hash_equal(&l->image->id, &l->cfg.image_id)) {
		char want[HASH_HEX_LEN + 1], got[HASH_HEX_LEN + 1];

		hash_to_hex(&l->cfg.image_id, want);
		hash_to_hex(&l->image->id, got);
		snprintf(err, errlen, "%s: manifest is image %s, lun.json says %s",
			 l->cfg.manifest, got, want);
		return -EINVAL;
	}
	return 0;
}

static int open_parts(struct lun *l, const char *dir, char *err, size_t errlen)
{
	struct chunkstore_opts so = {0};
	struct disk_opts dopts = {0};
	int ret;

	ret = lun_config_load(dir, &l->cfg, err, errlen);
	if (ret)
		return ret;
	ret = load_manifest(l, err, errlen);
	if (ret)
		return ret;
	so.dir = l->cfg.chunk_dir;
	so.reader = true;
	so.direct_io = l->cfg.direct_io;
	ret = chunkstore_open(&so, &l->store);
	if (ret) {
		snprintf(err, errlen, "chunk store %s: %s", l->cfg.chunk_dir, strerror(-ret));
		return ret;
	}
	if (l->cfg.socket) {
		ret = fetch_client_new(l->cfg.socket, &l->fc);
		if (ret) {
			snprintf(err, errlen, "fetch socket %s: %s", l->cfg.socket, strerror(-ret));
			return ret;
		}
	}
	dopts.dir = dir;
	dopts.image = l->image;
	dopts.store = l->store;
	dopts.miss = lun_miss;
	dopts.miss_arg = l;
	dopts.io_timeout_ns = (uint64_t)l->cfg.io_timeout_ms * 1000000ull;
	dopts.on_chunk_access = lun_on_access;
	dopts.on_bad_chunk = lun_on_bad;
	ret = disk_open(&dopts, &l->disk);
	if (ret)
		snprintf(err, errlen, "disk %s: %s", dir, strerror(-ret));
	return ret;
}

int lun_open(const char *dir, struct lun **out, char *err, size_t errlen)
{
	struct lun *l;
	int ret;

	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	pthread_mutex_init(&l->touch_lock, NULL);
	ret = open_parts(l, dir, err, errlen);
	if (ret) {
		lun_close(l);
		return ret;
	}
	*out = l;
	return 0;
}

void lun_close(struct lun *l)
{
	if (!l)
		return;
	if (l->disk) {
		lun_flush_touches(l);
		disk_close(l->disk);
	}
	fetch_client_free(l->fc);
	if (l->store)
		chunkstore_close(l->store);
	if (l->image)
		manifest_free(l->image);
	lun_config_free(&l->cfg);
	pthread_mutex_destroy(&l->touch_lock);
	free(l);
}

struct disk *lun_disk(struct lun *l)
{
	return l->disk;
}

void lun_sweep(struct lun *l)
{
	disk_sweep_chunk_fds(l->disk);
	chunkstore_sweep(l->store);
}

const struct lun_config *lun_config(const struct lun *l)
{
	return &l->cfg;
}

struct fetch_client *lun_fetch_client(struct lun *l)
{
	return l->fc;
}

void lun_get_stats(struct lun *l, struct lun_stats *st)
{
	pthread_mutex_lock(&l->touch_lock);
	*st = l->st;
	pthread_mutex_unlock(&l->touch_lock);
}

struct prefetch_ctx {
	struct lun *l;
	uint64_t budget_end_ns;
	int asked;
};

static void prefetch_one(void *arg, const struct chunk_hash *h, uint64_t idx, uint32_t len)
{
	struct prefetch_ctx *pc = arg;
	uint64_t now = now_ns();

	if (now >= pc->budget_end_ns)
		return;
	if (fetch_client_prefetch(pc->l->fc, h, len, MIN(now + BEST_EFFORT_NS, pc->budget_end_ns)) == 0)
		pc->asked++;
}

int lun_prefetch(struct lun *l, uint64_t off, uint64_t len)
{
	struct prefetch_ctx pc = {.l = l, .budget_end_ns = now_ns() + PREFETCH_BUDGET_NS};
	int ret;

	if (!l->fc)
		return 0;
	ret = disk_missing_chunks(l->disk, off, len, prefetch_one, &pc);
	return ret < 0 ? ret : pc.asked;
}
