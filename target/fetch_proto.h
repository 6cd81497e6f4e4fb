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
 *       "direct_io": false}
 *
 * 2. The fetch socket is a unix stream socket served by rackdiskd. Requests and replies
 *    are single text lines ending in '\n'; each request gets exactly one reply, in
 *    order; a connection carries one request at a time (each tgtd worker thread keeps
 *    its own connection and reconnects after an error).
 *
 *      FETCH <hash> <len> <timeout_ms>\n   make the chunk present in the chunk store,
 *                                          waiting at most timeout_ms
 *        -> OK\n                           it is in the store now
 *        -> ERR <errno> <text>\n           errno as a positive number: ETIMEDOUT (deadline
 *                                          passed), EIO (every source failed), ...
 *      PREFETCH <hash> <len>\n             start a background fill; do not wait
 *        -> OK\n
 *      TOUCH <hash> [<hash>...]\n          the module read these chunks (hits), for the
 *        -> OK\n                           eviction policy; at most FETCH_PROTO_TOUCH_MAX
 *
 *    <hash> is 64 lowercase hex digits, <len> the chunk's length in bytes. A line longer
 *    than FETCH_PROTO_LINE_MAX is an error and the server closes the connection.
 */
#ifndef RACKDISK_TARGET_FETCH_PROTO_H
#define RACKDISK_TARGET_FETCH_PROTO_H

#define LUN_CONFIG_FILE "lun.json"
#define FETCH_PROTO_TOUCH_MAX 64
#define FETCH_PROTO_LINE_MAX (16 + FETCH_PROTO_TOUCH_MAX * 65 + 16)

#endif
