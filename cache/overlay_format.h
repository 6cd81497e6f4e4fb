/*
 * overlay_format.h - the on-disk format of a disk's overlay allocation map (overlay.map).
 *
 * The overlay of a disk is two files in the disk's directory:
 *   overlay.data  sparse, as large as the disk: grain g (4 KiB) lives at byte g * 4096.
 *                 The mapping is the identity, so no grain ever shares or reuses another
 *                 grain's block (see the invariants in overlay.c for why this matters).
 *   overlay.map   the state of every grain, 2 bits each: IMAGE (read the base image),
 *                 DATA (read overlay.data), ZERO (reads as zeros).
 *
 * overlay.map layout (all integers little-endian):
 *
 *   0        4096     8192                    8192 + 2 * SLOT       8192 + 4 * SLOT
 *   +--------+--------+-----------+-----------+-----------+-----------+------
 *   | hdr A  | hdr B  | page 0 s0 | page 0 s1 | page 1 s0 | page 1 s1 | ...
 *   +--------+--------+-----------+-----------+-----------+-----------+------
 *
 *   header slot (4096 bytes, struct overlay_hdr_disk then zeros):
 *     magic "RDOVMAP\0" | version | grain | page_grains | slot_size | gen | size |
 *     image_id[32] | nonce[16] | flags | reserved | sum[32] = SHA-256 of the bytes before it
 *   page slot (OVERLAY_SLOT_SIZE = 64 + 4096 bytes):
 *     magic "RDOVPAG\0" | page_no | gen | reserved | sum[32] | 512 x le64 state words
 *     sum = SHA-256(nonce of the overlay | slot header up to sum | state words)
 *   state word w of page p holds grains p * 16384 + w * 32 + [0, 32), grain i of the word
 *   in bits 2i..2i+1.
 *
 * Both the header and each page have two slots (A/B). An update writes the slot that does
 * not hold the newest valid copy, with a larger generation, so a torn write only ever
 * damages the copy being replaced; at load the valid slot with the larger generation
 * wins. A page whose both slots are all zero bytes was never written: all its grains are
 * IMAGE. A page with no valid slot but some non-zero byte is corrupt.
 */
#ifndef RACKDISK_CACHE_OVERLAY_FORMAT_H
#define RACKDISK_CACHE_OVERLAY_FORMAT_H

#include <stdint.h>

/* Version 2 = flags in use. A header with no flag is written as version 1, which every
 * reader understands alike; one with flags is version 2, which readers older than the
 * flags refuse rather than read a map that may lag behind the data file. */
#define OVERLAY_VERSION 2u
#define OVERLAY_VERSION_NOFLAGS 1u
#define OVERLAY_GRAIN 4096u
#define OVERLAY_GRAIN_SHIFT 12
#define OVERLAY_HDR_MAGIC "RDOVMAP"  /* 8 bytes with the NUL */
#define OVERLAY_PAGE_MAGIC "RDOVPAG" /* 8 bytes with the NUL */
#define OVERLAY_HDR_SLOT 4096u
#define OVERLAY_PAGE_WORDS 512u
#define OVERLAY_PAGE_GRAINS (OVERLAY_PAGE_WORDS * 32u) /* 16384 grains = 64 MiB of disk */
#define OVERLAY_PAGE_SHIFT 14
#define OVERLAY_SLOT_SIZE (sizeof(struct overlay_page_hdr) + OVERLAY_PAGE_WORDS * 8u)
#define OVERLAY_PAGES_OFF (2u * OVERLAY_HDR_SLOT)
/* The largest disk an overlay describes: bounds the page table a (hostile) header can ask
 * for to 1 Mi entries. */
#define OVERLAY_MAX_SIZE (64ull << 40)

/*
 * Header flags. Headers written before flags existed hold 0 there (the bytes were
 * reserved and zero): a strict overlay, closed cleanly. Any other bit makes a header
 * invalid, so a future flag is never silently ignored.
 *   HOLES    the data file's filesystem reports holes truthfully and never shows an
 *            allocated block before its data is on disk (probed at create); the map may
 *            then lag behind the data file for grains going IMAGE -> DATA (overlay.c,
 *            invariant 9).
 *   UNCLEAN  set (durably) when a writer opens the overlay, cleared by a clean close that
 *            wrote every page: while set, open takes every IMAGE grain whose block the
 *            data file holds as DATA.
 */
#define OVERLAY_HDR_HOLES 0x1u
#define OVERLAY_HDR_UNCLEAN 0x2u
#define OVERLAY_HDR_FLAGS (OVERLAY_HDR_HOLES | OVERLAY_HDR_UNCLEAN)

/* Grain states (2 bits). 3 is invalid and makes a page corrupt. */
enum overlay_state {
	OVL_IMAGE = 0,
	OVL_DATA = 1,
	OVL_ZERO = 2,
};

struct overlay_hdr_disk {
	char magic[8];
	uint32_t version;
	uint32_t grain;
	uint32_t page_grains;
	uint32_t slot_size;
	uint64_t gen;
	uint64_t size;
	uint8_t image_id[32];
	uint8_t nonce[16];
	uint32_t flags; /* OVERLAY_HDR_* */
	uint8_t reserved[20];
	uint8_t sum[32];
};

struct overlay_page_hdr {
	char magic[8];
	uint64_t page_no;
	uint64_t gen;
	uint64_t reserved;
	uint8_t sum[32];
};

_Static_assert(sizeof(struct overlay_hdr_disk) == 144, "overlay header layout");
_Static_assert(sizeof(struct overlay_hdr_disk) <= OVERLAY_HDR_SLOT, "header fits its slot");
_Static_assert(sizeof(struct overlay_page_hdr) == 64, "overlay page header layout");
_Static_assert(OVERLAY_SLOT_SIZE == 4160, "overlay page slot size");
_Static_assert(OVERLAY_PAGE_GRAINS == 1u << OVERLAY_PAGE_SHIFT, "page grains power of two");
_Static_assert(OVERLAY_GRAIN == 1u << OVERLAY_GRAIN_SHIFT, "grain power of two");
_Static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
	       "the format is little-endian and the code stores it natively");

#endif
