/*
 * disks.c - disk management: create, delete, list, and reconciling tgtd with the disk
 * records. The on-disk invariants are those of appliance/diskrec.c; the export of a
 * disk is target <iqn_prefix>:<name>, LUN 1, backing store type "rackdisk" on the disk
 * directory (target/fetch_proto.h).
 *
 * Targets whose name starts with "<iqn_prefix>:" belong to this appliance: reconcile
 * removes those without a record and leaves every other target alone (an external tgtd
 * may serve other things).
 *
 * A disk whose record is damaged (diskrec_damaged: its directory is there, its disk.json
 * cannot be used) is kept as it is: its target, found by IQN, is neither removed nor
 * replaced, its target id is given to no other disk (remembered across tgtd restarts,
 * struct disk_tid), its name stays taken, and it is reported (log, GET disks, health)
 * until the record is restored and a reconcile adopts it again.
 *
 * A disk whose export fails is kept as it is and reported as not exported, with the
 * reason, until a retry (appliance/exports.c) or a reconcile exports it. Its CHAP
 * account, like every other, is kept or deleted by the rules of appliance/chap.c.
 */
#include "appliance/appliance.h"

#include <dirent.h>
#include <errno.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "appliance/chap.h"
#include "appliance/exports.h"
#include "cache/disk.h"
#include "cache/overlay.h"
#include "common/log.h"
#include "common/util.h"
#include "images/manifest.h"
#include "target/fetch_proto.h"
#include "target/tgtmgr.h"

#define BSTYPE "rackdisk"
#define TID_MAX 65535

void appliance_disk_iqn(const struct appliance *a, const char *name, char *buf, size_t len)
{
	/* IQNs are lowercase (RFC 3722); names may have uppercase letters. */
	size_t n = (size_t)snprintf(buf, len, "%s:%s", a->cfg.iqn_prefix, name);

	for (size_t i = 0; i < n && i < len; i++)
		if (buf[i] >= 'A' && buf[i] <= 'Z')
			buf[i] = (char)(buf[i] - 'A' + 'a');
}

void appliance_disk_url(const struct appliance *a, const struct diskrec *r, char *buf,
			size_t len)
{
	char iqn[DISKREC_IQN_MAX];
	bool v6 = strchr(a->iscsi_host, ':') != NULL;

	appliance_disk_iqn(a, r->name, iqn, sizeof(iqn));
	snprintf(buf, len, "iscsi://%s%s%s:%u/%s/%d", v6 ? "[" : "", a->iscsi_host,
		 v6 ? "]" : "", a->cfg.portal.port, iqn, r->lun);
}

void appliance_disk_dir(const struct appliance *a, const char *name, char *buf, size_t len)
{
	config_path_fmt(buf, len, "%s/%s", a->disks_dir, name);
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	if (remove(path) < 0)
		log_warn("removing %s: %s", path, strerror(errno));
	return 0;
}

static int rm_rf(const char *path)
{
	if (access(path, F_OK) < 0)
		return errno == ENOENT ? 0 : -errno;
	return nftw(path, rm_entry, 16, FTW_DEPTH | FTW_PHYS) ? -EIO : 0;
}

void appliance_disks_cleanup(struct appliance *a)
{
	struct dirent *de;
	DIR *d = opendir(a->disks_dir);

	if (!d)
		return;
	while ((de = readdir(d))) {
		char path[PATH_MAX];

		if (strncmp(de->d_name, ".new-", 5) && strncmp(de->d_name, ".trash-", 7))
			continue;
		if (config_path_fmt(path, sizeof(path), "%s/%s", a->disks_dir, de->d_name))
			continue;
		log_info("removing %s (left by an interrupted create or delete)", path);
		rm_rf(path);
	}
	closedir(d);
}

/* lun.json: what the tgt module needs to open the disk (target/fetch_proto.h). */
static int write_lun_json(struct appliance *a, const char *dir, const struct diskrec *r)
{
	char hex[HASH_HEX_LEN + 1], mpath[PATH_MAX], path[PATH_MAX];
	char *text;
	json_t *j;
	int ret;

	hash_to_hex(&r->image_id, hex);
	appliance_manifest_path(a, &r->image_id, mpath, sizeof(mpath));
	j = json_pack("{s:i, s:s, s:s, s:s, s:s, s:s, s:I, s:b}", "format", 1, "name", r->name,
		      "image_id", hex, "manifest", mpath, "chunk_dir", a->cfg.cache_dir,
		      "socket", a->sock_path, "io_timeout_ms", (json_int_t)a->cfg.io_timeout_ms,
		      "direct_io", a->cfg.direct_io);
	if (!j)
		return -ENOMEM;
	/* [iscsi] trace_dir: the tgt module records this disk's reads (target/trace.h). */
	if (a->cfg.trace_dir[0]) {
		ret = mkdir_p(a->cfg.trace_dir, 0755);
		if (!ret)
			ret = config_path_fmt(path, sizeof(path), "%s/%s.trace", a->cfg.trace_dir,
					      r->name);
		if (!ret && json_object_set_new(j, "trace", json_string(path)))
			ret = -ENOMEM;
		if (ret) {
			json_decref(j);
			return ret;
		}
	}
	text = json_dumps(j, JSON_INDENT(2));
	json_decref(j);
	if (!text)
		return -ENOMEM;
	ret = config_path_fmt(path, sizeof(path), "%s/%s", dir, LUN_CONFIG_FILE);
	if (!ret)
		ret = write_file_atomic(path, text, strlen(text));
	free(text);
	return ret;
}

/* The target id of a disk as this daemon last saw it: a disk whose record becomes
 * damaged keeps it, also when its target is gone (a tgtd restart). */
struct disk_tid {
	char name[DISKREC_NAME_MAX];
	int tid;
};

