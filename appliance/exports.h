/*
 * exports.h - which disks are not exported, why, and when they are tried again
 * (appliance/exports.c). Internal to appliance/: disks.c records each export's outcome;
 * the API, the metrics and rackdiskd use appliance.h's appliance_exports_* and
 * appliance_disk_not_exported.
 */
#ifndef RACKDISK_APPLIANCE_EXPORTS_H
#define RACKDISK_APPLIANCE_EXPORTS_H

#include <stdbool.h>
#include <stddef.h>

struct appliance;
struct diskrec;

/*
 * Checks what the tgt module needs to open disk r's LUN in dir, as it will (lun.json, the
 * image's manifest copy it names, the chunk store, the overlay), so that an export that
 * would fail names the file: tgtd answers any failed open with "invalid request".
 * 0, or a negative errno with err saying which file and why.
 */
int exports_check_lun(struct appliance *a, const struct diskrec *r, const char *dir,
		      char *err, size_t errlen);
/* 1 when tgtd lists no backing store named bstype (its module is not loaded), 0 when it
 * does, a negative errno when tgtd could not be asked. */
int exports_bstype_missing(struct appliance *a, const char *bstype);

/* The outcome of exporting disk name: err NULL when it is exported (a failure recorded
 * before is forgotten), else why not (which schedules a retry). */
void exports_set(struct appliance *a, const char *name, const char *err);
/* Disk name is gone (deleted): nothing to retry. */
void exports_forget(struct appliance *a, const char *name);
/* Forgets the disks without a readable record among recs[0..n) (deleted by hand; a
 * damaged record is reported as such). */
void exports_prune(struct appliance *a, const struct diskrec *recs, size_t n);
/* A failure is recorded for disk name. */
bool exports_failed(struct appliance *a, const char *name);
/* A reconcile ended (retry: one started by the retry thread): with disks still not
 * exported, the next retry is due after the backoff (doubled after a retry, from its
 * start after any other reconcile). */
void exports_reconciled(struct appliance *a, bool retry);
/* appliance_exports_stop has begun: a retry in progress can end early. */
bool exports_stopping(struct appliance *a);

/* Re-exports the disks whose export failed, as a reconcile does (disks.c). */
int appliance_reconcile_failed(struct appliance *a);

#endif
