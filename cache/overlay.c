/*
 * overlay.c - a disk's copy-on-write overlay: overlay.data (grain g at byte g * 4096) and
 * overlay.map (2 bits of state per grain, A/B home copies of each page and a log;
 * format version 2 in overlay_format.h).
 *
 * Why identity mapping rather than an allocator: an allocating overlay must never reuse a
 * block that a durable map entry still points at (UNMAP frees block B of grain 1, a write
 * to grain 2 takes B, a crash before the UNMAP is durable leaves grain 1 pointing at grain
 * 2's data). Placing grain g at g * 4096 of a sparse file makes that impossible by
 * construction, needs no free list, keeps the map at 2 bits per grain, turns a write of
 * many grains into one pwrite at the disk offset, and lets UNMAP release space by
 * punching a hole. This is the layout of dm-clone (a bitmap over a same-size target).
 *
 * Why a log: a flush must sync the data file and then the map, so its map step is pure
 * overhead over a plain file's fdatasync. Writing each dirty page to its home slot costs
 * scattered buffered writes plus a second fdatasync; appending all of them as one record
 * to a pre-written log region with a single O_DIRECT|O_DSYNC pwrite costs one sequential
 * write and one cache flush, and commits no filesystem metadata (invariant 10). Pages
 * reach their home slots at a checkpoint, when a flush does not fit the log's remaining
 * space or one record: rare (4 MiB of log holds ~110 flushes of 8 pages).
 *
 * Invariants (tests/unit/cache/test_overlay.c and tests/fault/ check them):
 *  1. Grain g's overlay data is at bytes [g * 4096, (g + 1) * 4096) of overlay.data and
 *     nowhere else; no other grain ever uses those bytes. Hence no two grains share a
 *     block and no block is ever reused by another grain.
 *  2. A grain becomes DATA in memory only after its data write has returned (disk.c), and
 *     a map page copy (home slot or log record) is written only after an fdatasync of
 *     overlay.data that began after the page was snapshotted: a durable DATA entry always
 *     describes durable data. A checkpoint snapshots the log-resident pages it moves home
 *     before that same fdatasync, never after.
 *  3. A home copy is written only to the slot that does not hold the page's newest valid
 *     home copy, with a generation larger than every earlier one; a log record is written
 *     only at the end of the record chain since the last checkpoint, and the log restarts
 *     from its start only after a checkpoint has made every log-resident page durable at
 *     home; the checkpoint then zeroes the log's first block, so every record a later
 *     chain walk accepts is newer than the home copies (a stale record never stands in
 *     for corrupt home slots). So the newest valid copy of a page is never overwritten:
 *     a torn write loses only the update in progress (whose flush has not returned). A
 *     record write that fails forces the next flush to checkpoint, so no record is ever
 *     appended after a possibly torn one (which would hide it from the chain walk).
 *  4. A page's first home copy is durable before its second slot is written. After a
 *     page's first home write at least one of its slots is always valid: a page with no
 *     valid slot, a non-zero byte and no valid log copy is corruption, never the trace of
 *     a crash. (Slot 0 torn with slot 1 all zero is a first home write that did not
 *     finish: the log, or nothing, holds the page.)
 *  5. Every header and page copy carries a SHA-256 over its contents (pages also over the
 *     overlay's nonce); a copy with a wrong sum, magic, page number or state value (3),
 *     or with state bits beyond the disk's end, is never used.
 *  6. overlay.data is at least ngrains * 4096 bytes before a header with that size is
 *     durable (create, grow); the size never shrinks.
 *  7. overlay_flush() returns 0 only when every overlay_set() and data write that
 *     completed before it was called is durable: it joins only a flush that began
 *     (snapshotted) after the call.
 *  8. ZERO and IMAGE grains never read overlay.data, so a hole punched by an UNMAP that
 *     is not yet durable can only make a grain read zeros: the UNMAP's own result.
 *  9. Generations strictly increase per flush across home slots and the log (a failed
 *     flush burns its generation), and at load o->gen is the largest generation of any
 *     valid home copy or chained record, winning or not. Records past the chain's end
 *     predate the last checkpoint, whose home copies carry a larger generation: a new
 *     copy always beats every stale one.
 * 10. The log region is written (zeros) when the map is created, so a record's
 *     O_DIRECT|O_DSYNC write never allocates or converts extents and its sync commits no
 *     filesystem metadata. Where O_DIRECT is refused (tmpfs) the log is written buffered
 *     with O_DSYNC: the same ordering, only slower.
 * 11. Format version 1 maps are refused at open with a clear error (-EPROTONOSUPPORT),
 *     never misread: pre-release, no upgrade path.
 */
#include "cache/overlay.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/sha.h>

#include "common/log.h"
#include "common/util.h"

/* The fuzzer build accepts wrong sums so that mutated inputs reach the checks behind
 * them (the convention libFuzzer users share; never defined in a product build). */
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
#define SKIP_SUMS 1
#else
#define SKIP_SUMS 0
#endif

#define PATTERN_DATA 0x5555555555555555ull
#define PATTERN_ZERO 0xaaaaaaaaaaaaaaaaull

struct ovl_page {
	uint64_t w[OVERLAY_PAGE_WORDS]; /* atomic access only */
	int dirty;                      /* atomic: changed since the last snapshot */
	/* Owned by the flush lock: */
	int cur_slot;                   /* home slot with the newest valid home copy, -1 none */
	bool in_log;                    /* the newest durable copy is a log record's */
	bool queued;                    /* in the flush being built */
	uint64_t gen;
};

struct ovl_table {
	uint64_t npages;
	struct ovl_table *retired_next; /* older tables, freed at close */
	struct ovl_page *pages[];       /* atomic; NULL: every grain IMAGE, never written */
};

struct overlay {
	int map_fd, data_fd;
	int log_fd;              /* map file, O_DIRECT|O_DSYNC (or O_DSYNC); -1 without log */
	uint32_t log_blocks;     /* from the header; 0: no log */
	struct ovl_table *table; /* atomic */
	uint64_t size;           /* atomic */
	struct chunk_hash image_id;
	uint8_t nonce[16];
	pthread_mutex_t flush_mtx;
	/* Under flush_mtx: */
	uint64_t gen;       /* newest page generation used */
	uint64_t hdr_gen;
	int hdr_slot;       /* slot of the newest valid header */
	uint32_t log_pos;   /* next record's block; log_blocks: full, checkpoint next */
	uint8_t *log_buf;   /* one record, 4 KiB-aligned for O_DIRECT */
	/* Atomics: */
	uint64_t flush_begun, flush_done;
	uint64_t data_grains;
	uint64_t n_flushes, n_joined, n_pages_written, n_punch_unsupported;
	uint64_t n_log_records, n_checkpoints;
	bool punch_warned;
	/* Pages found corrupt at load (tolerant loads only, for fsck). */
	uint64_t *corrupt;
	size_t ncorrupt;
};