static struct disk_tid *find_tid(struct appliance *a, const char *name)
{
	for (size_t i = 0; i < a->ndisk_tids; i++)
		if (!strcmp(a->disk_tids[i].name, name))
			return &a->disk_tids[i];
	return NULL;
}

static void remember_tid(struct appliance *a, const char *name, int tid)
{
	struct disk_tid *e = find_tid(a, name), *nv;

	if (!e) {
		nv = realloc(a->disk_tids, (a->ndisk_tids + 1) * sizeof(*nv));
		if (!nv) {
			log_warn("out of memory remembering the target id of disk %s", name);
			return;
		}
		a->disk_tids = nv;
		e = &nv[a->ndisk_tids++];
		snprintf(e->name, sizeof(e->name), "%s", name);
	}
	e->tid = tid;
}

static void forget_tid(struct appliance *a, const char *name)
{
	struct disk_tid *e = find_tid(a, name);

	if (e)
		*e = a->disk_tids[--a->ndisk_tids];
}

/* The tid of each damaged disk: its target's in t (by IQN), else the one remembered, else
 * 0 (unknown: a daemon started after the record was damaged, its target gone). */
static void damaged_tids(struct appliance *a, struct diskrec_damaged *bad, size_t nbad,
			 const struct tgtmgr_target *t, size_t nt)
{
	for (size_t i = 0; i < nbad; i++) {
		const struct disk_tid *e = find_tid(a, bad[i].name);
		char iqn[DISKREC_IQN_MAX];

		bad[i].tid = e ? e->tid : 0;
		appliance_disk_iqn(a, bad[i].name, iqn, sizeof(iqn));
		for (size_t j = 0; j < nt; j++)
			if (!strcmp(t[j].name, iqn))
				bad[i].tid = t[j].tid;
	}
}

/* The lowest tid used neither by a record, nor by a damaged disk, nor by any target of
 * tgtd. */
static int alloc_tid(struct appliance *a, const struct diskrec *recs, size_t nrecs,
		     const struct diskrec_damaged *bad, size_t nbad)
{
	struct tgtmgr_target *t = NULL;
	size_t nt = 0;
	int tid;

	if (tgtmgr_list(a->tgt, &t, &nt))
		nt = 0;
	for (tid = 1; tid <= TID_MAX; tid++) {
		bool used = false;

		for (size_t i = 0; i < nrecs && !used; i++)
			used = recs[i].tid == tid;
		for (size_t i = 0; i < nbad && !used; i++)
			used = bad[i].tid == tid;
		for (size_t i = 0; i < nt && !used; i++)
			used = t[i].tid == tid;
		if (!used)
			break;
	}
	free(t);
	return tid > TID_MAX ? -ENOSPC : tid;
}

/*
 * Gives r's CHAP account the password in r (tgtadm cannot show the one tgtd holds, so
 * which one it holds is remembered: chap_remember). Not for a shared account (chap.c, 2
 * and 3; shared says why, NULL when it is not): replacing it would unbind it from the
 * other target as well. acl_bound: r's ACL is in place on its target (taken away
 * meanwhile: tgtmgr_replace_chap), not yet during an export.
 */
static int replace_chap(struct appliance *a, const struct diskrec *r, bool acl_bound,
			const char *shared, char *err, size_t errlen)
{
	const char *acl[DISKREC_MAX_INITIATORS], *any = "ALL";
	size_t nacl = 0;
	int ret;

	if (shared) {
		log_warn("disk %s: CHAP account %s is used elsewhere too (%s); its password in "
			 "tgtd is left as it is", r->name, r->chap_user, shared);
		return 0;
	}
	if (acl_bound && !r->ninitiators)
		acl[nacl++] = any;
	for (unsigned i = 0; acl_bound && i < r->ninitiators; i++)
		acl[nacl++] = r->initiators[i];
	ret = tgtmgr_replace_chap(a->tgt, r->tid, r->chap_user, r->chap_password, acl, nacl,
				  err, errlen);
	if (ret)
		return ret;
	chap_remember(a, r->chap_user, r->chap_password);
	log_info("disk %s: CHAP account %s given the password in its record", r->name,
		 r->chap_user);
	return 0;
}

/* Gives a record from before SCSI ids one now and keeps it, so the disk's identity stays
 * the same from this export on. */
static int record_scsi_id(const struct diskrec *r, const char *dir, char *scsi_id,
			  char *err, size_t errlen)
{
	struct diskrec up = *r;
	int ret;

	ret = diskrec_new_scsi_id(up.scsi_id);
	if (!ret)
		ret = diskrec_save(dir, &up);
	if (ret) {
		snprintf(err, errlen, "recording a SCSI id for disk '%s': %s", r->name,
			 strerror(-ret));
		return ret;
	}
	log_info("disk %s: recorded SCSI id %s (its serial number and NAA designators until "
		 "now came from target id %d)", r->name, up.scsi_id, r->tid);
	snprintf(scsi_id, DISKREC_SCSI_ID_LEN + 1, "%s", up.scsi_id);
	return 0;
}

/* Creates target + LUN of a record in tgtd, its files checked first: tgtd answers any
 * LUN that does not open with "invalid request", which names nothing. */
static int export_lun(struct appliance *a, const struct diskrec *r, const char *dir,
		      const char *scsi_id, char *err, size_t errlen)
{
	char iqn[DISKREC_IQN_MAX];
	int ret;

	ret = exports_check_lun(a, r, dir, err, errlen);
	if (ret)
		return ret;
	appliance_disk_iqn(a, r->name, iqn, sizeof(iqn));
	ret = tgtmgr_export(a->tgt, r->tid, iqn, BSTYPE, dir, scsi_id, err, errlen);
	if (ret == -EIO && exports_bstype_missing(a, BSTYPE) == 1) {
		size_t n = strnlen(err, errlen - 1);

		snprintf(err + n, errlen - n, " (tgtd has no '" BSTYPE "' backing store: "
			 "bs_rackdisk.so is not in tgt's module directory, or not built for this "
			 "tgt version)");
	}
	return ret;
}

