/*
 * overlay.c - a disk's copy-on-write overlay: overlay.data (grain g at byte g * 4096) and
 * overlay.map (2 bits of state per grain, A/B page copies; format in overlay_format.h).
 *
 * Why identity mapping rather than an allocator: an allocating overlay must never reuse a
 * block that a durable map entry still points at (UNMAP frees block B of grain 1, a write
 * to grain 2 takes B, a crash before the UNMAP is durable leaves grain 1 pointing at grain
 * 2's data). Placing grain g at g * 4096 of a sparse file makes that impossible by
 * construction, needs no free list, keeps the map at 2 bits per grain, turns a write of
 * many grains into one pwrite at the disk offset, and lets UNMAP release space by
 * punching a hole. This is the layout of dm-clone (a bitmap over a same-size target).
 *
 * Invariants (tests/unit/cache/test_overlay.c and tests/fault/ check them):
 *  1. Grain g's overlay data is at bytes [g * 4096, (g + 1) * 4096) of overlay.data and
 *     nowhere else; no other grain ever uses those bytes. Hence no two grains share a
 *     block and no block is ever reused by another grain.
 *  2. A grain becomes DATA in memory only after its data write has returned (disk.c), and
 *     a map page is written only after an fdatasync of overlay.data that began after the
 *     page was snapshotted: a durable DATA entry always describes durable data.
 *  3. A page copy is written only to the slot that does not hold the page's newest valid
 *     copy, with a generation larger than every earlier one; the newest valid copy is
 *     never overwritten, so a torn write loses only the update in progress (whose flush
 *     has not returned).
 *  4. A page's first copy is durable before its second slot is written. After a page's
 *     first flush at least one of its slots is always valid: a page with no valid slot
 *     and a non-zero byte is corruption, never the trace of a crash. (Slot 0 torn with
 *     slot 1 all zero is a first flush that did not finish: the page is all IMAGE.)
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
 *  9. On a HOLES overlay (the header flag, set at create only on a filesystem that never
 *     shows an allocated block before its data is on disk, at 4 KiB granularity: ext4
 *     with a journal in data=ordered mode, tmpfs without huge pages; see holes_trusted) the
 *     durable state of a grain is DATA if its map entry is DATA, or if its map entry is
 *     IMAGE and overlay.data holds its block. Hence a flush whose only changes are
 *     IMAGE -> DATA syncs overlay.data alone: the filesystem commits each new block's
 *     allocation only after its data, so "allocated" already means "data durable"
 *     (the map still describes only durable data, as invariant 2 asks). UNCLEAN is
 *     durable in the header for as long as a writer has the overlay open (written at
 *     open, so even a write killed before its first flush is covered); an open that
 *     finds UNCLEAN takes every allocated IMAGE grain as DATA; a clean close writes
 *     every page and clears it. Nothing else allocates blocks of IMAGE grains: a grain's
 *     block is written only by a data write that then sets DATA (one killed in between
 *     was in flight, and may show its new bytes; one that fails gives the blocks of
 *     its grains that are not DATA back, disk.c unwrite_grains), and ZERO -> DATA (whose block may
 *     still be allocated after a punch the filesystem refused) always writes the map.
 *     A punch of a grain whose DATA the durable map may lack flushes the map first
 *     (its ZERO state), so a crash never shows the image in place of its data.
 *     This is what makes a first write cost one device flush, as on a plain file.
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
#include <linux/magic.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/sysmacros.h>
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
	int dirty;                      /* atomic: a change the next flush must write */
	int lazy;                       /* atomic: IMAGE -> DATA changes only (invariant 9) */
	uint64_t lazy_seq;              /* atomic: counts lazy changes */
	uint64_t lazy_durable;          /* atomic: lazy_seq of the newest durable copy */
	/* Owned by the flush lock: */
	int cur_slot;                   /* slot holding the newest valid copy, -1 none */
	uint64_t gen;
};

struct ovl_table {
	uint64_t npages;
	struct ovl_table *retired_next; /* older tables, freed at close */
	struct ovl_page *pages[];       /* atomic; NULL: every grain IMAGE, never written */
};

