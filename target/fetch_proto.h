/*
 * fetch_proto.h - the contract between the tgt module (bs_rackdisk.so, inside tgtd) and
 * rackdiskd: how a LUN is described on disk, and how the module asks for missing chunks.
 *
 * 1. A LUN's backing store (tgtadm --bstype rackdisk --backing-store DIR) is a disk
 *    directory, normally <state_dir>/disks/<name>/, written by rackdiskd. It holds the
 *    overlay files (cache/disk.h, disk_create) and lun.json:
 *
 *      {"format": 1,
 *       "name": "<disk name>",
 *       "image_id": "<64 hex>",
 *       "manifest": "/abs/path/<image-id>.json",   -- a local copy of the manifest
 *       "chunk_dir": "/abs/path/cache",            -- the chunk store root (reader mode)
 *       "socket": "/abs/path/rackdiskd.sock",      -- the fetch socket below
 *       "io_timeout_ms": 30000,                    -- deadline of a read that misses
 *       "direct_io": false,
 *       "trace": "/abs/path/<disk>.trace"}        -- optional: record reads (target/trace.h)
 *
 * 2. The fetch socket is a unix stream socket served by rackdiskd. Requests and replies
 *    are single text lines ending in '\n'; each request gets exactly one reply, in
 *    order; a connection carries one request at a time (each tgtd worker thread keeps
 *    its own connection and reconnects after an error).
 *
 *      FETCH <hash> <len> <timeout_ms> [<image_id> <idx>]\n
 *                                          make the chunk present in the chunk store,
 *                                          waiting at most timeout_ms
 *        -> OK\n                           it is in the store now
 *        -> ERR <errno> <text>\n           errno as a positive number: ETIMEDOUT (deadline
 *                                          passed), EIO (every source failed), ...
 *      PREFETCH <hash> <len>\n             start a background fill; do not wait
 *        -> OK\n
 *      TOUCH <hash> [<hash>...]\n          the module read these chunks (hits), for the
 *        -> OK\n                           eviction policy; at most FETCH_PROTO_TOUCH_MAX
 *      HIT <image_id> <idx> <hash>\n       the module read chunk <idx> of image <image_id>
 *        -> OK\n                           from the store (no FETCH was needed): the
 *                                          place of a hit, for the readahead (below)
 *      CHECK <hash> <len>\n                the module found the chunk's file torn or
 *        -> OK\n                           corrupt (cache/chunkstore.c invariant 1a):
 *                                          re-hash it now and drop it if bad; the FETCH
 *                                          that follows then brings a fresh copy
 *
 *    <hash> is 64 lowercase hex digits, <len> the chunk's length in bytes (1 to
 *    CHUNK_SIZE_MAX), <timeout_ms> at most FETCH_PROTO_TIMEOUT_MAX_MS (a client whose
 *    deadline is further off sends FETCH again after the ETIMEDOUT). A line longer
 *    than FETCH_PROTO_LINE_MAX is an error and the server closes the connection, as it
 *    does after any malformed line (reply "ERR 71 malformed request").
 *
 *    FETCH's optional pair says where the chunk sits: <image_id> (64 hex, the LUN's base
 *    image, lun.json "image_id") and <idx> (decimal chunk index in that image's
 *    manifest). It is a hint for rackdiskd's sequential readahead (cluster/fetcher.h,
 *    fetcher_note_access), which can only see the access pattern through it: the hash
 *    alone does not say where a chunk is (one chunk may sit at many indexes, in many
 *    images). Both fields or neither; the three-field form of the first version is still
 *    valid. The server ignores the hint (and still fetches) when it does not know the
 *    image or when manifest entry <idx> is not <hash>.
 *
 *    HIT carries the same place for a chunk the module found in the store. Without it
 *    the readahead hears only of misses: once it has filled chunks ahead of a sequential
 *    reader, the reader hits them, goes quiet, and the window is not refilled until the
 *    reader misses again (a stall per window). The module sends HIT without waiting for
 *    its reply (fetch_client_hit), at most once per chunk index within a short interval,
 *    and only for a chunk that continues a forward run (lun.c); the server validates it
 *    like FETCH's pair and otherwise ignores it.
 *
 * fetch_proto_parse()/fetch_proto_format_fetch() below are the one reading and the one
 * writing of these lines, used by both sides (appliance/fetchsrv.c, fetch_client.c).
 */
#ifndef RACKDISK_TARGET_FETCH_PROTO_H
#define RACKDISK_TARGET_FETCH_PROTO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/hash.h"

#define LUN_CONFIG_FILE "lun.json"
#define FETCH_PROTO_TOUCH_MAX 64
#define FETCH_PROTO_LINE_MAX (16 + FETCH_PROTO_TOUCH_MAX * 65 + 16)
#define FETCH_PROTO_TIMEOUT_MAX_MS 600000u
/* Longest FETCH line: the name, two hashes, three numbers, separators and '\n'. */
#define FETCH_PROTO_FETCH_LINE_MAX (6 + 2 * (HASH_HEX_LEN + 1) + 3 * 21 + 1)
/* Longest HIT line: the name, two hashes, one number, separators and '\n'. */
#define FETCH_PROTO_HIT_LINE_MAX (4 + 2 * (HASH_HEX_LEN + 1) + 21 + 1)

enum fetch_proto_cmd {
	FETCH_CMD_FETCH = 1,
	FETCH_CMD_PREFETCH,
	FETCH_CMD_TOUCH,
	FETCH_CMD_HIT,
	FETCH_CMD_CHECK
};

/* One parsed request line. */
struct fetch_req {
	enum fetch_proto_cmd cmd;
	struct chunk_hash h;      /* FETCH, PREFETCH, HIT, CHECK */
	uint32_t len;             /* FETCH, PREFETCH, CHECK */
	uint32_t timeout_ms;      /* FETCH */
	bool has_pos;             /* FETCH with its image_id and idx; always for HIT */
	struct chunk_hash image;  /* valid when has_pos */
	uint64_t idx;             /* valid when has_pos */
	unsigned ntouch;          /* TOUCH: 1..FETCH_PROTO_TOUCH_MAX hashes */
	struct chunk_hash touch[FETCH_PROTO_TOUCH_MAX];
};

/*
 * Parses one request line (it may end in '\n'; it is not modified). Returns 0, or
 * -EPROTO for anything the protocol above does not allow: unknown command, missing,
 * extra or malformed fields, a length of 0 or over CHUNK_SIZE_MAX, a timeout over
 * FETCH_PROTO_TIMEOUT_MAX_MS, half of FETCH's pair, an embedded NUL or newline.
 */
int fetch_proto_parse(const char *line, size_t len, struct fetch_req *r);

/* Writes a FETCH line ending in '\n' into buf (FETCH_PROTO_FETCH_LINE_MAX bytes hold the
 * longest); image NULL leaves the place out. Returns the line's length. */
size_t fetch_proto_format_fetch(char *buf, size_t size, const struct chunk_hash *h, uint32_t len,
				uint32_t timeout_ms, const struct chunk_hash *image, uint64_t idx);

/* Writes a HIT line ending in '\n' into buf (FETCH_PROTO_HIT_LINE_MAX bytes hold it).
 * Returns the line's length. */
size_t fetch_proto_format_hit(char *buf, size_t size, const struct chunk_hash *image,
			      uint64_t idx, const struct chunk_hash *h);

#endif