/* Creates target + LUN + ACLs + CHAP of a record in tgtd (fresh: a new disk, whose CHAP
 * account must not exist yet; see tgtmgr_bind_chap). On failure nothing of it is left:
 * neither the target nor an account this call made. */
static int export_disk(struct appliance *a, const struct diskrec *r, bool fresh, char *err,
		       size_t errlen)
{
	char dir[PATH_MAX], scsi_id[DISKREC_SCSI_ID_LEN + 1], why[300];
	char what[DISKREC_NAME_MAX + 32];
	bool made_account = false;
	int ret;

	appliance_disk_dir(a, r->name, dir, sizeof(dir));
	snprintf(scsi_id, sizeof(scsi_id), "%s", r->scsi_id);
	if (!scsi_id[0]) {
		ret = record_scsi_id(r, dir, scsi_id, err, errlen);
		if (ret)
			return ret;
	}
	ret = export_lun(a, r, dir, scsi_id, err, errlen);
	if (ret)
		return ret;
	/* CHAP before the ACL: a target is reachable only once both are in place, so a
	 * crash between the steps leaves one nobody can use, never one without its CHAP
	 * (and reconcile then replaces it: access_matches) */
	if (r->chap_user[0]) {
		ret = tgtmgr_bind_chap(a->tgt, r->tid, r->chap_user, r->chap_password, fresh,
				       err, errlen);
		made_account = ret == 0;
		if (ret == 0)
			chap_remember(a, r->chap_user, r->chap_password);
		else if (ret == 1) /* an account tgtd kept: its password may be another */
			ret = chap_is_set(a, r->chap_user, r->chap_password)
				      ? 0
				      : replace_chap(a, r, false,
						     chap_shared_now(a, r->name, r->chap_user, why,
								     sizeof(why))
							     ? why
							     : NULL,
						     err, errlen);
	}
	if (!ret && !r->ninitiators)
		ret = tgtmgr_bind_initiator(a->tgt, r->tid, "ALL", err, errlen);
	for (unsigned i = 0; !ret && i < r->ninitiators; i++)
		ret = tgtmgr_bind_initiator(a->tgt, r->tid, r->initiators[i], err, errlen);
	if (ret) {
		tgtmgr_unexport(a->tgt, r->tid, true);
		/* made here, so bound to no other target: a retry makes it again (an account
		 * that was there stays, for chap_sweep to judge) */
		snprintf(what, sizeof(what), "exporting disk %s failed", r->name);
		if (made_account)
			chap_delete_unshared(a, r->name, r->chap_user, what);
	}
	return ret;
}

/*
 * Pulls in progress, by tag (appliance_image_pull_serial). Process-wide: rackdiskd runs
 * one appliance, and the entries live on the pullers' stacks.
 */
struct pull {
	const struct appliance *a;
	const char *tag;
	struct pull *next;
};

static pthread_mutex_t pulls_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t pulls_done = PTHREAD_COND_INITIALIZER;
static struct pull *pulls;

static bool pull_running(const struct appliance *a, const char *tag)
{
	for (const struct pull *p = pulls; p; p = p->next)
		if (p->a == a && !strcmp(p->tag, tag))
			return true;
	return false;
}

/*
 * Without a->lock: a pull waits on the seed for up to its request timeout twice (tag,
 * manifest), and the lock is also taken by listings, /metrics and the reconcile after a
 * tgtd restart. Pulls of one tag take turns, so a slow pull cannot write the tag file
 * after a later one (which may have resolved a newer id); the wait is bounded by the
 * pulls ahead, each bounded by the seed's timeouts.
 */
int appliance_image_pull_serial(struct appliance *a, const char *tag, struct image_info *out,
				char *err, size_t errlen)
{
	struct pull self = {.a = a, .tag = tag}, **pp;
	int ret;

	pthread_mutex_lock(&pulls_lock);
	while (pull_running(a, tag))
		pthread_cond_wait(&pulls_done, &pulls_lock);
	self.next = pulls;
	pulls = &self;
	pthread_mutex_unlock(&pulls_lock);
	ret = appliance_image_pull(a, tag, out, err, errlen);
	pthread_mutex_lock(&pulls_lock);
	for (pp = &pulls; *pp != &self; pp = &(*pp)->next)
		;
	*pp = self.next;
	pthread_cond_broadcast(&pulls_done);
	pthread_mutex_unlock(&pulls_lock);
	return ret;
}

/* Resolves the request's image, pulling a tag the appliance does not have yet. */
static int resolve_image(struct appliance *a, const char *ref, struct image_info *info,
			 char *err, size_t errlen)
{
	struct chunk_hash id;
	int ret;

	ret = appliance_image_get(a, ref, info, err, errlen);
	if (ret != -ENOENT || !hash_from_hex(ref, strlen(ref), &id))
		return ret;
	return appliance_image_pull_serial(a, ref, info, err, errlen);
}