struct overlay {
	int map_fd, data_fd;
	struct ovl_table *table; /* atomic */
	uint64_t size;           /* atomic */
	struct chunk_hash image_id;
	uint8_t nonce[16];
	pthread_mutex_t flush_mtx;
	/* Under flush_mtx: */
	uint64_t gen;       /* newest page generation used */
	uint64_t hdr_gen;
	int hdr_slot;       /* slot of the newest valid header */
	uint32_t hdr_flags; /* OVERLAY_HDR_* of the newest header */
	bool lazy_ok;       /* HOLES: IMAGE -> DATA may skip the map (invariant 9) */
	bool writer;        /* close may write (not for a read-only fsck) */
	/* The data file's fdatasync failed: the kernel has dropped the unwritten pages and
	 * a later fdatasync would succeed without them, so every later flush fails. */
	int data_err;
	/* Atomics: */
	uint64_t flush_begun, flush_done;
	uint64_t data_grains;
	uint64_t n_flushes, n_joined, n_pages_written, n_punch_unsupported;
	uint64_t n_map_skipped, n_recovered, n_punch_flushes;
	bool punch_warned;
	/* Pages found corrupt at load (tolerant loads only, for fsck). */
	uint64_t *corrupt;
	size_t ncorrupt;
};

static int flush_locked(struct overlay *o, bool all);
static int hdr_write(struct overlay *o, uint64_t size, uint32_t flags);

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

static inline uint64_t slot_off(uint64_t page, int slot)
{
	return OVERLAY_PAGES_OFF + (2 * page + (uint64_t)slot) * OVERLAY_SLOT_SIZE;
}

/* ---- header and page encoding ---- */

static void hdr_sum(const struct overlay_hdr_disk *h, uint8_t out[32])
{
	SHA256((const uint8_t *)h, offsetof(struct overlay_hdr_disk, sum), out);
}

static void hdr_encode(const struct overlay *o, uint64_t gen, uint64_t size, uint32_t flags,
		       struct overlay_hdr_disk *h)
{
	memset(h, 0, sizeof(*h));
	memcpy(h->magic, OVERLAY_HDR_MAGIC, sizeof(h->magic));
	h->version = flags ? OVERLAY_VERSION : OVERLAY_VERSION_NOFLAGS;
	h->grain = OVERLAY_GRAIN;
	h->page_grains = OVERLAY_PAGE_GRAINS;
	h->slot_size = OVERLAY_SLOT_SIZE;
	h->gen = gen;
	h->size = size;
	memcpy(h->image_id, o->image_id.b, sizeof(h->image_id));
	memcpy(h->nonce, o->nonce, sizeof(h->nonce));
	h->flags = flags;
	hdr_sum(h, h->sum);
}

static bool hdr_valid(const struct overlay_hdr_disk *h)
{
	uint8_t sum[32];

	if (memcmp(h->magic, OVERLAY_HDR_MAGIC, sizeof(h->magic)) != 0)
		return false;
	hdr_sum(h, sum);
	if (memcmp(sum, h->sum, sizeof(sum)) != 0 && !SKIP_SUMS)
		return false;
	if (h->version != (h->flags ? OVERLAY_VERSION : OVERLAY_VERSION_NOFLAGS))
		return false;
	return h->grain == OVERLAY_GRAIN &&
	       h->page_grains == OVERLAY_PAGE_GRAINS && h->slot_size == OVERLAY_SLOT_SIZE &&
	       h->size > 0 && h->size % 512 == 0 && h->size <= OVERLAY_MAX_SIZE &&
	       !(h->flags & ~OVERLAY_HDR_FLAGS) &&
	       /* UNCLEAN is only ever set on a HOLES overlay (invariant 9). */
	       (!(h->flags & OVERLAY_HDR_UNCLEAN) || (h->flags & OVERLAY_HDR_HOLES));
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

/* Validates a page copy (invariant 5); ngrains bounds the state bits that may be set. */
static bool page_valid(const uint8_t nonce[16], uint64_t page_no, uint64_t ngrains,
		       const uint8_t *slot, uint64_t *gen)
{
	struct overlay_page_hdr ph;
	uint64_t words[OVERLAY_PAGE_WORDS];
	uint8_t sum[32];
	uint64_t first = page_no * OVERLAY_PAGE_GRAINS;

	memcpy(&ph, slot, sizeof(ph));
	memcpy(words, slot + sizeof(ph), sizeof(words));
	if (memcmp(ph.magic, OVERLAY_PAGE_MAGIC, sizeof(ph.magic)) != 0 || ph.page_no != page_no)
		return false;
	page_sum(nonce, &ph, words, sum);
	if (memcmp(sum, ph.sum, sizeof(sum)) != 0 && !SKIP_SUMS)
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
	*gen = ph.gen;
	return true;
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
		bool strict = false, lazy = false;

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
				/* Invariant 9: only IMAGE -> DATA may lag in the map; a ZERO
				 * grain's block may still be allocated (a punch the filesystem
				 * refused), so ZERO -> DATA is written like any change. */
				if (st == OVL_DATA && o->lazy_ok && !(old & mask & PATTERN_ZERO))
					lazy = true;
				else
					strict = true;
			}
			g += cnt;
		}
		/* Released after the state words: a flush that sees a flag also sees them. */
		if (strict)
			__atomic_store_n(&pg->dirty, 1, __ATOMIC_RELEASE);
		if (lazy) {
			__atomic_add_fetch(&pg->lazy_seq, 1, __ATOMIC_ACQ_REL);
			__atomic_store_n(&pg->lazy, 1, __ATOMIC_RELEASE);
		}
	}
	return 0;
}

