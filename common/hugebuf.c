/*
 * hugebuf.c - 2 MiB-aligned, THP-advised buffers that stay mapped (see hugebuf.h).
 */
#include "common/hugebuf.h"

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

/* Maps len bytes (a multiple of HUGEBUF_ALIGN) at a 2 MiB boundary: maps one alignment
 * more and unmaps the ends. */
static void *map_aligned(size_t len)
{
	size_t extra = HUGEBUF_ALIGN, head;
	uint8_t *raw, *p;

	raw = mmap(NULL, len + extra, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
		   0);
	if (raw == MAP_FAILED)
		return NULL;
	p = (uint8_t *)(((uintptr_t)raw + extra - 1) & ~((uintptr_t)extra - 1));
	head = (size_t)(p - raw);
	if (head)
		munmap(raw, head);
	if (extra - head)
		munmap(p + len, extra - head);
	/* Advice only: without THP (or with it set to "never") this is 4 KiB pages. */
	madvise(p, len, MADV_HUGEPAGE);
	return p;
}

int hugebuf_reserve(struct hugebuf *b, size_t len)
{
	size_t cap;
	void *p;

	if (len <= b->cap)
		return 0;
	if (len > SIZE_MAX - 2 * HUGEBUF_ALIGN)
		return -ENOMEM;
	cap = (len + HUGEBUF_ALIGN - 1) & ~((size_t)HUGEBUF_ALIGN - 1);
	p = map_aligned(cap);
	if (!p)
		return -ENOMEM;
	if (b->p) {
		memcpy(p, b->p, b->cap);
		munmap(b->p, b->cap);
	}
	b->p = p;
	b->cap = cap;
	return 0;
}

void hugebuf_release(struct hugebuf *b)
{
	if (b->p)
		munmap(b->p, b->cap);
	b->p = NULL;
	b->cap = 0;
}