/* Builds the disk in .new-<name> and renames it into place (diskrec.c invariant 1). */
static int make_disk_dir(struct appliance *a, const struct diskrec *r, char *err,
			 size_t errlen)
{
	char tmp[PATH_MAX], dir[PATH_MAX];
	int ret;

	if (config_path_fmt(tmp, sizeof(tmp), "%s/.new-%s", a->disks_dir, r->name)) {
		snprintf(err, errlen, "path of disk '%s' too long", r->name);
		return -ENAMETOOLONG;
	}
	appliance_disk_dir(a, r->name, dir, sizeof(dir));
	rm_rf(tmp);
	if (mkdir(tmp, 0700) < 0) {
		ret = -errno;
		snprintf(err, errlen, "creating %s: %s", tmp, strerror(errno));
		return ret;
	}
	ret = disk_create(tmp, &r->image_id, r->size);
	if (ret) {
		snprintf(err, errlen, "creating the overlay of '%s': %s", r->name,
			 strerror(-ret));
		goto fail;
	}
	ret = write_lun_json(a, tmp, r);
	if (!ret)
		ret = diskrec_save(tmp, r);
	if (!ret)
		ret = fsync_dir(tmp);
	if (!ret && rename(tmp, dir) < 0)
		ret = -errno;
	if (!ret)
		ret = fsync_dir(a->disks_dir);
	if (ret) {
		snprintf(err, errlen, "writing disk '%s': %s", r->name, strerror(-ret));
		goto fail;
	}
	return 0;
fail:
	rm_rf(tmp);
	return ret;
}

/* Deletes a disk directory: rename to .trash-, then remove (diskrec.c invariant 2). */
static int remove_disk_dir(struct appliance *a, const char *name)
{
	char dir[PATH_MAX], trash[PATH_MAX];
	int ret;

	appliance_disk_dir(a, name, dir, sizeof(dir));
	if (config_path_fmt(trash, sizeof(trash), "%s/.trash-%s-%llu", a->disks_dir, name,
			    (unsigned long long)now_ns()))
		return -ENAMETOOLONG;
	if (rename(dir, trash) < 0)
		return -errno;
	ret = fsync_dir(a->disks_dir);
	rm_rf(trash);
	return ret;
}

static int disk_exists(struct appliance *a, const char *name, char *err, size_t errlen)
{
	char dir[PATH_MAX];

	appliance_disk_dir(a, name, dir, sizeof(dir));
	if (access(dir, F_OK) == 0) {
		snprintf(err, errlen, "disk '%s' already exists", name);
		return -EEXIST;
	}
	return 0;
}

static int create_locked(struct appliance *a, const struct disk_request *req,
			 const struct image_info *image, struct diskrec *r, char *err,
			 size_t errlen)
{
	struct diskrec_damaged *bad = NULL;
	struct diskrec *recs = NULL;
	size_t nrecs = 0, nbad = 0;
	int ret, tid;

	ret = disk_exists(a, req->name, err, errlen);
	if (ret)
		return ret;
	if (req->size && req->size < image->size) {
		snprintf(err, errlen, "size %llu is smaller than image '%s' (%llu bytes)",
			 (unsigned long long)req->size, req->image,
			 (unsigned long long)image->size);
		return -EINVAL;
	}
	memset(r, 0, sizeof(*r));
	snprintf(r->name, sizeof(r->name), "%s", req->name);
	snprintf(r->image_tag, sizeof(r->image_tag), "%s", image->tag);
	r->image_id = image->id;
	/* An image's size need not be a multiple of 512; the disk's must. */
	r->size = req->size ? req->size : (image->size + 511) / 512 * 512;
	r->ninitiators = req->ninitiators;
	memcpy(r->initiators, req->initiators, sizeof(r->initiators));
	snprintf(r->chap_user, sizeof(r->chap_user), "%s", req->chap_user);
	snprintf(r->chap_password, sizeof(r->chap_password), "%s", req->chap_password);
	r->lun = 1;
	r->created = (int64_t)time(NULL);
	ret = diskrec_new_scsi_id(r->scsi_id);
	if (ret) {
		snprintf(err, errlen, "drawing a SCSI id: %s", strerror(-ret));
		return ret;
	}
	ret = diskrec_scan(a->disks_dir, &recs, &nrecs, &bad, &nbad);
	if (ret) {
		snprintf(err, errlen, "listing disks: %s", strerror(-ret));
		return ret;
	}
	/* IQNs are lowercase, names need not be: "Db" and "db" would be one target */
	ret = -EEXIST;
	for (size_t i = 0; i < nrecs; i++) {
		if (!strcasecmp(recs[i].name, r->name)) {
			snprintf(err, errlen, "disk '%s' already exists (IQNs ignore case)",
				 recs[i].name);
			goto out;
		}
	}
	for (size_t i = 0; i < nbad; i++) {
		if (!strcasecmp(bad[i].name, r->name)) {
			snprintf(err, errlen, "disk '%s' already exists (IQNs ignore case; its "
				 "record is damaged)", bad[i].name);
			goto out;
		}
	}
	/* tgtd's CHAP accounts are global by user name: two disks cannot have one user with
	 * two passwords, and deleting one disk would remove the other's authentication */
	for (size_t i = 0; r->chap_user[0] && i < nrecs; i++) {
		if (!strcmp(recs[i].chap_user, r->chap_user)) {
			snprintf(err, errlen, "CHAP user '%s' is already used by disk '%s'",
				 r->chap_user, recs[i].name);
			goto out;
		}
	}
	damaged_tids(a, bad, nbad, NULL, 0); /* alloc_tid sees the live targets itself */
	tid = alloc_tid(a, recs, nrecs, bad, nbad);
	if (tid < 0) {
		snprintf(err, errlen, "no free target id");
		ret = tid;
		goto out;
	}
	r->tid = tid;
	ret = make_disk_dir(a, r, err, errlen);
	if (ret)
		goto out;
	ret = export_disk(a, r, true, err, errlen);
	if (ret) {
		remove_disk_dir(a, r->name);
	} else {
		remember_tid(a, r->name, r->tid);
		exports_set(a, r->name, NULL); /* a name of a disk deleted by hand */
	}
out:
	free(recs);
	free(bad);
	return ret;
}