/* A map image to parse: a file or a memory buffer. Reads past the end give zeros. */
struct ovl_src {
	const uint8_t *mem;
	int fd;
	uint64_t len;
};

static int src_read(const struct ovl_src *s, void *buf, size_t len, uint64_t off)
{
	size_t have = 0;

	if (off < s->len)
		have = (size_t)MIN((uint64_t)len, s->len - off);
	if (have) {
		if (s->mem) {
			memcpy(buf, s->mem + off, have);
		} else {
			int rc = pread_full(s->fd, buf, have, off);
			if (rc < 0)
				return rc;
		}
	}
	memset((uint8_t *)buf + have, 0, len - have);
	return 0;
}

static inline uint64_t ngrains_of(uint64_t size)
{
	return DIV_ROUND_UP(size, OVERLAY_GRAIN);
}

static inline uint64_t npages_of(uint64_t size)
{
	return DIV_ROUND_UP(ngrains_of(size), OVERLAY_PAGE_GRAINS);
}

static inline uint64_t slot_off(const struct overlay *o, uint64_t page, int slot)
{
	return OVERLAY_PAGES_OFF(o->log_blocks) + (2 * page + (uint64_t)slot) * OVERLAY_SLOT_SIZE;
}

static inline uint64_t log_off(uint32_t block)
{
	return OVERLAY_LOG_OFF + (uint64_t)block * OVERLAY_LOG_BLOCK;
}

/* ---- header and page encoding ---- */

static void hdr_sum(const struct overlay_hdr_disk *h, uint8_t out[32])
{
	SHA256((const uint8_t *)h, offsetof(struct overlay_hdr_disk, sum), out);
}

static void hdr_encode(const struct overlay *o, uint64_t gen, uint64_t size,
		       struct overlay_hdr_disk *h)
{
	memset(h, 0, sizeof(*h));
	memcpy(h->magic, OVERLAY_HDR_MAGIC, sizeof(h->magic));
	h->version = OVERLAY_VERSION;
	h->grain = OVERLAY_GRAIN;
	h->page_grains = OVERLAY_PAGE_GRAINS;
	h->slot_size = OVERLAY_SLOT_SIZE;
	h->gen = gen;
	h->size = size;
	memcpy(h->image_id, o->image_id.b, sizeof(h->image_id));
	memcpy(h->nonce, o->nonce, sizeof(h->nonce));
	h->log_blocks = o->log_blocks;
	hdr_sum(h, h->sum);
}

static bool log_blocks_valid(uint32_t n)
{
	return n == 0 || (n >= 2 && n <= OVERLAY_LOG_MAX);
}

/* 1: valid; 0: invalid; -1: a sound header of an older format version (invariant 11). */
static int hdr_valid(const struct overlay_hdr_disk *h)
{
	uint8_t sum[32];

	if (memcmp(h->magic, OVERLAY_HDR_MAGIC, sizeof(h->magic)) != 0)
		return 0;
	hdr_sum(h, sum);
	if (memcmp(sum, h->sum, sizeof(sum)) != 0 && !SKIP_SUMS)
		return 0;
	if (h->version != OVERLAY_VERSION)
		return h->version >= 1 && h->version < OVERLAY_VERSION ? -1 : 0;
	return h->grain == OVERLAY_GRAIN && h->page_grains == OVERLAY_PAGE_GRAINS &&
	       h->slot_size == OVERLAY_SLOT_SIZE && h->size > 0 && h->size % 512 == 0 &&
	       h->size <= OVERLAY_MAX_SIZE && log_blocks_valid(h->log_blocks);
}

static void page_sum(const uint8_t nonce[16], const struct overlay_page_hdr *ph,
		     const uint64_t *words, uint8_t out[32])
{
	enum { HEAD = offsetof(struct overlay_page_hdr, sum) };
	uint8_t in[16 + HEAD + OVERLAY_PAGE_WORDS * 8];

	/* One contiguous buffer: SHA256() is the one-shot call OpenSSL 3 keeps. */
	memcpy(in, nonce, 16);
	memcpy(in + 16, ph, HEAD);
	memcpy(in + 16 + HEAD, words, OVERLAY_PAGE_WORDS * 8);
	SHA256(in, sizeof(in), out);
}

/* Encodes one page copy into slot[OVERLAY_SLOT_SIZE]. */
static void page_encode(const uint8_t nonce[16], uint64_t page_no, uint64_t gen,
			const uint64_t *words, uint8_t *slot)
{
	struct overlay_page_hdr ph;

	memset(&ph, 0, sizeof(ph));
	memcpy(ph.magic, OVERLAY_PAGE_MAGIC, sizeof(ph.magic));
	ph.page_no = page_no;
	ph.gen = gen;
	page_sum(nonce, &ph, words, ph.sum);
	memcpy(slot, &ph, sizeof(ph));
	memcpy(slot + sizeof(ph), words, OVERLAY_PAGE_WORDS * 8);
}

/* Validates a page copy's words against its header ph (which names page_no, and whose
 * sum is checked) (invariant 5); ngrains bounds the state bits that may be set. */
static bool words_valid(const uint8_t nonce[16], const struct overlay_page_hdr *ph,
			uint64_t ngrains, const uint64_t *words)
{
	uint8_t sum[32];
	uint64_t first = ph->page_no * OVERLAY_PAGE_GRAINS;

	page_sum(nonce, ph, words, sum);
	if (memcmp(sum, ph->sum, sizeof(sum)) != 0 && !SKIP_SUMS)
		return false;
	for (unsigned i = 0; i < OVERLAY_PAGE_WORDS; i++) {
		uint64_t w = words[i];
		uint64_t g0 = first + (uint64_t)i * 32;

		if (w & (w >> 1) & PATTERN_DATA)
			return false; /* a grain in state 3 */
		if (g0 + 32 > ngrains) {
			uint64_t keep = g0 >= ngrains ? 0 : ngrains - g0;
			if (keep == 0 ? w != 0 : (w >> (2 * keep)) != 0)
				return false; /* state beyond the disk's end */
		}
	}
	return true;
}

/* Validates a home slot's copy of page page_no. */
static bool page_valid(const uint8_t nonce[16], uint64_t page_no, uint64_t ngrains,
		       const uint8_t *slot, uint64_t *gen)
{
	struct overlay_page_hdr ph;
	uint64_t words[OVERLAY_PAGE_WORDS];

	memcpy(&ph, slot, sizeof(ph));
	memcpy(words, slot + sizeof(ph), sizeof(words));
	if (memcmp(ph.magic, OVERLAY_PAGE_MAGIC, sizeof(ph.magic)) != 0 || ph.page_no != page_no ||
	    !words_valid(nonce, &ph, ngrains, words))
		return false;
	*gen = ph.gen;
	return true;
}

