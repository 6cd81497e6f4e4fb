/*
 * hugebuf.h - a buffer for chunk data that is faulted in once and then kept.
 *
 * A fetch worker receives, decompresses and hashes every chunk in buffers of about a
 * chunk's size. Memory from malloc for those is either a fresh mmap per chunk or heap
 * memory glibc may hand back to the kernel, and each 4 KiB page is then faulted in again:
 * on a paravirtualized guest a fault costs ~14 us, so fresh memory is written at ~280
 * MB/s where mapped memory takes ~20 GB/s (bench-iscsi-cold's `machine` line). A hugebuf
 * is anonymous memory aligned to 2 MiB and advised for transparent huge pages: one fault
 * per 2 MiB, and it stays mapped for its owner's life.
 */
#ifndef RACKDISK_COMMON_HUGEBUF_H
#define RACKDISK_COMMON_HUGEBUF_H

#include <stddef.h>

#define HUGEBUF_ALIGN (2u * 1024 * 1024)

struct hugebuf {
	void *p;    /* NULL until the first reserve */
	size_t cap; /* bytes mapped at p: a multiple of HUGEBUF_ALIGN */
};

/*
 * Makes b hold at least len bytes, keeping its contents when it must grow (the first
 * min(old cap, len) bytes). Returns 0, or -ENOMEM with b unchanged.
 */
int hugebuf_reserve(struct hugebuf *b, size_t len);

/* Unmaps b's memory; b is then empty and may be reserved again. */
void hugebuf_release(struct hugebuf *b);

#endif