int appliance_disk_create(struct appliance *a, const struct disk_request *req,
			  struct diskrec *out, char *err, size_t errlen)
{
	struct image_info info;
	int ret;

	if (!name_is_valid(req->name)) {
		snprintf(err, errlen, "invalid disk name '%s'", req->name);
		return -EINVAL;
	}
	/* iSCSI names are at most 223 bytes (RFC 7143): a longer IQN would be cut short */
	if (strlen(a->cfg.iqn_prefix) + 1 + strlen(req->name) >= DISKREC_IQN_MAX) {
		snprintf(err, errlen, "disk name '%s' is too long for iqn_prefix '%s': its IQN "
			 "would be %zu bytes, iSCSI allows %d", req->name, a->cfg.iqn_prefix,
			 strlen(a->cfg.iqn_prefix) + 1 + strlen(req->name), DISKREC_IQN_MAX - 1);
		return -EINVAL;
	}
	/* The image first, without the lock: a pull may wait on the seed for as long as its
	 * request timeout, and the lock is also taken by listings and /metrics. */
	ret = disk_exists(a, req->name, err, errlen);
	if (!ret)
		ret = resolve_image(a, req->image, &info, err, errlen);
	if (ret)
		return ret;
	pthread_mutex_lock(&a->lock);
	ret = create_locked(a, req, &info, out, err, errlen);
	pthread_mutex_unlock(&a->lock);
	if (!ret)
		log_info("created disk %s (image %s, %llu bytes, target %d)", out->name,
			 req->image, (unsigned long long)out->size, out->tid);
	return ret;
}

/*
 * Deletes the target of disk name: the one with its IQN and target id tid (any id when
 * tid is 0), never while an initiator is logged in unless force; advice ends the
 * message then. account (may be NULL) receives the CHAP account the target had bound
 * ("" for none). Returns 0 (also when there was no such target) or a negative errno.
 */
static int unexport_disk(struct appliance *a, const char *name, int tid, bool force,
			 const char *advice, char *account, size_t acclen, char *err,
			 size_t errlen)
{
	char iqn[DISKREC_IQN_MAX];
	struct tgtmgr_target *t = NULL;
	size_t nt = 0;
	int ret;

	appliance_disk_iqn(a, name, iqn, sizeof(iqn));
	ret = tgtmgr_list(a->tgt, &t, &nt);
	if (ret) {
		snprintf(err, errlen, "cannot list tgtd's targets: %s", strerror(-ret));
		return ret;
	}
	for (size_t i = 0; i < nt && !ret; i++) {
		if ((tid && t[i].tid != tid) || strcmp(t[i].name, iqn))
			continue;
		if (t[i].nsessions && !force) {
			snprintf(err, errlen, "disk '%s' is in use by %d initiator session(s); log "
					      "them out %s", name, t[i].nsessions, advice);
			ret = -EBUSY;
			break;
		}
		if (account)
			snprintf(account, acclen, "%s", t[i].account);
		/* force only when asked: an initiator may log in after the list above */
		ret = tgtmgr_unexport(a->tgt, t[i].tid, force);
		if (ret == -EAGAIN) { /* a command runs, which force cannot end: 409 too */
			snprintf(err, errlen, "a command is still running on disk '%s' (waiting on "
				 "a chunk, for at most [iscsi] io_timeout_ms); retry", name);
			ret = -EBUSY;
		} else if (ret == -EBUSY)
			snprintf(err, errlen, "disk '%s' is in use by an initiator session; log it "
					      "out %s", name, advice);
		else if (ret && ret != -ENOENT)
			snprintf(err, errlen, "tgtd refused to delete target %d", t[i].tid);
		else
			ret = 0;
	}
	free(t);
	return ret;
}

static int delete_locked(struct appliance *a, const char *name, bool force, char *err,
			 size_t errlen)
{
	char dir[PATH_MAX], bound[256] = "", what[DISKREC_NAME_MAX + 32];
	bool damaged = false;
	struct diskrec r;
	int ret;

	appliance_disk_dir(a, name, dir, sizeof(dir));
	ret = diskrec_load_disk(a->disks_dir, name, &r, err, errlen);
	if (ret == -EUCLEAN && force) {
		/* a record that does not parse: tid 0 finds its target by IQN alone, and its
		 * CHAP account is the one that target had bound (chap.c, 1) */
		log_warn("deleting disk %s with a damaged record: %s", name, err);
		memset(&r, 0, sizeof(r));
		damaged = true;
		ret = 0;
	} else if (ret == -EUCLEAN) {
		size_t n = strlen(err);

		snprintf(err + n, errlen - n, "; delete with force to remove the disk, or "
			 "restore the file and send rackdiskd SIGHUP");
	}
	if (ret)
		return ret;
	ret = unexport_disk(a, name, r.tid, force, "or delete with force", bound,
			    sizeof(bound), err, errlen);
	if (ret)
		return ret;
	snprintf(what, sizeof(what), "deleting disk %s", name);
	if ((damaged ? bound : r.chap_user)[0])
		chap_delete_unshared(a, name, damaged ? bound : r.chap_user, what);
	ret = remove_disk_dir(a, name);
	if (ret) {
		snprintf(err, errlen, "removing disk '%s': %s", name, strerror(-ret));
	} else {
		forget_tid(a, name);
		exports_forget(a, name);
	}
	return ret;
}

int appliance_disk_delete(struct appliance *a, const char *name, bool force, char *err,
			  size_t errlen)
{
	int ret;

	if (!name_is_valid(name)) {
		snprintf(err, errlen, "invalid disk name '%s'", name);
		return -EINVAL;
	}
	pthread_mutex_lock(&a->lock);
	ret = delete_locked(a, name, force, err, errlen);
	pthread_mutex_unlock(&a->lock);
	if (!ret)
		log_info("deleted disk %s", name);
	return ret;
}