/* The page header a copy of page_no at gen carries (its sum still to be set). */
static void page_hdr_init(struct overlay_page_hdr *ph, uint64_t page_no, uint64_t gen)
{
	memset(ph, 0, sizeof(*ph));
	memcpy(ph->magic, OVERLAY_PAGE_MAGIC, sizeof(ph->magic));
	ph->page_no = page_no;
	ph->gen = gen;
}

static void log_hdr_sum(const uint8_t nonce[16], const struct overlay_log_hdr *lh,
			uint8_t out[32])
{
	enum { HEAD = offsetof(struct overlay_log_hdr, sum) };
	uint8_t in[16 + OVERLAY_LOG_BLOCK];
	size_t elen = (size_t)lh->count * sizeof(struct overlay_log_entry);

	memcpy(in, nonce, 16);
	memcpy(in + 16, lh, HEAD);
	memcpy(in + 16 + HEAD, lh->e, elen);
	SHA256(in, 16 + HEAD + elen, out);
}

/* ---- in-memory map ---- */

static struct ovl_table *table_new(uint64_t npages)
{
	struct ovl_table *t = calloc(1, sizeof(*t) + npages * sizeof(t->pages[0]));

	if (t)
		t->npages = npages;
	return t;
}

static struct ovl_page *page_new(void)
{
	/* aligned_alloc wants a size that is a multiple of the alignment. */
	struct ovl_page *pg = aligned_alloc(64, (sizeof(*pg) + 63) & ~(size_t)63);

	if (!pg)
		return NULL;
	memset(pg, 0, sizeof(*pg));
	pg->cur_slot = -1;
	return pg;
}

static inline struct ovl_table *table_of(const struct overlay *o)
{
	return __atomic_load_n(&o->table, __ATOMIC_ACQUIRE);
}

static inline struct ovl_page *page_of(const struct ovl_table *t, uint64_t p)
{
	return __atomic_load_n(&t->pages[p], __ATOMIC_ACQUIRE);
}

static inline uint64_t pattern_of(enum overlay_state st)
{
	return st == OVL_DATA ? PATTERN_DATA : st == OVL_ZERO ? PATTERN_ZERO : 0;
}

/* Grains in state DATA (01) in word w. */
static inline unsigned data_count(uint64_t w)
{
	return (unsigned)__builtin_popcountll(w & ~(w >> 1) & PATTERN_DATA);
}

uint64_t overlay_size(const struct overlay *o)
{
	return __atomic_load_n(&o->size, __ATOMIC_ACQUIRE);
}

uint64_t overlay_ngrains(const struct overlay *o)
{
	return ngrains_of(overlay_size(o));
}

const struct chunk_hash *overlay_image_id(const struct overlay *o)
{
	return &o->image_id;
}

int overlay_data_fd(const struct overlay *o)
{
	return o->data_fd;
}

uint64_t overlay_data_grains(const struct overlay *o)
{
	return __atomic_load_n(&o->data_grains, __ATOMIC_RELAXED);
}

enum overlay_state overlay_state_of(const struct overlay *o, uint64_t g)
{
	const struct ovl_table *t = table_of(o);
	const struct ovl_page *pg;
	uint64_t w;

	if ((g >> OVERLAY_PAGE_SHIFT) >= t->npages)
		return OVL_IMAGE;
	pg = page_of(t, g >> OVERLAY_PAGE_SHIFT);
	if (!pg)
		return OVL_IMAGE;
	w = __atomic_load_n(&pg->w[(g & (OVERLAY_PAGE_GRAINS - 1)) >> 5], __ATOMIC_ACQUIRE);
	return (enum overlay_state)((w >> (2 * (g & 31))) & 3);
}

uint64_t overlay_run(const struct overlay *o, uint64_t g, uint64_t n, enum overlay_state *st)
{
	const struct ovl_table *t = table_of(o);
	enum overlay_state s0 = overlay_state_of(o, g);
	uint64_t pat = pattern_of(s0);
	uint64_t done = 0;

	*st = s0;
	while (done < n) {
		uint64_t cur = g + done;
		uint64_t p = cur >> OVERLAY_PAGE_SHIFT;
		const struct ovl_page *pg = p < t->npages ? page_of(t, p) : NULL;
		unsigned bit = (unsigned)(cur & 31);
		uint64_t in_word = MIN(32u - bit, n - done);
		uint64_t x;

		if (!pg) {
			if (s0 != OVL_IMAGE)
				break;
			done += MIN(OVERLAY_PAGE_GRAINS - (cur & (OVERLAY_PAGE_GRAINS - 1)),
				    n - done);
			continue;
		}
		x = __atomic_load_n(&pg->w[(cur & (OVERLAY_PAGE_GRAINS - 1)) >> 5],
				    __ATOMIC_ACQUIRE);
		x = (x ^ pat) >> (2 * bit);
		if (in_word < 32)
			x &= (1ull << (2 * in_word)) - 1;
		if (x == 0) {
			done += in_word;
			continue;
		}
		done += (uint64_t)__builtin_ctzll(x) / 2;
		break;
	}
	return MAX(done, 1);
}

static struct ovl_page *page_get_or_alloc(struct ovl_table *t, uint64_t p)
{
	struct ovl_page *pg = page_of(t, p), *expect = NULL;

	if (pg)
		return pg;
	pg = page_new();
	if (!pg)
		return NULL;
	if (!__atomic_compare_exchange_n(&t->pages[p], &expect, pg, false, __ATOMIC_ACQ_REL,
					 __ATOMIC_ACQUIRE)) {
		free(pg);
		pg = expect;
	}
	return pg;
}