/* Whether the durable map holds every lazy change of the pages of [g, g+n). */
static bool map_covers(const struct overlay *o, uint64_t g, uint64_t n)
{
	const struct ovl_table *t = table_of(o);

	for (uint64_t p = g >> OVERLAY_PAGE_SHIFT; p <= (g + n - 1) >> OVERLAY_PAGE_SHIFT; p++) {
		const struct ovl_page *pg = p < t->npages ? page_of(t, p) : NULL;

		if (pg && __atomic_load_n(&pg->lazy_seq, __ATOMIC_ACQUIRE) !=
				  __atomic_load_n(&pg->lazy_durable, __ATOMIC_ACQUIRE))
			return false;
	}
	return true;
}

int overlay_punch(struct overlay *o, uint64_t g, uint64_t n)
{
	if (o->data_fd < 0)
		return -EBADF;
	if (!n)
		return 0;
	/* Invariant 9: a grain whose DATA lives only in the allocation must not lose its
	 * block before its new state (ZERO, set by the caller) is in the durable map, or a
	 * crash would show the image there. */
	if (o->lazy_ok && !map_covers(o, g, n)) {
		int rc = overlay_flush(o);

		if (rc < 0)
			return rc;
		__atomic_add_fetch(&o->n_punch_flushes, 1, __ATOMIC_RELAXED);
	}
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
	pthread_mutex_init(&o->flush_mtx, NULL);
	return o;
}

/* Loads page p from its two slots into t (invariants 3-5). Returns 1 when corrupt. */
static int load_page(struct overlay *o, struct ovl_table *t, uint64_t p, const uint8_t *slots,
		     overlay_report_fn report, void *arg)
{
	uint64_t ngrains = ngrains_of(o->size), gen[2];
	bool valid[2];
	int best = -1;
	struct ovl_page *pg;

	for (int s = 0; s < 2; s++) {
		valid[s] = page_valid(o->nonce, p, ngrains, slots + s * OVERLAY_SLOT_SIZE, &gen[s]);
		if (valid[s] && (best < 0 || gen[s] > gen[best]))
			best = s;
	}
	if (best < 0) {
		bool zero0 = buf_is_zero(slots, OVERLAY_SLOT_SIZE);
		bool zero1 = buf_is_zero(slots + OVERLAY_SLOT_SIZE, OVERLAY_SLOT_SIZE);

		if (zero1)
			return 0; /* never written, or a first flush torn (invariant 4) */
		report_page(report, arg, p,
			    zero0 ? "slot 1 written without slot 0" : "no valid copy (corrupt)");
		return 1;
	}
	pg = page_new();
	if (!pg)
		return -ENOMEM;
	memcpy(pg->w, slots + best * OVERLAY_SLOT_SIZE + sizeof(struct overlay_page_hdr),
	       sizeof(pg->w));
	/* Only slot 0 valid and slot 1 all zero: a first flush that had not written its
	 * second copy; the next flush writes the other slot, keeping invariant 4. */
	pg->cur_slot = best;
	pg->gen = gen[best];
	for (unsigned i = 0; i < OVERLAY_PAGE_WORDS; i++)
		o->data_grains += data_count(pg->w[i]);
	if (gen[best] > o->gen)
		o->gen = gen[best];
	t->pages[p] = pg;
	return 0;
}

/* Reads both header copies into h; *best is the index of the newest valid one, -1 when
 * neither is valid. Returns 0 or a negative errno. */