/*
 * Grows a disk offline: its target is deleted (never while an initiator is logged in),
 * the overlay grown (durable on return; its flock proves tgtd let go of it), the record
 * updated, and the target created again, also when growing failed. The record is saved
 * after the overlay grew, so a crash in between leaves a disk larger than its record
 * says, never one smaller, and the next reconcile corrects the record.
 */
static int resize_locked(struct appliance *a, const char *name, uint64_t size,
			 struct diskrec *r, char *err, size_t errlen)
{
	char dir[PATH_MAX], xerr[256] = "";
	struct overlay *o = NULL;
	int ret, xret;

	appliance_disk_dir(a, name, dir, sizeof(dir));
	ret = diskrec_load_disk(a->disks_dir, name, r, err, errlen);
	if (ret)
		return ret;
	if (size < r->size) {
		snprintf(err, errlen, "disk '%s' has %llu bytes: a disk only grows", name,
			 (unsigned long long)r->size);
		return -EINVAL;
	}
	if (size == r->size)
		return 0;
	ret = unexport_disk(a, name, r->tid, false, "first (a disk grows offline)", NULL, 0, err,
			    errlen);
	if (ret)
		return ret;
	ret = overlay_open(dir, &o);
	if (!ret) {
		ret = overlay_grow(o, size);
		overlay_close(o);
	}
	if (!ret) {
		uint64_t old = r->size;

		r->size = size;
		ret = diskrec_save(dir, r);
		if (ret) /* the disk grew; the next reconcile saves its size (adopt_overlay_size) */
			r->size = old;
	}
	if (ret)
		snprintf(err, errlen, "growing disk '%s': %s", name, strerror(-ret));
	xret = export_disk(a, r, false, xerr, sizeof(xerr));
	exports_set(a, name, xret ? xerr : NULL);
	if (xret) {
		log_error("exporting disk %s again after a resize: %s (tried again later)", name,
			  xerr);
		if (!ret)
			snprintf(err, errlen, "disk '%s' grew, but exporting it again failed: %s "
					      "(rackdiskd tries again; GET disks shows it as "
					      "not_exported meanwhile)", name, xerr);
	}
	return ret ? ret : xret;
}

int appliance_disk_resize(struct appliance *a, const char *name, uint64_t size,
			  struct diskrec *out, char *err, size_t errlen)
{
	int ret;

	if (!name_is_valid(name)) {
		snprintf(err, errlen, "invalid disk name '%s'", name);
		return -EINVAL;
	}
	pthread_mutex_lock(&a->lock);
	ret = resize_locked(a, name, size, out, err, errlen);
	pthread_mutex_unlock(&a->lock);
	if (!ret)
		log_info("disk %s is now %llu bytes", name, (unsigned long long)out->size);
	return ret;
}

int appliance_disk_get(struct appliance *a, const char *name, struct diskrec *out, char *err,
		       size_t errlen)
{
	int ret;

	if (!name_is_valid(name)) {
		snprintf(err, errlen, "invalid disk name");
		return -EINVAL;
	}
	pthread_mutex_lock(&a->lock);
	ret = diskrec_load_disk(a->disks_dir, name, out, err, errlen);
	pthread_mutex_unlock(&a->lock);
	if (ret && ret != -ENOENT)
		log_warn("disk %s: %s", name, err);
	return ret;
}

int appliance_disk_list(struct appliance *a, struct diskrec **out, size_t *n)
{
	int ret;

	pthread_mutex_lock(&a->lock);
	ret = diskrec_list(a->disks_dir, out, n);
	pthread_mutex_unlock(&a->lock);
	return ret;
}

int appliance_disk_scan(struct appliance *a, struct diskrec **out, size_t *n,
			struct diskrec_damaged **damaged, size_t *ndamaged)
{
	int ret;

	pthread_mutex_lock(&a->lock);
	ret = diskrec_scan(a->disks_dir, out, n, damaged, ndamaged);
	if (!ret)
		damaged_tids(a, *damaged, *ndamaged, NULL, 0);
	pthread_mutex_unlock(&a->lock);
	return ret;
}

int appliance_disks_damaged(struct appliance *a)
{
	struct diskrec_damaged *bad = NULL;
	struct diskrec *recs = NULL;
	size_t n = 0, nbad = 0;
	int ret;

	/* Without a->lock, so that health never waits: the scan reads only complete disk
	 * directories and records replaced atomically (diskrec.c invariants 1, 2, 4). */
	ret = diskrec_scan(a->disks_dir, &recs, &n, &bad, &nbad);
	free(recs);
	free(bad);
	return ret ? ret : (int)MIN(nbad, (size_t)INT_MAX);
}

/* The target lets in whom the record says, no one else: its CHAP account and its ACL (a
 * crash between export steps, or an operator's tgtadm, can leave them otherwise). */
static bool access_matches(const struct tgtmgr_target *t, const struct diskrec *r)
{
	if (r->chap_user[0] ? t->naccounts != 1 || strcmp(t->account, r->chap_user)
			    : t->naccounts != 0)
		return false;
	if (!r->ninitiators)
		return t->nacl == 1 && !strcmp(t->acl[0], "ALL");
	if (t->nacl != r->ninitiators)
		return false;
	for (unsigned i = 0; i < r->ninitiators; i++) {
		bool found = false;

		for (unsigned k = 0; k < t->nacl && k < TGTMGR_ACL_MAX && !found; k++)
			found = !strcmp(t->acl[k], r->initiators[i]);
		if (!found)
			return false;
	}
	return true;
}