int overlay_set(struct overlay *o, uint64_t g, uint64_t n, enum overlay_state st)
{
	struct ovl_table *t = table_of(o);
	uint64_t pat = pattern_of(st);
	uint64_t end = g + n;

	if (end > ngrains_of(overlay_size(o)) || end < g)
		return -ERANGE;
	while (g < end) {
		uint64_t p = g >> OVERLAY_PAGE_SHIFT;
		struct ovl_page *pg = page_of(t, p);
		uint64_t page_end = MIN(end, (p + 1) << OVERLAY_PAGE_SHIFT);
		bool changed = false;

		if (!pg && st == OVL_IMAGE) {
			g = page_end;
			continue;
		}
		if (!pg && !(pg = page_get_or_alloc(t, p)))
			return -ENOMEM;
		while (g < page_end) {
			unsigned bit = (unsigned)(g & 31);
			uint64_t cnt = MIN(32u - bit, page_end - g);
			uint64_t mask = (cnt == 32 ? ~0ull : ((1ull << (2 * cnt)) - 1)) << (2 * bit);
			uint64_t *wp = &pg->w[(g & (OVERLAY_PAGE_GRAINS - 1)) >> 5];
			uint64_t old = __atomic_load_n(wp, __ATOMIC_ACQUIRE), nw;

			do {
				nw = (old & ~mask) | (pat & mask);
			} while (nw != old && !__atomic_compare_exchange_n(wp, &old, nw, true,
									   __ATOMIC_ACQ_REL,
									   __ATOMIC_ACQUIRE));
			if (nw != old) {
				int64_t delta = (int64_t)data_count(nw) - (int64_t)data_count(old);

				__atomic_add_fetch(&o->data_grains, (uint64_t)delta,
						   __ATOMIC_RELAXED);
				changed = true;
			}
			g += cnt;
		}
		/* Released after the state words: a flush that sees dirty also sees them. */
		if (changed)
			__atomic_store_n(&pg->dirty, 1, __ATOMIC_RELEASE);
	}
	return 0;
}

int overlay_punch(struct overlay *o, uint64_t g, uint64_t n)
{
	if (o->data_fd < 0)
		return -EBADF;
	if (fallocate(o->data_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		      (off_t)(g * OVERLAY_GRAIN), (off_t)(n * OVERLAY_GRAIN)) == 0)
		return 0;
	if (errno != EOPNOTSUPP)
		return -errno;
	/* The grains read as zeros through their ZERO state anyway (invariant 8); only
	 * the space is not given back. Degraded, so counted and logged once. */
	__atomic_add_fetch(&o->n_punch_unsupported, 1, __ATOMIC_RELAXED);
	if (!__atomic_exchange_n(&o->punch_warned, true, __ATOMIC_RELAXED))
		log_warn("overlay: filesystem cannot punch holes; UNMAP releases no space");
	return 0;
}

/* ---- loading ---- */

static void report_page(overlay_report_fn report, void *arg, uint64_t p, const char *what)
{
	char where[48];

	if (!report)
		return;
	snprintf(where, sizeof(where), "page %llu", (unsigned long long)p);
	report(arg, where, what);
}

static struct overlay *overlay_alloc(void)
{
	struct overlay *o = calloc(1, sizeof(*o));

	if (!o)
		return NULL;
	o->map_fd = -1;
	o->data_fd = -1;
	o->log_fd = -1;
	pthread_mutex_init(&o->flush_mtx, NULL);
	return o;
}

/* A valid page copy found in the log: its words are at byte off of the map. */
struct log_copy {
	uint64_t page_no, gen, off;
};

static int log_copy_cmp(const void *a, const void *b)
{
	const struct log_copy *x = a, *y = b;

	if (x->page_no != y->page_no)
		return x->page_no < y->page_no ? -1 : 1;
	return (x->gen < y->gen) - (x->gen > y->gen); /* newest first */
}

/*
 * Walks the log's record chain (overlay_format.h), collecting the valid page copies
 * sorted by page with only each page's newest kept. Every valid record's generation
 * raises o->gen (invariant 9). Bounded by the log's blocks.
 */
static int log_scan(const struct ovl_src *src, struct overlay *o, struct log_copy **out,
		    size_t *nout)
{
	uint64_t ngrains = ngrains_of(o->size), npages = npages_of(o->size), prev = 0;
	struct overlay_log_hdr *lh = NULL;
	uint64_t *words = NULL;
	struct log_copy *c = NULL;
	size_t n = 0, cap = 0, k = 0;
	uint32_t pos = 0;
	int rc = 0;

	*out = NULL;
	*nout = 0;
	if (!o->log_blocks)
		return 0;
	lh = malloc(OVERLAY_LOG_BLOCK);
	words = malloc(OVERLAY_LOG_BLOCK);
	if (!lh || !words) {
		rc = -ENOMEM;
		goto out;
	}
	while (pos + 1 < o->log_blocks && log_off(pos) < src->len) {
		uint8_t sum[32];

		rc = src_read(src, lh, OVERLAY_LOG_BLOCK, log_off(pos));
		if (rc < 0)
			goto out;
		if (memcmp(lh->magic, OVERLAY_LOG_MAGIC, sizeof(lh->magic)) != 0 || lh->count == 0 ||
		    lh->count > OVERLAY_LOG_REC_PAGES || lh->count > o->log_blocks - pos - 1 ||
		    lh->gen <= prev)
			break;
		log_hdr_sum(o->nonce, lh, sum);
		if (memcmp(sum, lh->sum, sizeof(sum)) != 0 && !SKIP_SUMS)
			break;
		if (lh->gen > o->gen)
			o->gen = lh->gen;
		for (uint32_t i = 0; i < lh->count; i++) {
			struct overlay_page_hdr ph;
			uint64_t off = log_off(pos + 1 + i);

			if (lh->e[i].page_no >= npages)
				continue;
			rc = src_read(src, words, OVERLAY_LOG_BLOCK, off);
			if (rc < 0)
				goto out;
			page_hdr_init(&ph, lh->e[i].page_no, lh->gen);
			memcpy(ph.sum, lh->e[i].sum, sizeof(ph.sum));
			if (!words_valid(o->nonce, &ph, ngrains, words))
				continue;
			if (n == cap) {
				size_t ncap = cap ? 2 * cap : 64;
				struct log_copy *nc = realloc(c, ncap * sizeof(*c));

				if (!nc) {
					rc = -ENOMEM;
					goto out;
				}
				c = nc;
				cap = ncap;
			}
			c[n++] = (struct log_copy){ .page_no = lh->e[i].page_no, .gen = lh->gen,
						    .off = off };
		}
		prev = lh->gen;
		pos += 1 + lh->count;
	}
	rc = 0;
	if (n) {
		qsort(c, n, sizeof(*c), log_copy_cmp);
		for (size_t i = 0; i < n; i++)
			if (k == 0 || c[i].page_no != c[k - 1].page_no)
				c[k++] = c[i];
	}
	*out = c;
	*nout = k;
	c = NULL;
out:
	free(c);
	free(words);
	free(lh);
	return rc;
}

/*
 * Loads page p from its two home slots and its newest log copy lc (NULL: none) into t
 * (invariants 3-5). Returns 1 when corrupt.
 */