static int hdr_newest(const struct ovl_src *src, struct overlay_hdr_disk h[2], int *best)
{
	*best = -1;
	for (int s = 0; s < 2; s++) {
		int rc = src_read(src, &h[s], sizeof(h[s]), (uint64_t)s * OVERLAY_HDR_SLOT);

		if (rc < 0)
			return rc;
		if (hdr_valid(&h[s]) && (*best < 0 || h[s].gen > h[*best].gen))
			*best = s;
	}
	return 0;
}

static int overlay_load(const struct ovl_src *src, overlay_report_fn report, void *arg,
			bool tolerant, struct overlay **out)
{
	struct overlay_hdr_disk h[2];
	struct overlay *o = overlay_alloc();
	uint8_t *slots = malloc(2 * OVERLAY_SLOT_SIZE);
	uint64_t npages, bad = 0;
	int best = -1, rc;

	if (!o || !slots) {
		rc = -ENOMEM;
		goto fail;
	}
	rc = hdr_newest(src, h, &best);
	if (rc < 0)
		goto fail;
	if (best < 0) {
		if (report)
			report(arg, OVERLAY_MAP_FILE, "no valid header");
		rc = -EINVAL;
		goto fail;
	}
	o->size = h[best].size;
	o->hdr_gen = h[best].gen;
	o->hdr_slot = best;
	o->hdr_flags = h[best].flags;
	o->lazy_ok = (h[best].flags & OVERLAY_HDR_HOLES) != 0;
	memcpy(o->image_id.b, h[best].image_id, sizeof(o->image_id.b));
	memcpy(o->nonce, h[best].nonce, sizeof(o->nonce));
	npages = npages_of(o->size);
	o->table = table_new(npages);
	if (!o->table) {
		rc = -ENOMEM;
		goto fail;
	}
	for (uint64_t p = 0; p < npages; p++) {
		if (slot_off(p, 0) >= src->len)
			break; /* the rest was never written */
		rc = src_read(src, slots, 2 * OVERLAY_SLOT_SIZE, slot_off(p, 0));
		if (rc < 0)
			goto fail;
		rc = load_page(o, o->table, p, slots, report, arg);
		if (rc < 0)
			goto fail;
		if (rc == 1) {
			uint64_t *c = realloc(o->corrupt, (o->ncorrupt + 1) * sizeof(*c));

			if (!c) {
				rc = -ENOMEM;
				goto fail;
			}
			o->corrupt = c;
			o->corrupt[o->ncorrupt++] = p;
			bad++;
		}
	}
	if (bad && !tolerant) {
		rc = -EUCLEAN;
		goto fail;
	}
	free(slots);
	*out = o;
	return 0;
fail:
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

/*
 * Invariant 9 at open after an unclean stop: every IMAGE grain whose block the data file
 * holds is DATA. Its pages become lazy-dirty, written by the next map write.
 */
static int recover_allocated(struct overlay *o)
{
	uint64_t ngrains = ngrains_of(o->size);
	off_t end = (off_t)(ngrains * OVERLAY_GRAIN), pos = 0;

	/* Each pass moves pos past one allocated extent: bounded by the file's extents. */
	while (pos < end) {
		off_t d = lseek(o->data_fd, pos, SEEK_DATA), h;
		uint64_t g, g1;

		if (d < 0)
			return errno == ENXIO ? 0 : -errno;
		if (d >= end)
			break;
		h = lseek(o->data_fd, d, SEEK_HOLE);
		if (h < 0)
			return -errno;
		if (h > end)
			h = end;
		if (h <= d)
			h = d + OVERLAY_GRAIN;
		g1 = DIV_ROUND_UP((uint64_t)h, OVERLAY_GRAIN);
		for (g = (uint64_t)d / OVERLAY_GRAIN; g < g1;) {
			enum overlay_state st;
			uint64_t run = overlay_run(o, g, g1 - g, &st);

			if (st == OVL_IMAGE) {
				int rc = overlay_set(o, g, run, OVL_DATA);

				if (rc < 0)
					return rc;
				o->n_recovered += run;
			}
			g += run;
		}
		pos = h;
	}
	return 0;
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
	/* One opener at a time (tgtd's module, or fsck): a repair beside a live writer would
	 * clear UNCLEAN under it and lose its lazily mapped grains at the next crash. The
	 * lock goes with the descriptor, so a crashed holder never leaves it behind. */
	if (flock(src.fd, LOCK_EX | LOCK_NB) < 0) {
		rc = errno == EWOULDBLOCK ? -EBUSY : -errno;
		goto fail;
	}
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
	if (o->hdr_flags & OVERLAY_HDR_UNCLEAN) {
		rc = recover_allocated(o);
		if (rc < 0)
			goto fail;
		if (o->n_recovered)
			log_info("overlay %s: not closed cleanly; %llu grains written since the "
				 "map's last write recovered from the data file", dir,
				 (unsigned long long)o->n_recovered);
	}
	o->writer = !tolerant;
	/* Invariant 9: UNCLEAN for as long as a writer has the overlay open, so that any
	 * crash, even before the first flush, makes the next open read the allocation. */
	if (o->writer && o->lazy_ok && !(o->hdr_flags & OVERLAY_HDR_UNCLEAN)) {
		rc = hdr_write(o, o->size, o->hdr_flags | OVERLAY_HDR_UNCLEAN);
		if (rc < 0)
			goto fail;
	}
	*out = o;
	return 0;
fail:
	if (src.fd >= 0)
		close(src.fd);
	overlay_close(o);
	return rc;
}

int overlay_read_size(const char *dir, uint64_t *size)
{
	struct overlay_hdr_disk h[2];
	struct ovl_src src = { .fd = -1 };
	char path[PATH_MAX];
	struct stat st;
	int best, rc;

	rc = path_in(dir, OVERLAY_MAP_FILE, path, sizeof(path));
	if (rc < 0)
		return rc;
	src.fd = open(path, O_RDONLY | O_CLOEXEC);
	if (src.fd < 0)
		return -errno;
	if (fstat(src.fd, &st) < 0) {
		rc = -errno;
		close(src.fd);
		return rc;
	}
	src.len = (uint64_t)st.st_size;
	rc = hdr_newest(&src, h, &best);
	close(src.fd);
	if (rc < 0)
		return rc;
	if (best < 0)
		return -EUCLEAN;
	*size = h[best].size;
	return 0;
}

int overlay_open(const char *dir, struct overlay **out)
{
	return overlay_open_mode(dir, false, NULL, NULL, out);
}

/* Clean close: writes every page the map still lacks, then clears UNCLEAN (invariant 9). */
static int close_clean(struct overlay *o)
{
	struct ovl_table *t = table_of(o);
	bool pending = (o->hdr_flags & OVERLAY_HDR_UNCLEAN) != 0;
	int rc;

	for (uint64_t p = 0; p < t->npages && !pending; p++) {
		struct ovl_page *pg = page_of(t, p);

		pending = pg && (__atomic_load_n(&pg->lazy, __ATOMIC_ACQUIRE) ||
				 __atomic_load_n(&pg->dirty, __ATOMIC_ACQUIRE));
	}
	if (!pending)
		return 0;
	pthread_mutex_lock(&o->flush_mtx);
	rc = flush_locked(o, true);
	if (rc == 0 && (o->hdr_flags & OVERLAY_HDR_UNCLEAN))
		rc = hdr_write(o, o->size, o->hdr_flags & ~OVERLAY_HDR_UNCLEAN);
	pthread_mutex_unlock(&o->flush_mtx);
	return rc;
}

void overlay_close(struct overlay *o)
{
	struct ovl_table *t, *next;

	if (!o)
		return;
	if (o->writer && o->map_fd >= 0 && o->data_fd >= 0) {
		int rc = close_clean(o);

		if (rc < 0)
			log_warn("overlay: clean close failed (%s); the next open recovers from the "
				 "data file", strerror(-rc));
	}
	if (o->map_fd >= 0)
		close(o->map_fd);
	if (o->data_fd >= 0)
		close(o->data_fd);
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

/*
 * The ext4 filesystem on dev journals in data=ordered or data=journal mode: the effective
 * options in /proc/fs/ext4/<device>/options (mountinfo omits a default mode taken from the
 * superblock, and an ext4 without a journal shows no data= at all). Unknown counts as no.
 */
static bool ext4_data_ordered(dev_t dev)
{
	char path[PATH_MAX], link[256], opt[256];
	const char *name;
	ssize_t n;
	FILE *f;

	snprintf(path, sizeof(path), "/sys/dev/block/%u:%u", major(dev), minor(dev));
	n = readlink(path, link, sizeof(link) - 1);
	if (n <= 0)
		return false;
	link[n] = '\0';
	name = strrchr(link, '/');
	name = name ? name + 1 : link;
	snprintf(path, sizeof(path), "/proc/fs/ext4/%s/options", name);
	f = fopen(path, "re");
	if (!f)
		return false;
	/* one option per line */
	while (fgets(opt, sizeof(opt), f)) {
		if (!strcmp(opt, "data=ordered\n") || !strcmp(opt, "data=journal\n")) {
			fclose(f);
			return true;
		}
	}
	fclose(f);
	return false;
}

/* The tmpfs behind dev may back files with huge pages (mount option huge=, or the
 * system-wide shmem_enabled "force"): SEEK_DATA then reports a whole 2 MiB folio as data,
 * and recovery would take 511 unwritten grains as written. Unknown counts as yes. */
static bool tmpfs_may_use_huge_pages(dev_t dev)
{
	FILE *f = fopen("/proc/self/mountinfo", "re");
	char line[4096], shmem[256] = "";
	bool found = false, huge = true;

	if (!f)
		return true;
	/* "36 35 0:21 / /dev/shm rw,nosuid - tmpfs tmpfs rw,size=65536k,huge=always" */
	for (int i = 0; i < 100000 && fgets(line, sizeof(line), f); i++) {
		unsigned maj, min;
		const char *sep;

		if (sscanf(line, "%*u %*u %u:%u", &maj, &min) != 2 || maj != major(dev) ||
		    min != minor(dev))
			continue;
		sep = strstr(line, " - ");
		if (!sep)
			continue;
		found = true;
		huge = strstr(sep, "huge=") && !strstr(sep, "huge=never");
		break;
	}
	fclose(f);
	f = fopen("/sys/kernel/mm/transparent_hugepage/shmem_enabled", "re");
	if (f) {
		if (!fgets(shmem, sizeof(shmem), f))
			shmem[0] = '\0';
		fclose(f);
	}
	return !found || huge || strstr(shmem, "[force]");
}

/*
 * Whether fd's filesystem may carry IMAGE -> DATA grains in its allocation alone
 * (invariant 9): it must report the fresh, sparse file as one hole (so SEEK_DATA tells
 * allocated blocks from holes), and it must be one whose crash behaviour is known never
 * to show an allocated block before its data, at 4 KiB granularity: ext4 with a journal in
 * data=ordered or data=journal mode, or tmpfs without huge pages (which loses everything
 * together). Anything else (ext4 without a journal or in data=writeback, tmpfs with huge
 * pages, other filesystems) keeps the strict map.
 */
static bool holes_trusted(int fd)
{
	struct statfs sfs;
	struct stat st;

	if (lseek(fd, 0, SEEK_DATA) >= 0 || errno != ENXIO)
		return false;
	if (fstatfs(fd, &sfs) < 0 || fstat(fd, &st) < 0)
		return false;
	if (sfs.f_type == TMPFS_MAGIC)
		return !tmpfs_may_use_huge_pages(st.st_dev);
	return sfs.f_type == EXT4_SUPER_MAGIC && ext4_data_ordered(st.st_dev);
}

int overlay_create(const char *dir, const struct chunk_hash *image_id, uint64_t size)
{
	char map_path[PATH_MAX], data_path[PATH_MAX];
	struct overlay tmp;
	uint8_t *buf = NULL;
	uint32_t flags;
	int fd = -1, rc;

	if (size == 0 || size % 512 || size > OVERLAY_MAX_SIZE)
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
	if (getrandom(tmp.nonce, sizeof(tmp.nonce), 0) != (ssize_t)sizeof(tmp.nonce)) {
		rc = -EIO;
		goto out;
	}
	buf = calloc(1, OVERLAY_PAGES_OFF);
	if (!buf) {
		rc = -ENOMEM;
		goto out;
	}
	/* Both header slots valid from the start, so a torn grow always leaves one. */
	flags = holes_trusted(fd) ? OVERLAY_HDR_HOLES : 0;
	if (!flags)
		log_info("overlay %s: the filesystem's holes are not trusted; every flush that "
			 "allocates writes the map", dir);
	hdr_encode(&tmp, 1, size, flags, (struct overlay_hdr_disk *)buf);
	hdr_encode(&tmp, 1, size, flags, (struct overlay_hdr_disk *)(buf + OVERLAY_HDR_SLOT));
	/* The map appears atomically, after the data file is durable (invariant 6). */
	rc = write_file_atomic(map_path, buf, OVERLAY_PAGES_OFF);
out:
	free(buf);
	close(fd);
	return rc;
}

struct flush_item {
	struct ovl_page *pg;
	uint64_t page_no;
	uint64_t lazy_seq; /* the page's lazy_seq before its words were snapshotted */
	int slot;
	bool first;
};

static int write_slot(struct overlay *o, const struct flush_item *it, int slot, uint64_t gen,
		      uint8_t *buf, const uint64_t *words)
{
	page_encode(o->nonce, it->page_no, gen, words, buf);
	__atomic_add_fetch(&o->n_pages_written, 1, __ATOMIC_RELAXED);
	return pwrite_full(o->map_fd, buf, OVERLAY_SLOT_SIZE, slot_off(it->page_no, slot));
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
	/* A first page's copy in its slot is now durable, and may be its only valid one:
	 * from here on, should anything fail, its next write goes to the other slot with a
	 * larger generation (invariants 3, 4), not to this slot as a first flush again. */
	for (size_t i = 0; i < n; i++) {
		if (items[i].first) {
			items[i].pg->cur_slot = items[i].slot;
			items[i].pg->gen = gen;
		}
	}
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

/* Writes a new header copy (to the slot not holding the newest) and syncs it. */
static int hdr_write(struct overlay *o, uint64_t size, uint32_t flags)
{
	struct overlay_hdr_disk h;
	int rc;

	hdr_encode(o, o->hdr_gen + 1, size, flags, &h);
	rc = pwrite_full(o->map_fd, &h, sizeof(h), (uint64_t)(1 - o->hdr_slot) * OVERLAY_HDR_SLOT);
	if (rc == 0 && fdatasync(o->map_fd) < 0)
		rc = -errno;
	if (rc < 0)
		return rc; /* the same slot and generation are used again next time */
	o->hdr_gen++;
	o->hdr_slot = 1 - o->hdr_slot;
	o->hdr_flags = flags;
	return 0;
}

/*
 * Syncs overlay.data. A writeback error is remembered: the kernel has dropped the pages
 * it could not write and reports the error once per descriptor, so a later sync would
 * succeed without them. Every sync after it fails until the disk is reopened. Called with
 * flush_mtx held.
 */
static int data_sync(struct overlay *o)
{
	int rc;

	if (o->data_err)
		return o->data_err;
	if (fdatasync(o->data_fd) == 0)
		return 0;
	rc = -errno;
	if (rc == -EIO || rc == -ENOSPC || rc == -EDQUOT) {
		o->data_err = rc;
		log_error("overlay: writing its data file failed (%s); acknowledged writes may "
			  "be lost, and every later flush fails until the disk is reopened",
			  strerror(-rc));
	}
	return rc;
}

/*
 * One flush under flush_mtx. A page with a strict change (dirty) makes the flush write
 * the map: every changed page, lazy ones too, is snapshotted, the data synced, the pages
 * written and synced (invariants 2-4). Without one, syncing the data is the whole flush:
 * the IMAGE -> DATA grains it made durable are in the data file's allocation, which
 * UNCLEAN tells the next open to read (invariant 9). all: write lazy pages as well
 * (clean close).
 */
static int flush_locked(struct overlay *o, bool all)
{
	struct ovl_table *t = table_of(o);
	struct flush_item *items = NULL;
	uint64_t (*snap)[512] = NULL;
	uint8_t *buf = NULL;
	size_t n = 0, cap = 0;
	uint64_t gen = o->gen + 1;
	bool strict = all, lazy = false;
	int rc = 0;

	if (o->data_err)
		return o->data_err;
	for (uint64_t p = 0; p < t->npages && !strict; p++) {
		struct ovl_page *pg = page_of(t, p);

		if (pg && __atomic_load_n(&pg->dirty, __ATOMIC_ACQUIRE))
			strict = true;
		if (pg && __atomic_load_n(&pg->lazy, __ATOMIC_ACQUIRE))
			lazy = true;
	}
	for (uint64_t p = 0; p < t->npages && strict; p++) {
		struct ovl_page *pg = page_of(t, p);
		uint64_t lazy_seq;
		int was_dirty, was_lazy;

		if (!pg)
			continue;
		/* Both exchanged: the page's copy covers both kinds of change. */
		was_dirty = __atomic_exchange_n(&pg->dirty, 0, __ATOMIC_ACQ_REL);
		was_lazy = __atomic_exchange_n(&pg->lazy, 0, __ATOMIC_ACQ_REL);
		if (!was_dirty && !was_lazy)
			continue;
		if (n == cap) {
			size_t ncap = cap ? 2 * cap : 16;
			void *ni = realloc(items, ncap * sizeof(*items));
			void *ns;

			if (ni)
				items = ni;
			ns = ni ? realloc(snap, ncap * sizeof(*snap)) : NULL;
			if (!ni || !ns) {
				__atomic_store_n(&pg->dirty, 1, __ATOMIC_RELEASE);
				rc = -ENOMEM;
				goto out;
			}
			snap = ns;
			cap = ncap;
		}
		/* lazy_seq first: every lazy change it counts is in the words read after. */
		lazy_seq = __atomic_load_n(&pg->lazy_seq, __ATOMIC_ACQUIRE);
		for (unsigned i = 0; i < OVERLAY_PAGE_WORDS; i++)
			snap[n][i] = __atomic_load_n(&pg->w[i], __ATOMIC_ACQUIRE);
		items[n] = (struct flush_item){ .pg = pg, .page_no = p, .lazy_seq = lazy_seq,
						.slot = pg->cur_slot < 0 ? 0 : 1 - pg->cur_slot,
						.first = pg->cur_slot < 0 };
		n++;
	}
	/* Invariant 2: the data behind every snapshotted DATA grain is durable first. */
	rc = data_sync(o);
	if (rc)
		goto out;
	if (!strict) {
		/* Invariant 9: the grains left out of the map are recovered at open. */
		if (lazy && !(o->hdr_flags & OVERLAY_HDR_UNCLEAN))
			rc = hdr_write(o, o->size, o->hdr_flags | OVERLAY_HDR_UNCLEAN);
		if (rc == 0 && lazy)
			__atomic_add_fetch(&o->n_map_skipped, 1, __ATOMIC_RELAXED);
		goto out;
	}
	if (n) {
		buf = malloc(OVERLAY_SLOT_SIZE);
		if (!buf) {
			rc = -ENOMEM;
			goto out;
		}
		rc = flush_pages(o, items, snap, n, gen, buf);
		if (rc < 0)
			goto out;
		o->gen = gen;
		for (size_t i = 0; i < n; i++) {
			items[i].pg->cur_slot = items[i].slot;
			items[i].pg->gen = gen;
			__atomic_store_n(&items[i].pg->lazy_durable, items[i].lazy_seq,
					 __ATOMIC_RELEASE);
		}
	}
out:
	if (rc < 0) {
		/* The pages may not be durable: write them again next time. Their slot
		 * bookkeeping is unchanged (but for first pages whose first copy is durable,
		 * flush_pages), so the next write goes to a non-newest slot (invariant 3).
		 * gen is burnt so it is never reused. */
		o->gen = gen;
		for (size_t i = 0; i < n; i++)
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
	if (o->data_err) {
		rc = o->data_err;
		goto out;
	}
	if (ftruncate(o->data_fd, (off_t)(ngrains_of(new_size) * OVERLAY_GRAIN)) < 0) {
		rc = -errno;
		goto out;
	}
	rc = data_sync(o);
	if (rc)
		goto out;
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
	rc = hdr_write(o, new_size, o->hdr_flags);
	if (rc < 0)
		goto out;
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
	st->map_skipped = __atomic_load_n(&o->n_map_skipped, __ATOMIC_RELAXED);
	st->recovered = o->n_recovered;
	st->punch_flushes = __atomic_load_n(&o->n_punch_flushes, __ATOMIC_RELAXED);
	st->lazy_map = o->lazy_ok;
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
	/* Make the page exist and be written to both slots, as a first flush does. */
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
	if (rc == -EINVAL || rc == -EUCLEAN || rc == -ENOENT)
		return 1; /* reported: no header, missing or short data file */
	if (rc < 0)
		return rc;
	problems = (int)o->ncorrupt;
	/* Grains recovered after an unclean stop are the normal trace of a crash, not a
	 * problem (overlay_open_mode logs them). A repair writes the rebuilt pages and, at
	 * close, the recovered grains. */
	o->writer = repair;
	if (repair && o->ncorrupt) {
		for (size_t i = 0; i < o->ncorrupt; i++) {
			rc = rebuild_page(o, o->corrupt[i]);
			if (rc < 0)
				goto out;
			report_page(report, arg, o->corrupt[i],
				    "rebuilt from the data file (unmapped grains read the image)");
		}
		rc = overlay_flush(o);
		if (rc < 0)
			goto out;
	}
	rc = problems;
out:
	overlay_close(o);
	return rc;
}
