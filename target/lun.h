/*
 * lun.h - a rackdisk LUN as the tgt module sees it: everything bs_open() sets up from a
 * disk directory (lun.json, the manifest copy, the chunk store in reader mode, the fetch
 * client and the disk itself), kept apart from the SCSI code in bs_rackdisk.c so that it
 * can be built and tested without tgt's headers.
 *
 * Thread safety: lun_prefetch() and the disk may be used from many threads at once;
 * lun_open()/lun_close() by one thread, with no I/O in flight.
 */
#ifndef RACKDISK_TARGET_LUN_H
#define RACKDISK_TARGET_LUN_H

#include <stddef.h>
#include <stdint.h>

#include "target/fetch_client.h"
#include "target/lunconf.h"

struct lun;

/* Opens the LUN in disk directory dir. On failure a one-line reason is in err. */
int lun_open(const char *dir, struct lun **out, char *err, size_t errlen);

/* Reports the pending chunk hits to rackdiskd and closes everything. */
void lun_close(struct lun *l);

struct disk *lun_disk(struct lun *l);

/* Closes the descriptors the LUN keeps of chunk files evicted since, in its disk and in
 * its chunk store reader, whose space they keep allocated past the cache's capacity.
 * Never blocks; the module calls it every few seconds, also while nobody reads. */
void lun_sweep(struct lun *l);
const struct lun_config *lun_config(const struct lun *l);

/* PRE-FETCH: asks rackdiskd to fill every chunk of [off, off+len) the store lacks, without
 * waiting for the fills. Returns the number of chunks asked for, or a negative errno. */
int lun_prefetch(struct lun *l, uint64_t off, uint64_t len);

/* Sends the hits batched so far (normally sent when a batch is full or a second old). */
void lun_flush_touches(struct lun *l);

struct lun_stats {
	uint64_t hits_reported;   /* chunk hits reported to rackdiskd's readahead (HIT) */
};
void lun_get_stats(struct lun *l, struct lun_stats *st);

/* NULL when lun.json names no fetch socket. */
struct fetch_client *lun_fetch_client(struct lun *l);

#endif
