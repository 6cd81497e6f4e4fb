/*
 * appliance.h - rackdiskd's state and its control-plane operations, shared by the API,
 * the metrics and main(): images pulled from the seed (appliance/images_local.c) and
 * disks exported through tgtd (appliance/disks.c).
 *
 * Layout under [node] state_dir:
 *   disks/<name>/        a disk: overlay (cache/disk.h), lun.json, disk.json
 *   images/<id>.json     the manifest bytes exactly as published (their hash is the id)
 *   images/tags/<tag>    the image id a pulled tag pointed at when it was pulled
 *   rackdiskd.sock       the fetch socket (target/fetch_proto.h)
 *   tgtd.ipc.<port>      the spawned tgtd's management socket
 *
 * Every operation that changes disks holds a->lock, so a create, a delete and a
 * reconcile never interleave. Image pulls do not: they wait on the seed, and a->lock is
 * also taken by listings and /metrics; pulls of one tag take turns instead
 * (appliance_image_pull_serial). Errors: negative errno, with a one-line reason in err
 * that the API returns to the client as is.
 */
#ifndef RACKDISK_APPLIANCE_APPLIANCE_H
#define RACKDISK_APPLIANCE_APPLIANCE_H

#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "appliance/api_req.h"
#include "appliance/config.h"
#include "appliance/diskrec.h"
#include "common/hash.h"

struct chunkstore;
struct disk_tid;
struct exports;
struct fetcher;
struct fetchsrv;
struct peering;
struct tgtmgr;

struct appliance {
	struct config cfg;
	char disks_dir[PATH_MAX];
	char images_dir[PATH_MAX];
	char sock_path[PATH_MAX];
	char iscsi_host[CONFIG_HOST]; /* host part of iSCSI URLs */
	struct chunkstore *store;
	struct fetcher *fetcher;
	struct fetchsrv *fsrv;
	struct peering *peering;      /* NULL when standalone ([cluster] redis empty) */
	struct tgtmgr *tgt;
	pthread_mutex_t lock;
	uint64_t started_ns;
	uint64_t reconciles;
	/* The target id of each disk as last seen (disks.c), so that a disk whose record
	 * becomes damaged keeps its tid across tgtd restarts. Under lock. */
	struct disk_tid *disk_tids;
	size_t ndisk_tids;
	/* The CHAP accounts this daemon made or set in this tgtd, with the password (its
	 * SHA-256) last given to each (chap.c): tgtadm cannot show it, a reconcile sets it
	 * again where the record's differs, and deletes the accounts no disk uses any more.
	 * Under lock. */
	struct chap_set *chap_set;
	size_t nchap_set;
	/* The disks not exported, why, and their retries (exports.c; a lock of its own). */
	struct exports *exports;
};

/* --- images (appliance/images_local.c) --- */

struct image_info {
	char tag[DISKREC_NAME_MAX];   /* "" for an image known only by id */
	struct chunk_hash id;
	uint64_t size;
	uint32_t chunk_size;
	uint64_t nchunks, zero_chunks;
};

/* Resolves tag on the seed, fetches its manifest, checks it, keeps a copy. Not
 * serialised: callers use appliance_image_pull_serial. */
int appliance_image_pull(struct appliance *a, const char *tag, struct image_info *out,
			 char *err, size_t errlen);
/* appliance_image_pull without a->lock, one pull of a given tag at a time (disks.c). */
int appliance_image_pull_serial(struct appliance *a, const char *tag, struct image_info *out,
				char *err, size_t errlen);
/* A pulled image by tag or id; -ENOENT if not pulled. */
int appliance_image_get(struct appliance *a, const char *ref, struct image_info *out,
			char *err, size_t errlen);
/* Every pulled tag, sorted. */
int appliance_image_list(struct appliance *a, struct image_info **out, size_t *n);
/* Path of the local manifest copy of id. */
void appliance_manifest_path(const struct appliance *a, const struct chunk_hash *id,
			     char *buf, size_t len);

/* --- disks (appliance/disks.c) --- */

int appliance_disk_create(struct appliance *a, const struct disk_request *req,
			  struct diskrec *out, char *err, size_t errlen);
/* -EBUSY when initiators are logged in and !force. */
int appliance_disk_delete(struct appliance *a, const char *name, bool force, char *err,
			  size_t errlen);
/* Grows disk name to size bytes (a multiple of 512), offline: -EBUSY while initiators are
 * logged in, -EINVAL for a smaller size. *out: the record after. */
int appliance_disk_resize(struct appliance *a, const char *name, uint64_t size,
			  struct diskrec *out, char *err, size_t errlen);
/* -ENOENT: no such disk; -EUCLEAN: its record is damaged (err says why). */
int appliance_disk_get(struct appliance *a, const char *name, struct diskrec *out, char *err,
		       size_t errlen);
/* The disks with a readable record (damaged ones are logged and skipped). */
int appliance_disk_list(struct appliance *a, struct diskrec **out, size_t *n);
/* Every disk: readable records in *out, damaged ones (with the tid they keep, 0 if not
 * known) in *damaged; both malloc'd. */
int appliance_disk_scan(struct appliance *a, struct diskrec **out, size_t *n,
			struct diskrec_damaged **damaged, size_t *ndamaged);
/* How many disks have a damaged record (without a->lock), or a negative errno. */
int appliance_disks_damaged(struct appliance *a);
/* Makes tgtd's targets match the disk records (start, SIGHUP, tgtd restart). A disk
 * whose record is damaged keeps its target and tid and is logged as an error; one that
 * cannot be exported is recorded as not exported and tried again (exports.c). */
int appliance_reconcile(struct appliance *a);

/* The record of disks not exported and the thread that tries them again (exports.c):
 * started before the first reconcile, stopped before tgtd is (a retry is a reconcile). */
int appliance_exports_start(struct appliance *a);
void appliance_exports_stop(struct appliance *a);
/* True when disk name's last export failed; why (may be NULL) says why. Without a->lock,
 * like the counts below: health never waits for a reconcile. */
bool appliance_disk_not_exported(struct appliance *a, const char *name, char *why,
				 size_t whylen);
struct appliance_export_stats {
	uint64_t not_exported; /* disks whose last export failed */
	uint64_t failures;     /* exports that failed, since start */
};
void appliance_exports_stats(struct appliance *a, struct appliance_export_stats *st);

/* The fetcher's counters, with the peer hook's failed requests (transport, wrong bytes)
 * added to source "peer" (metrics.c). */
struct fetcher_stats;
void appliance_fetch_stats(struct appliance *a, struct fetcher_stats *st);
/* Every node of the cluster's directory with this node's counters for it (peering_list
 * with no bound of the caller's: a fixed array cut the list at 256 nodes). Returns the
 * count with *out malloc'd (the caller frees it), or a negative errno (-ENOTCONN while
 * Redis is down) with *out NULL (metrics.c). */
struct peering_peer;
int appliance_peer_list(struct peering *p, struct peering_peer **out);
/* Removes leftovers of interrupted creates and deletes (diskrec.c invariant 3). */
void appliance_disks_cleanup(struct appliance *a);

void appliance_disk_iqn(const struct appliance *a, const char *name, char *buf, size_t len);
void appliance_disk_url(const struct appliance *a, const struct diskrec *r, char *buf,
			size_t len);
void appliance_disk_dir(const struct appliance *a, const char *name, char *buf, size_t len);

#endif