static int load_page(struct overlay *o, struct ovl_table *t, uint64_t p, const uint8_t *slots,
		     const struct log_copy *lc, const struct ovl_src *src,
		     overlay_report_fn report, void *arg)
{
	uint64_t ngrains = ngrains_of(o->size), gen[2];
	bool valid[2], from_log;
	int best = -1, rc;
	struct ovl_page *pg;

	for (int s = 0; s < 2; s++) {
		valid[s] = page_valid(o->nonce, p, ngrains, slots + s * OVERLAY_SLOT_SIZE, &gen[s]);
		if (valid[s] && (best < 0 || gen[s] > gen[best]))
			best = s;
	}
	if (best < 0 && !lc) {
		bool zero0 = buf_is_zero(slots, OVERLAY_SLOT_SIZE);
		bool zero1 = buf_is_zero(slots + OVERLAY_SLOT_SIZE, OVERLAY_SLOT_SIZE);

		if (zero1)
			return 0; /* never written, or a first home write torn (invariant 4) */
		report_page(report, arg, p,
			    zero0 ? "slot 1 written without slot 0" : "no valid copy (corrupt)");
		return 1;
	}
	from_log = lc && (best < 0 || lc->gen > gen[best]);
	pg = page_new();
	if (!pg)
		return -ENOMEM;
	if (from_log) {
		rc = src_read(src, pg->w, sizeof(pg->w), lc->off);
		if (rc < 0) {
			free(pg);
			return rc;
		}
	} else {
		memcpy(pg->w, slots + best * OVERLAY_SLOT_SIZE + sizeof(struct overlay_page_hdr),
		       sizeof(pg->w));
	}
	/* Only slot 0 valid and slot 1 all zero: a first home write that had not written its
	 * second copy; the next home write goes to the other slot, keeping invariant 4. */
	pg->cur_slot = best;
	pg->in_log = from_log;
	pg->gen = from_log ? lc->gen : gen[best];
	for (unsigned i = 0; i < OVERLAY_PAGE_WORDS; i++)
		o->data_grains += data_count(pg->w[i]);
	if (pg->gen > o->gen)
		o->gen = pg->gen;
	t->pages[p] = pg;
	return 0;
}

static int add_corrupt(struct overlay *o, uint64_t p)
{
	uint64_t *c = realloc(o->corrupt, (o->ncorrupt + 1) * sizeof(*c));

	if (!c)
		return -ENOMEM;
	o->corrupt = c;
	o->corrupt[o->ncorrupt++] = p;
	return 0;
}

static int overlay_load(const struct ovl_src *src, overlay_report_fn report, void *arg,
			bool tolerant, struct overlay **out)
{
	struct overlay_hdr_disk h[2];
	struct overlay *o = overlay_alloc();
	uint8_t *slots = malloc(2 * OVERLAY_SLOT_SIZE);
	struct log_copy *lc = NULL;
	size_t nlc = 0, li = 0;
	uint64_t npages, p;
	bool in_log = false, old = false;
	int best = -1, rc;

	if (!o || !slots) {
		rc = -ENOMEM;
		goto fail;
	}
	for (int s = 0; s < 2; s++) {
		rc = src_read(src, &h[s], sizeof(h[s]), (uint64_t)s * OVERLAY_HDR_SLOT);
		if (rc < 0)
			goto fail;
		rc = hdr_valid(&h[s]);
		old |= rc < 0;
		if (rc > 0 && (best < 0 || h[s].gen > h[best].gen))
			best = s;
	}
	if (best < 0) {
		if (report)
			report(arg, OVERLAY_MAP_FILE,
			       old ? "overlay format version 1 is no longer supported "
				     "(pre-release format change): recreate the disk"
				   : "no valid header");
		rc = old ? -EPROTONOSUPPORT : -EINVAL;
		goto fail;
	}
	o->size = h[best].size;
	o->hdr_gen = h[best].gen;
	o->hdr_slot = best;
	o->log_blocks = h[best].log_blocks;
	memcpy(o->image_id.b, h[best].image_id, sizeof(o->image_id.b));
	memcpy(o->nonce, h[best].nonce, sizeof(o->nonce));
	npages = npages_of(o->size);
	o->table = table_new(npages);
	if (!o->table) {
		rc = -ENOMEM;
		goto fail;
	}
	rc = log_scan(src, o, &lc, &nlc);
	if (rc < 0)
		goto fail;
	for (p = 0; p < npages; p++) {
		const struct log_copy *c = li < nlc && lc[li].page_no == p ? &lc[li++] : NULL;

		if (slot_off(o, p, 0) >= src->len && !c) {
			if (li >= nlc)
				break; /* the rest was never written */
			p = lc[li].page_no - 1; /* skip to the next page in the log */
			continue;
		}
		rc = src_read(src, slots, 2 * OVERLAY_SLOT_SIZE, slot_off(o, p, 0));
		if (rc < 0)
			goto fail;
		rc = load_page(o, o->table, p, slots, c, src, report, arg);
		if (rc < 0)
			goto fail;
		if (rc == 1 && (rc = add_corrupt(o, p)) < 0)
			goto fail;
		in_log |= o->table->pages[p] && o->table->pages[p]->in_log;
	}
	if (o->ncorrupt && !tolerant) {
		rc = -EUCLEAN;
		goto fail;
	}
	/* Log-resident pages: the next flush checkpoints before it writes any record, so no
	 * new record can overwrite a winning one (invariant 3). */
	o->log_pos = in_log ? o->log_blocks : 0;
	free(lc);
	free(slots);
	*out = o;
	return 0;
fail:
	free(lc);
	free(slots);
	overlay_close(o);
	return rc;
}

int overlay_parse(const void *buf, size_t len, overlay_report_fn report, void *arg,
		  struct overlay **out)
{
	struct ovl_src src = { .mem = buf, .fd = -1, .len = len };

	return overlay_load(&src, report, arg, false, out);
}