static bool target_matches(struct appliance *a, const struct tgtmgr_target *t,
			   const struct diskrec *r)
{
	char iqn[DISKREC_IQN_MAX], dir[PATH_MAX];

	appliance_disk_iqn(a, r->name, iqn, sizeof(iqn));
	appliance_disk_dir(a, r->name, dir, sizeof(dir));
	return t->tid == r->tid && !strcmp(t->name, iqn) && !strcmp(t->backing, dir) &&
	       access_matches(t, r);
}

static bool is_ours(struct appliance *a, const char *iqn)
{
	size_t n = strlen(a->cfg.iqn_prefix);

	return !strncmp(iqn, a->cfg.iqn_prefix, n) && iqn[n] == ':';
}

/*
 * The overlay is the truth about a disk's size (the LUN takes it from there): a resize
 * that grew the overlay but did not save the record (a crash, or a failed save) left the
 * record smaller, which the record is now made to say.
 */
static void adopt_overlay_size(struct appliance *a, struct diskrec *r, const char *dir)
{
	uint64_t size, old = r->size;
	int ret;

	ret = overlay_read_size(dir, &size);
	if (ret) {
		log_warn("disk %s: reading its overlay's size: %s", r->name, strerror(-ret));
		return;
	}
	if (size <= r->size)
		return;
	r->size = size;
	ret = diskrec_save(dir, r);
	if (ret) {
		r->size = old;
		log_error("disk %s: saving its size %llu (its record says %llu): %s", r->name,
			  (unsigned long long)size, (unsigned long long)old, strerror(-ret));
		return;
	}
	log_warn("disk %s: its overlay has %llu bytes, its record said %llu (a resize did not "
		 "finish); the record now says %llu", r->name, (unsigned long long)size,
		 (unsigned long long)old, (unsigned long long)size);
}

/* What one reconcile works from: the records, the damaged disks, and tgtd's targets as
 * they were listed first, with those it removed as stale. */
struct recon {
	struct diskrec *recs;
	size_t nrecs;
	struct diskrec_damaged *bad;
	size_t nbad;
	struct tgtmgr_target *t;
	size_t nt;
	bool *removed;
};

/* The damaged disk whose target t is (by IQN), or NULL. */
static const struct diskrec_damaged *damaged_owner(struct appliance *a, const struct recon *c,
						   const struct tgtmgr_target *t)
{
	char iqn[DISKREC_IQN_MAX];

	for (size_t i = 0; i < c->nbad; i++) {
		appliance_disk_iqn(a, c->bad[i].name, iqn, sizeof(iqn));
		if (!strcmp(t->name, iqn))
			return &c->bad[i];
	}
	return NULL;
}

/* Logs what an operator must know about a damaged disk, and how to fix it. */
static void log_damaged(struct appliance *a, const struct recon *c,
			const struct diskrec_damaged *b)
{
	char iqn[DISKREC_IQN_MAX], tid[64] = "";
	bool live = false;

	appliance_disk_iqn(a, b->name, iqn, sizeof(iqn));
	for (size_t i = 0; i < c->nt && !live; i++)
		live = !strcmp(c->t[i].name, iqn);
	if (b->tid)
		snprintf(tid, sizeof(tid), "; target id %d stays reserved for it", b->tid);
	log_error("disk %s has a damaged record: %s. %s%s. Fix: restore its disk.json "
		  "(`rackdisk fsck` lists damaged records) and send rackdiskd SIGHUP, or delete "
		  "the disk with `rackdisk disk rm %s --force`", b->name, b->error,
		  live ? "Its target is kept as it is"
		       : "It is not exported until then (its access rules are in the record)",
		  tid, b->name);
}

/* True when r, the j-th record, cannot be exported at its tid: a target still there holds
 * it (another disk's, a damaged disk's, or not ours: stale ones of ours are removed by
 * now), a record before r has it (and is exported first), or a damaged disk keeps it. */
static bool tid_taken(const struct recon *c, size_t j)
{
	int tid = c->recs[j].tid;

	for (size_t i = 0; i < c->nt; i++)
		if (c->t[i].tid == tid && !c->removed[i])
			return true;
	for (size_t i = 0; i < j; i++)
		if (c->recs[i].tid == tid)
			return true;
	for (size_t i = 0; i < c->nbad; i++)
		if (c->bad[i].tid == tid)
			return true;
	return false;
}

/* Exports the j-th record, moving it to a free tid when its own is taken; records the
 * outcome (exports_set). */
static int reexport(struct appliance *a, struct recon *c, size_t j)
{
	struct diskrec *r = &c->recs[j];
	char err[512] = "", dir[PATH_MAX];
	int ret = 0;

	if (tid_taken(c, j)) {
		int tid = alloc_tid(a, c->recs, c->nrecs, c->bad, c->nbad);

		if (tid < 0) {
			ret = tid;
			snprintf(err, sizeof(err), "target id %d is taken, and no other is free",
				 r->tid);
		} else {
			log_warn("target id %d of disk %s is taken by another target or disk; "
				 "moving it to %d", r->tid, r->name, tid);
			r->tid = tid;
			appliance_disk_dir(a, r->name, dir, sizeof(dir));
			ret = diskrec_save(dir, r);
			if (ret)
				snprintf(err, sizeof(err), "saving its new target id %d: %s", tid,
					 strerror(-ret));
		}
	}
	if (!ret)
		ret = export_disk(a, r, false, err, sizeof(err));
	if (ret)
		log_error("exporting disk %s (target %d): %s", r->name, r->tid, err);
	else
		log_info("exported disk %s as target %d", r->name, r->tid);
	exports_set(a, r->name, ret ? err : NULL);
	return ret;
}

