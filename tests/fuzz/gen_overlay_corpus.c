/*
 * gen_overlay_corpus.c - writes the overlay map fuzzer's seed corpus
 * (tests/fuzz/corpus/overlay_map/) from real overlays made through cache/overlay.c, so the
 * seeds follow the current format. `make fuzz-corpus` runs it; the output is committed.
 *
 * Seeds use small logs (a few blocks) so that inputs stay small; the parser takes the
 * log size from the header.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/overlay.h"
#include "common/util.h"

static char tmp[64];

static int copy_map(const char *out_dir, const char *name, size_t cut)
{
	char src[128], dst[PATH_MAX];
	char *buf;
	size_t len;
	int rc;

	snprintf(src, sizeof(src), "%s/%s", tmp, OVERLAY_MAP_FILE);
	rc = read_file(src, 1 << 26, &buf, &len);
	if (rc < 0)
		return rc;
	if (cut && cut < len)
		len = cut;
	snprintf(dst, sizeof(dst), "%s/%s", out_dir, name);
	rc = write_file_atomic(dst, buf, len);
	free(buf);
	return rc;
}

static int fresh_dir(void)
{
	char cmd[128];

	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmp);
	if (system(cmd) != 0)
		return -EIO;
	return mkdir_p(tmp, 0700);
}

static int make(struct overlay **o, uint64_t size, uint32_t log_blocks)
{
	struct chunk_hash id;
	int rc;

	memset(id.b, 0x3c, sizeof(id.b));
	rc = fresh_dir();
	if (rc == 0)
		rc = overlay_create_log(tmp, &id, size, log_blocks);
	return rc < 0 ? rc : overlay_open(tmp, o);
}

#define TRY(x)                                                                    \
	do {                                                                      \
		int rc_ = (x);                                                    \
		if (rc_ < 0) {                                                    \
			fprintf(stderr, "gen: %s: %s\n", #x, strerror(-rc_));     \
			return 1;                                                 \
		}                                                                 \
	} while (0)

int main(int argc, char **argv)
{
	const char *out = argc > 1 ? argv[1] : "tests/fuzz/corpus/overlay_map";
	struct overlay *o;

	snprintf(tmp, sizeof(tmp), "/tmp/rd-gen-ovl-%d", (int)getpid());
	/* A fresh map with a log, and one without. */
	TRY(make(&o, 64 * MiB, 4));
	overlay_close(o);
	TRY(copy_map(out, "fresh_log4", 0));
	TRY(make(&o, 64 * MiB, 0));
	overlay_close(o);
	TRY(copy_map(out, "fresh_nolog", 0));
	/* One record in the log. */
	TRY(make(&o, 64 * MiB, 8));
	TRY(overlay_set(o, 3, 40, OVL_DATA));
	TRY(overlay_set(o, 100, 7, OVL_ZERO));
	TRY(overlay_flush(o));
	overlay_close(o);
	TRY(copy_map(out, "log_one_record", 0));
	/* Two records, two pages each, the disk's last grain short. */
	TRY(make(&o, 2 * 64 * MiB - 512, 8));
	TRY(overlay_set(o, 1, 1, OVL_DATA));
	TRY(overlay_set(o, 16384 + 5, 2, OVL_ZERO));
	TRY(overlay_flush(o));
	TRY(overlay_set(o, 2, 3, OVL_ZERO));
	TRY(overlay_set(o, 2 * 16384 - 1, 1, OVL_DATA));
	TRY(overlay_flush(o));
	overlay_close(o);
	TRY(copy_map(out, "log_two_records", 0));
	/* Home slots and records after a checkpoint (the log restarted). */
	TRY(make(&o, 3 * 64 * MiB, 4));
	for (unsigned i = 0; i < 5; i++) {
		TRY(overlay_set(o, (i % 3) * 16384 + i, 1 + i, i % 2 ? OVL_DATA : OVL_ZERO));
		TRY(overlay_flush(o));
	}
	overlay_close(o);
	TRY(copy_map(out, "log_after_checkpoint", 0));
	/* Grown after a record, then more records. */
	TRY(make(&o, 32 * MiB, 8));
	TRY(overlay_set(o, 10, 10, OVL_DATA));
	TRY(overlay_flush(o));
	TRY(overlay_grow(o, 100 * MiB));
	TRY(overlay_set(o, 20000, 10, OVL_DATA));
	TRY(overlay_flush(o));
	overlay_close(o);
	TRY(copy_map(out, "log_grown", 0));
	/* Without a log: home slots only, two generations. */
	TRY(make(&o, 64 * MiB, 0));
	TRY(overlay_set(o, 0, 32, OVL_DATA));
	TRY(overlay_flush(o));
	TRY(overlay_set(o, 64, 1, OVL_ZERO));
	TRY(overlay_flush(o));
	overlay_close(o);
	TRY(copy_map(out, "nolog_two_gens", 0));
	/* A record cut short (a torn write). */
	TRY(make(&o, 64 * MiB, 8));
	TRY(overlay_set(o, 3, 1, OVL_DATA));
	TRY(overlay_flush(o));
	TRY(overlay_set(o, 4, 1, OVL_DATA));
	TRY(overlay_flush(o));
	overlay_close(o);
	TRY(copy_map(out, "log_torn_record", 2 * OVERLAY_HDR_SLOT + 3 * OVERLAY_LOG_BLOCK + 1000));
	fresh_dir();
	rmdir(tmp);
	printf("gen: overlay_map seeds written to %s\n", out);
	return 0;
}
