/*
 * fuzz_manifest.c - libFuzzer target for manifest_parse() (images/manifest.c).
 *
 * Any input must be refused with a negative errno and a reason, or accepted as a
 * manifest whose fields agree with each other (the checks a disk relies on).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "images/manifest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct manifest *m = NULL;
	char err[256];
	uint64_t total = 0;

	err[0] = '\0';
	if (manifest_parse((const char *)data, size, &m, err, sizeof(err)) < 0) {
		if (memchr(err, '\0', sizeof(err)) == NULL)
			abort();
		return 0;
	}
	if (!manifest_chunk_size_valid(m->chunk_size) || (1ull << m->chunk_shift) != m->chunk_size)
		abort();
	if (m->nchunks != (m->size + m->chunk_size - 1) / m->chunk_size)
		abort();
	for (uint64_t i = 0; i < m->nchunks; i++)
		total += manifest_chunk_len(m, i);
	if (total != m->size)
		abort();
	manifest_free(m);
	return 0;
}
