/*
 * diskrec.h - disk records: what rackdiskd knows about each disk it exports, kept in
 * <state_dir>/disks/<name>/disk.json next to the disk's overlay and lun.json.
 *
 * The record is the source of truth for exports: at start (and after tgtd restarts) the
 * daemon makes tgtd's targets match the records (appliance/disks.c).
 */
#ifndef RACKDISK_APPLIANCE_DISKREC_H
#define RACKDISK_APPLIANCE_DISKREC_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/hash.h"

#define DISKREC_FILE "disk.json"
#define DISKREC_MAX_INITIATORS 32
#define DISKREC_NAME_MAX 129
#define DISKREC_IQN_MAX 224
#define DISKREC_CHAP_MAX 65
/* The LUN's SCSI identity (tgt's scsi_id and scsi_sn): 32 lowercase hex digits, random at
 * create, so no two disks anywhere share the serial number and NAA designators hosts and
 * dm-multipath key on (tgt's default derives them from the target id alone). */
#define DISKREC_SCSI_ID_LEN 32

struct diskrec {
	char name[DISKREC_NAME_MAX];
	char image_tag[DISKREC_NAME_MAX]; /* "" when created from an image id */
	struct chunk_hash image_id;
	uint64_t size;
	char initiators[DISKREC_MAX_INITIATORS][DISKREC_IQN_MAX];
	unsigned ninitiators;             /* 0 = any initiator */
	char chap_user[DISKREC_CHAP_MAX];  /* "" = no CHAP */
	char chap_password[DISKREC_CHAP_MAX];
	int tid;
	int lun;
	int64_t created;                  /* unix seconds */
	char scsi_id[DISKREC_SCSI_ID_LEN + 1]; /* "" in records written before it existed */
};

/* A fresh random SCSI id (DISKREC_SCSI_ID_LEN hex digits). */
int diskrec_new_scsi_id(char id[DISKREC_SCSI_ID_LEN + 1]);
bool diskrec_scsi_id_valid(const char *id);

/* JSON form of a record (include_secret: also the CHAP password, for the file only). */
json_t *diskrec_to_json(const struct diskrec *r, bool include_secret);
/* Parses and validates a record; -EINVAL with a reason in err. */
int diskrec_from_json(json_t *j, struct diskrec *r, char *err, size_t errlen);

/* <dir>/disk.json, written atomically. It may hold a CHAP secret: the disks directory
 * is created mode 0700. */
int diskrec_save(const char *dir, const struct diskrec *r);
int diskrec_load(const char *dir, struct diskrec *r, char *err, size_t errlen);
/*
 * The record of disk name under disks_dir, as every reader of a disk needs it: -ENOENT
 * only when there is no such disk (no directory), -EUCLEAN when the disk is there but
 * its record cannot be used (disk.json missing, not JSON, invalid, or naming another
 * disk), other errors as reading gave them. err says why, naming the file.
 */
int diskrec_load_disk(const char *disks_dir, const char *name, struct diskrec *r, char *err,
		      size_t errlen);

/*
 * A disk whose record cannot be used: its directory is there (named by a valid name),
 * its disk.json is missing, unreadable, does not parse, is invalid or names another disk.
 * The disk still exists; only its record is damaged.
 */
struct diskrec_damaged {
	char name[DISKREC_NAME_MAX]; /* the directory's name */
	char error[PATH_MAX + 256];  /* why, naming the file */
	int tid;                     /* 0 here; appliance/disks.c fills in what it knows */
};

/* Every disk directory under disks_dir (named by a valid name only), sorted by name: the
 * readable records in *out, the others in *damaged (both malloc'd). Logs nothing. */
int diskrec_scan(const char *disks_dir, struct diskrec **out, size_t *n,
		 struct diskrec_damaged **damaged, size_t *ndamaged);
/* diskrec_scan's readable records; damaged ones are logged and skipped. */
int diskrec_list(const char *disks_dir, struct diskrec **out, size_t *n);

/* An iSCSI initiator name (iqn., eui. or naa. form, RFC 3720 3.2.6.3). */
bool diskrec_initiator_valid(const char *s);
/* CHAP user: 1..64 of [A-Za-z0-9._-]; secret: 12..64 printable, no ',' '=' or space. */
bool diskrec_chap_user_valid(const char *s);
bool diskrec_chap_secret_valid(const char *s);

#endif