/* True when target t has the IQN of a disk whose export failed (exports.c). */
static bool of_failed_disk(struct appliance *a, const struct recon *c,
			   const struct tgtmgr_target *t)
{
	char iqn[DISKREC_IQN_MAX];

	for (size_t j = 0; j < c->nrecs; j++) {
		appliance_disk_iqn(a, c->recs[j].name, iqn, sizeof(iqn));
		if (!strcmp(t->name, iqn))
			return exports_failed(a, c->recs[j].name);
	}
	return false;
}

/* Removes our targets that no record wants, keeping those of damaged disks (retry: only
 * those in the way of a disk whose export failed). */
static void remove_stale(struct appliance *a, struct recon *c, bool retry)
{
	for (size_t i = 0; i < c->nt; i++) {
		bool wanted = false;
		int ret;

		if (!is_ours(a, c->t[i].name) || (retry && !of_failed_disk(a, c, &c->t[i])))
			continue;
		for (size_t j = 0; j < c->nrecs && !wanted; j++)
			wanted = target_matches(a, &c->t[i], &c->recs[j]);
		if (wanted || damaged_owner(a, c, &c->t[i]))
			continue;
		log_info("removing stale target %d (%s)", c->t[i].tid, c->t[i].name);
		ret = tgtmgr_unexport(a->tgt, c->t[i].tid, true);
		c->removed[i] = !ret || ret == -ENOENT;
	}
}

/* Brings the j-th record's target in line (exported, its CHAP password the record's);
 * false when that failed. */
static bool reconcile_disk(struct appliance *a, struct recon *c, size_t j)
{
	struct diskrec *r = &c->recs[j];
	char dir[PATH_MAX], err[256] = "", why[300];
	bool present = false;

	/* lun.json follows the current configuration (socket, timeouts). */
	appliance_disk_dir(a, r->name, dir, sizeof(dir));
	adopt_overlay_size(a, r, dir);
	if (write_lun_json(a, dir, r))
		log_warn("rewriting lun.json of disk %s failed", r->name);
	for (size_t i = 0; i < c->nt && !present; i++)
		present = target_matches(a, &c->t[i], r);
	if (!present)
		return reexport(a, c, j) == 0;
	exports_set(a, r->name, NULL);
	/* the account is there, but its password may not be the record's (changed in the
	 * record, or set before this daemon started) */
	if (!r->chap_user[0] || chap_is_set(a, r->chap_user, r->chap_password))
		return true;
	/* the records and targets in hand say whether it is used elsewhere too */
	if (replace_chap(a, r, true,
			 chap_shared(a, r->name, r->chap_user, c->recs, c->nrecs, c->t, c->nt,
				     c->removed, why, sizeof(why))
				 ? why
				 : NULL,
			 err, sizeof(err))) {
		log_error("disk %s: setting the password of CHAP account %s: %s", r->name,
			  r->chap_user, err);
		return false;
	}
	return true;
}

/*
 * retry: only the disks whose export failed (exports.c's retries), and stale targets in
 * their way; nothing else is changed, logged or counted as a reconcile.
 */
static int reconcile_locked(struct appliance *a, bool retry)
{
	struct recon c = {0};
	bool cancelled = false;
	int ret, failed = 0;

	ret = diskrec_scan(a->disks_dir, &c.recs, &c.nrecs, &c.bad, &c.nbad);
	if (!ret)
		ret = tgtmgr_list(a->tgt, &c.t, &c.nt);
	if (!ret && !(c.removed = calloc(c.nt ? c.nt : 1, sizeof(*c.removed))))
		ret = -ENOMEM;
	if (ret)
		goto out;
	damaged_tids(a, c.bad, c.nbad, c.t, c.nt);
	for (size_t i = 0; i < c.nbad && !retry; i++)
		log_damaged(a, &c, &c.bad[i]);
	remove_stale(a, &c, retry);
	for (size_t j = 0; j < c.nrecs; j++) {
		/* a stop waits for this re-export: with many disks, do not make it wait for
		 * exports it would delete again at once */
		if (tgtmgr_stopping(a->tgt) || (retry && exports_stopping(a))) {
			log_info("stopping: the reconcile ends with %zu of %zu disks not looked at",
				 c.nrecs - j, c.nrecs);
			cancelled = true;
			break;
		}
		if (retry && !exports_failed(a, c.recs[j].name))
			continue;
		if (!reconcile_disk(a, &c, j))
			failed++;
	}
	/* accounts of disks deleted by hand, or whose delete could not remove them */
	if (!retry && !cancelled)
		chap_sweep(a, c.recs, c.nrecs, c.t, c.nt, c.removed);
	exports_prune(a, c.recs, c.nrecs);
	/* what is known now replaces what was remembered (disks deleted by hand go) */
	a->ndisk_tids = 0;
	for (size_t j = 0; j < c.nrecs; j++)
		remember_tid(a, c.recs[j].name, c.recs[j].tid);
	for (size_t i = 0; i < c.nbad; i++)
		if (c.bad[i].tid)
			remember_tid(a, c.bad[i].name, c.bad[i].tid);
	if (!retry)
		a->reconciles++;
	ret = failed ? -EIO : cancelled ? -ECANCELED : 0;
out:
	exports_reconciled(a, retry);
	free(c.removed);
	free(c.t);
	free(c.recs);
	free(c.bad);
	return ret;
}

int appliance_reconcile(struct appliance *a)
{
	int ret;

	pthread_mutex_lock(&a->lock);
	ret = reconcile_locked(a, false);
	pthread_mutex_unlock(&a->lock);
	return ret;
}

int appliance_reconcile_failed(struct appliance *a)
{
	int ret;

	pthread_mutex_lock(&a->lock);
	ret = reconcile_locked(a, true);
	pthread_mutex_unlock(&a->lock);
	return ret;
}