static int path_in(const char *dir, const char *name, char *buf, size_t len)
{
	int n = snprintf(buf, len, "%s/%s", dir, name);

	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

/* Opens dir's files and loads the map; tolerant keeps corrupt pages (as IMAGE). */
static int overlay_open_mode(const char *dir, bool tolerant, overlay_report_fn report, void *arg,
			     struct overlay **out)
{
	char path[PATH_MAX];
	struct ovl_src src = { .fd = -1 };
	struct overlay *o = NULL;
	struct stat st;
	int rc;

	rc = path_in(dir, OVERLAY_MAP_FILE, path, sizeof(path));
	if (rc < 0)
		return rc;
	src.fd = open(path, O_RDWR | O_CLOEXEC);
	if (src.fd < 0)
		return -errno;
	if (fstat(src.fd, &st) < 0) {
		rc = -errno;
		goto fail;
	}
	src.len = (uint64_t)st.st_size;
	rc = overlay_load(&src, report, arg, tolerant, &o);
	if (rc < 0)
		goto fail;
	o->map_fd = src.fd;
	src.fd = -1;
	rc = path_in(dir, OVERLAY_DATA_FILE, path, sizeof(path));
	if (rc < 0)
		goto fail;
	o->data_fd = open(path, O_RDWR | O_CLOEXEC);
	if (o->data_fd < 0) {
		rc = -errno;
		if (report)
			report(arg, OVERLAY_DATA_FILE, "missing");
		goto fail;
	}
	if (fstat(o->data_fd, &st) < 0) {
		rc = -errno;
		goto fail;
	}
	if ((uint64_t)st.st_size < ngrains_of(o->size) * OVERLAY_GRAIN) {
		/* Invariant 6 says this cannot happen: something else shortened the file. */
		if (report)
			report(arg, OVERLAY_DATA_FILE, "shorter than the disk");
		rc = -EUCLEAN;
		goto fail;
	}
	if (o->log_blocks) {
		rc = path_in(dir, OVERLAY_MAP_FILE, path, sizeof(path));
		if (rc < 0)
			goto fail;
		/* Invariant 10: O_DIRECT where the filesystem has it, O_DSYNC always. */
		o->log_fd = open(path, O_RDWR | O_CLOEXEC | O_DIRECT | O_DSYNC);
		if (o->log_fd < 0 && errno == EINVAL)
			o->log_fd = open(path, O_RDWR | O_CLOEXEC | O_DSYNC);
		if (o->log_fd < 0) {
			rc = -errno;
			goto fail;
		}
		if (posix_memalign((void **)&o->log_buf, OVERLAY_LOG_BLOCK,
				   (1 + OVERLAY_LOG_REC_PAGES) * OVERLAY_LOG_BLOCK)) {
			o->log_buf = NULL;
			rc = -ENOMEM;
			goto fail;
		}
	}
	*out = o;
	return 0;
fail:
	if (src.fd >= 0)
		close(src.fd);
	overlay_close(o);
	return rc;
}

static void log_report(void *arg, const char *path, const char *problem)
{
	log_error("overlay %s/%s: %s", (const char *)arg, path, problem);
}

int overlay_open(const char *dir, struct overlay **out)
{
	int rc = overlay_open_mode(dir, false, NULL, NULL, out);

	if (rc == -EPROTONOSUPPORT) /* say why: the caller only sees the errno */
		overlay_open_mode(dir, false, log_report, (void *)dir, out);
	return rc;
}

void overlay_close(struct overlay *o)
{
	struct ovl_table *t, *next;

	if (!o)
		return;
	if (o->map_fd >= 0)
		close(o->map_fd);
	if (o->data_fd >= 0)
		close(o->data_fd);
	if (o->log_fd >= 0)
		close(o->log_fd);
	free(o->log_buf);
	for (t = o->table; t; t = next) {
		next = t->retired_next;
		/* Retired tables share their pages with the current one. */
		if (t == o->table)
			for (uint64_t p = 0; p < t->npages; p++)
				free(t->pages[p]);
		free(t);
	}
	pthread_mutex_destroy(&o->flush_mtx);
	free(o->corrupt);
	free(o);
}

/* ---- creating, flushing, growing ---- */

int overlay_create_log(const char *dir, const struct chunk_hash *image_id, uint64_t size,
		       uint32_t log_blocks)
{
	char map_path[PATH_MAX], data_path[PATH_MAX];
	uint64_t map_len = OVERLAY_PAGES_OFF(log_blocks);
	struct overlay tmp;
	uint8_t *buf = NULL;
	int fd = -1, rc;

	if (size == 0 || size % 512 || size > OVERLAY_MAX_SIZE || !log_blocks_valid(log_blocks))
		return -EINVAL;
	rc = mkdir_p(dir, 0755);
	if (rc < 0)
		return rc;
	if ((rc = path_in(dir, OVERLAY_MAP_FILE, map_path, sizeof(map_path))) < 0 ||
	    (rc = path_in(dir, OVERLAY_DATA_FILE, data_path, sizeof(data_path))) < 0)
		return rc;
	if (access(map_path, F_OK) == 0)
		return -EEXIST;
	/* A data file without a map is the trace of a create that did not finish. */
	fd = open(data_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		return -errno;
	if (ftruncate(fd, (off_t)(ngrains_of(size) * OVERLAY_GRAIN)) < 0 || fsync(fd) < 0) {
		rc = -errno;
		goto out;
	}
	memset(&tmp, 0, sizeof(tmp));
	tmp.image_id = *image_id;
	tmp.log_blocks = log_blocks;
	if (getrandom(tmp.nonce, sizeof(tmp.nonce), 0) != (ssize_t)sizeof(tmp.nonce)) {
		rc = -EIO;
		goto out;
	}
	/* The log's zeros are written, not a hole or fallocated (invariant 10). */
	buf = calloc(1, map_len);
	if (!buf) {
		rc = -ENOMEM;
		goto out;
	}
	/* Both header slots valid from the start, so a torn grow always leaves one. */
	hdr_encode(&tmp, 1, size, (struct overlay_hdr_disk *)buf);
	hdr_encode(&tmp, 1, size, (struct overlay_hdr_disk *)(buf + OVERLAY_HDR_SLOT));
	/* The map appears atomically, after the data file is durable (invariant 6). */
	rc = write_file_atomic(map_path, buf, map_len);
out:
	free(buf);
	close(fd);
	return rc;
}

int overlay_create(const char *dir, const struct chunk_hash *image_id, uint64_t size)
{
	return overlay_create_log(dir, image_id, size, OVERLAY_LOG_BLOCKS);
}

struct flush_item {
	struct ovl_page *pg;
	uint64_t page_no;
	int slot;
	bool first;
};

static int write_slot(struct overlay *o, const struct flush_item *it, int slot, uint64_t gen,
		      uint8_t *buf, const uint64_t *words)
{
	page_encode(o->nonce, it->page_no, gen, words, buf);
	__atomic_add_fetch(&o->n_pages_written, 1, __ATOMIC_RELAXED);
	return pwrite_full(o->map_fd, buf, OVERLAY_SLOT_SIZE, slot_off(o, it->page_no, slot));
}

/* Writes the snapshotted pages (invariants 3, 4). */
static int flush_pages(struct overlay *o, struct flush_item *items, uint64_t (*snap)[512],
		       size_t n, uint64_t gen, uint8_t *buf)
{
	size_t nfirst = 0;
	int rc;

	for (size_t i = 0; i < n; i++) {
		rc = write_slot(o, &items[i], items[i].slot, gen, buf, snap[i]);
		if (rc < 0)
			return rc;
		nfirst += items[i].first;
	}
	if (fdatasync(o->map_fd) < 0)
		return -errno;
	if (!nfirst)
		return 0;
	for (size_t i = 0; i < n; i++) {
		if (!items[i].first)
			continue;
		rc = write_slot(o, &items[i], 1 - items[i].slot, gen, buf, snap[i]);
		if (rc < 0)
			return rc;
	}
	if (fdatasync(o->map_fd) < 0)
		return -errno;
	return 0;
}

/* Appends the snapshotted pages as one record at log_pos: one O_DIRECT|O_DSYNC write. */
static int log_append(struct overlay *o, const struct flush_item *items, uint64_t (*snap)[512],
		      size_t n, uint64_t gen)
{
	struct overlay_log_hdr *lh = (struct overlay_log_hdr *)o->log_buf;
	int rc;

	memset(lh, 0, OVERLAY_LOG_BLOCK);
	memcpy(lh->magic, OVERLAY_LOG_MAGIC, sizeof(lh->magic));
	lh->gen = gen;
	lh->count = (uint32_t)n;
	for (size_t i = 0; i < n; i++) {
		struct overlay_page_hdr ph;

		page_hdr_init(&ph, items[i].page_no, gen);
		page_sum(o->nonce, &ph, snap[i], lh->e[i].sum);
		lh->e[i].page_no = items[i].page_no;
		memcpy(o->log_buf + (1 + i) * OVERLAY_LOG_BLOCK, snap[i], OVERLAY_LOG_BLOCK);
	}
	log_hdr_sum(o->nonce, lh, lh->sum);
	rc = pwrite_full(o->log_fd, o->log_buf, (1 + n) * OVERLAY_LOG_BLOCK, log_off(o->log_pos));
	__atomic_add_fetch(&o->n_pages_written, n, __ATOMIC_RELAXED);
	__atomic_add_fetch(&o->n_log_records, 1, __ATOMIC_RELAXED);
	return rc;
}

/* Adds page p (snapshotting its words) to the flush being built. */
static int queue_page(struct flush_item **items, uint64_t (**snap)[512], size_t *n,
		      size_t *cap, struct ovl_page *pg, uint64_t p)
{
	if (*n == *cap) {
		size_t ncap = *cap ? 2 * *cap : 16;
		void *ni = realloc(*items, ncap * sizeof(**items));
		void *ns;

		if (ni)
			*items = ni;
		ns = ni ? realloc(*snap, ncap * sizeof(**snap)) : NULL;
		if (!ni || !ns)
			return -ENOMEM;
		*snap = ns;
		*cap = ncap;
	}
	for (unsigned i = 0; i < OVERLAY_PAGE_WORDS; i++)
		(*snap)[*n][i] = __atomic_load_n(&pg->w[i], __ATOMIC_ACQUIRE);
	(*items)[*n] = (struct flush_item){ .pg = pg, .page_no = p,
					    .slot = pg->cur_slot < 0 ? 0 : 1 - pg->cur_slot,
					    .first = pg->cur_slot < 0 };
	pg->queued = true;
	(*n)++;
	return 0;
}

/*
 * One flush under flush_mtx: snapshot dirty pages, sync data, then either append them to
 * the log as one record or, when they do not fit (or force_home), checkpoint: write them
 * and every log-resident page to their home slots, sync, and restart the log.
 */
static int flush_locked(struct overlay *o, bool force_home)
{
	struct ovl_table *t = table_of(o);
	struct flush_item *items = NULL;
	uint64_t (*snap)[512] = NULL;
	uint8_t *buf = NULL;
	size_t n = 0, cap = 0, ndirty = 0;
	uint64_t gen = o->gen + 1;
	bool to_log = false;
	int rc = 0;

	for (uint64_t p = 0; p < t->npages; p++) {
		struct ovl_page *pg = page_of(t, p);

		if (!pg || !__atomic_exchange_n(&pg->dirty, 0, __ATOMIC_ACQ_REL))
			continue;
		rc = queue_page(&items, &snap, &n, &cap, pg, p);
		if (rc < 0) {
			__atomic_store_n(&pg->dirty, 1, __ATOMIC_RELEASE);
			ndirty = n;
			goto out;
		}
	}
	ndirty = n;
	to_log = !force_home && o->log_fd >= 0 && n <= OVERLAY_LOG_REC_PAGES &&
		 o->log_pos < o->log_blocks && n < o->log_blocks - o->log_pos;
	if (!to_log && (n || force_home)) {
		/* Checkpoint: the log-resident pages go home too, snapshotted before the data
		 * sync below (invariant 2). */
		for (uint64_t p = 0; p < t->npages; p++) {
			struct ovl_page *pg = page_of(t, p);

			if (!pg || !pg->in_log || pg->queued)
				continue;
			rc = queue_page(&items, &snap, &n, &cap, pg, p);
			if (rc < 0)
				goto out;
		}
	}
	/* Invariant 2: the data behind every snapshotted DATA grain is durable first. */
	if (fdatasync(o->data_fd) < 0) {
		rc = -errno;
		goto out;
	}
	if (!n)
		goto out;
	if (to_log) {
		rc = log_append(o, items, snap, n, gen);
		if (rc < 0) {
			/* The record may be torn: never append after it (invariant 3). */
			o->log_pos = o->log_blocks;
			goto out;
		}
		o->log_pos += (uint32_t)(1 + n);
		for (size_t i = 0; i < n; i++) {
			items[i].pg->in_log = true;
			items[i].pg->gen = gen;
		}
	} else {
		buf = malloc(OVERLAY_SLOT_SIZE);
		if (!buf) {
			rc = -ENOMEM;
			goto out;
		}
		rc = flush_pages(o, items, snap, n, gen, buf);
		if (rc == 0 && o->log_fd >= 0) {
			/* Only now, with every page durable at home: end the chain (invariant 3). */
			memset(o->log_buf, 0, OVERLAY_LOG_BLOCK);
			rc = pwrite_full(o->log_fd, o->log_buf, OVERLAY_LOG_BLOCK, log_off(0));
		}
		if (rc < 0)
			goto out;
		for (size_t i = 0; i < n; i++) {
			items[i].pg->cur_slot = items[i].slot;
			items[i].pg->in_log = false;
			items[i].pg->gen = gen;
		}
		/* Every page is home and durable: the log may be overwritten from its start. */
		o->log_pos = 0;
		__atomic_add_fetch(&o->n_checkpoints, 1, __ATOMIC_RELAXED);
	}
out:
	/* Invariant 9: a generation is used once, whatever happened. */
	o->gen = gen;
	for (size_t i = 0; i < n; i++) {
		items[i].pg->queued = false;
		/* The pages may not be durable: write them again next time. Their home slot
		 * bookkeeping is unchanged, so the next home write goes to the same, non-newest
		 * slot (invariant 3). Log-resident pages queued by a checkpoint stay in_log and
		 * need no re-dirtying (they are written again by the next checkpoint). */
		if (rc < 0 && i < ndirty)
			__atomic_store_n(&items[i].pg->dirty, 1, __ATOMIC_RELEASE);
	}
	free(buf);
	free(snap);
	free(items);
	return rc;
}

int overlay_flush(struct overlay *o)
{
	uint64_t start = __atomic_load_n(&o->flush_begun, __ATOMIC_ACQUIRE);
	uint64_t me;
	int rc;

	if (o->map_fd < 0 || o->data_fd < 0)
		return -EBADF;
	pthread_mutex_lock(&o->flush_mtx);
	/* Invariant 7: a flush that began after this call covers it (group commit). */
	if (__atomic_load_n(&o->flush_done, __ATOMIC_ACQUIRE) > start) {
		pthread_mutex_unlock(&o->flush_mtx);
		__atomic_add_fetch(&o->n_joined, 1, __ATOMIC_RELAXED);
		return 0;
	}
	me = __atomic_add_fetch(&o->flush_begun, 1, __ATOMIC_ACQ_REL);
	rc = flush_locked(o, false);
	if (rc == 0)
		__atomic_store_n(&o->flush_done, me, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&o->flush_mtx);
	__atomic_add_fetch(&o->n_flushes, 1, __ATOMIC_RELAXED);
	return rc;
}

int overlay_grow(struct overlay *o, uint64_t new_size)
{
	struct overlay_hdr_disk h;
	struct ovl_table *t, *old;
	uint64_t npages;
	int rc = 0;

	if (o->map_fd < 0 || o->data_fd < 0)
		return -EBADF;
	if (new_size % 512 || new_size > OVERLAY_MAX_SIZE)
		return -EINVAL;
	pthread_mutex_lock(&o->flush_mtx);
	if (new_size <= o->size)
		goto out;
	/* Invariant 6: the data file first. */
	if (ftruncate(o->data_fd, (off_t)(ngrains_of(new_size) * OVERLAY_GRAIN)) < 0 ||
	    fsync(o->data_fd) < 0) {
		rc = -errno;
		goto out;
	}
	old = table_of(o);
	npages = npages_of(new_size);
	if (npages > old->npages) {
		t = table_new(npages);
		if (!t) {
			rc = -ENOMEM;
			goto out;
		}
		memcpy(t->pages, old->pages, old->npages * sizeof(old->pages[0]));
		/* Readers may still hold the old table: keep it until close. */
		t->retired_next = old;
		__atomic_store_n(&o->table, t, __ATOMIC_RELEASE);
	}
	hdr_encode(o, o->hdr_gen + 1, new_size, &h);
	rc = pwrite_full(o->map_fd, &h, sizeof(h), (uint64_t)(1 - o->hdr_slot) * OVERLAY_HDR_SLOT);
	if (rc == 0 && fdatasync(o->map_fd) < 0)
		rc = -errno;
	if (rc < 0)
		goto out;
	o->hdr_gen++;
	o->hdr_slot = 1 - o->hdr_slot;
	__atomic_store_n(&o->size, new_size, __ATOMIC_RELEASE);
out:
	pthread_mutex_unlock(&o->flush_mtx);
	return rc;
}

void overlay_get_stats(const struct overlay *o, struct overlay_stats *st)
{
	st->flushes = __atomic_load_n(&o->n_flushes, __ATOMIC_RELAXED);
	st->flushes_joined = __atomic_load_n(&o->n_joined, __ATOMIC_RELAXED);
	st->pages_written = __atomic_load_n(&o->n_pages_written, __ATOMIC_RELAXED);
	st->punch_unsupported = __atomic_load_n(&o->n_punch_unsupported, __ATOMIC_RELAXED);
	st->log_records = __atomic_load_n(&o->n_log_records, __ATOMIC_RELAXED);
	st->checkpoints = __atomic_load_n(&o->n_checkpoints, __ATOMIC_RELAXED);
}

/* ---- fsck ---- */

/* Rebuilds a corrupt page from the data file's allocation: allocated grains DATA, holes
 * IMAGE (the common state of an unwritten grain; an UNMAPped one reads its image again,
 * which the report says). */
static int rebuild_page(struct overlay *o, uint64_t p)
{
	uint64_t g0 = p * OVERLAY_PAGE_GRAINS;
	uint64_t g1 = MIN(g0 + OVERLAY_PAGE_GRAINS, ngrains_of(o->size));
	off_t pos = (off_t)(g0 * OVERLAY_GRAIN), end = (off_t)(g1 * OVERLAY_GRAIN);
	int rc;

	while (pos < end) {
		off_t d = lseek(o->data_fd, pos, SEEK_DATA), h;

		if (d < 0 || d >= end)
			break;
		h = lseek(o->data_fd, d, SEEK_HOLE);
		if (h < 0 || h > end)
			h = end;
		rc = overlay_set(o, (uint64_t)d / OVERLAY_GRAIN,
				 DIV_ROUND_UP((uint64_t)h, OVERLAY_GRAIN) - (uint64_t)d / OVERLAY_GRAIN,
				 OVL_DATA);
		if (rc < 0)
			return rc;
		pos = h;
	}
	/* Make the page exist and be written to both home slots by the checkpoint below, as a
	 * first home write does. */
	if (!page_get_or_alloc(o->table, p))
		return -ENOMEM;
	__atomic_store_n(&o->table->pages[p]->dirty, 1, __ATOMIC_RELEASE);
	return 0;
}

int overlay_fsck(const char *dir, bool repair, overlay_report_fn report, void *arg)
{
	struct overlay *o = NULL;
	int rc, problems;

	rc = overlay_open_mode(dir, true, report, arg, &o);
	if (rc == -EINVAL || rc == -EUCLEAN || rc == -ENOENT || rc == -EPROTONOSUPPORT)
		return 1; /* reported: no header, old format, missing or short data file */
	if (rc < 0)
		return rc;
	problems = (int)o->ncorrupt;
	if (repair && o->ncorrupt) {
		for (size_t i = 0; i < o->ncorrupt; i++) {
			rc = rebuild_page(o, o->corrupt[i]);
			if (rc < 0)
				goto out;
			report_page(report, arg, o->corrupt[i],
				    "rebuilt from the data file (unmapped grains read the image)");
		}
		/* A checkpoint: every page home, the bad slots overwritten. */
		pthread_mutex_lock(&o->flush_mtx);
		rc = flush_locked(o, true);
		pthread_mutex_unlock(&o->flush_mtx);
		if (rc < 0)
			goto out;
	}
	rc = problems;
out:
	overlay_close(o);
	return rc;
}
