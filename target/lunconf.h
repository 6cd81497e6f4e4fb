/*
 * lunconf.h - lun.json, the description of a LUN's disk directory that rackdiskd writes
 * and the tgt module reads (target/fetch_proto.h, point 1).
 *
 * The module never trusts the file: every field is checked here, so bs_open() can refuse
 * a bad LUN with one clear log line instead of failing later on the data path.
 */
#ifndef RACKDISK_TARGET_LUNCONF_H
#define RACKDISK_TARGET_LUNCONF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/hash.h"

#define LUN_CONFIG_FORMAT 1
#define LUN_CONFIG_MAX_BYTES (64u * 1024)
#define LUN_IO_TIMEOUT_DEFAULT_MS 30000u
#define LUN_IO_TIMEOUT_MAX_MS (3600u * 1000)

struct lun_config {
	char *name;               /* the disk's name */
	struct chunk_hash image_id;
	char *manifest;           /* absolute path of the local manifest copy */
	char *chunk_dir;          /* absolute path of the chunk store root */
	char *socket;             /* absolute path of the fetch socket; NULL: no fetches */
	uint32_t io_timeout_ms;   /* deadline of a read that misses, 1..LUN_IO_TIMEOUT_MAX_MS */
	bool direct_io;
	char *trace;              /* absolute path of the read trace (target/trace.h); NULL: off */
};

/*
 * Parses lun.json text. On success the strings in *c are malloc'd (lun_config_free).
 * Errors: -EINVAL (malformed, missing or bad field), -EPROTONOSUPPORT (format), -ENOMEM;
 * when err is non-NULL a one-line reason is written there.
 */
int lun_config_parse(const char *buf, size_t len, struct lun_config *c, char *err,
		     size_t errlen);

/* Reads and parses <dir>/lun.json. */
int lun_config_load(const char *dir, struct lun_config *c, char *err, size_t errlen);

void lun_config_free(struct lun_config *c);

#endif
