/*
 * exports.c - which disks are not exported, why, and when they are tried again (see
 * exports.h and appliance.h).
 *
 * A disk whose export failed (at start, in the reconcile after a tgtd restart, after a
 * resize) is a disk nobody can use: it is recorded here with the reason, reported (GET
 * disks, health, rackdisk_disks_not_exported) and tried again by a thread of its own,
 * which runs the reconcile's re-export for those disks alone (appliance_reconcile_failed)
 * with a backoff of RETRY_FIRST_MS doubling up to RETRY_MAX_MS. Any other reconcile
 * (SIGHUP: the operator fixed something) tries them at once and starts the backoff over.
 *
 * The table has a lock of its own, never held across a tgtadm call or a->lock, so that
 * health and listings never wait for a reconcile. Process-wide (like disks.c's pulls):
 * rackdiskd runs one appliance. a->exports is NULL before appliance_exports_start and
 * after appliance_exports_stop; what is recorded then is dropped (a reconcile after a tgtd
 * restart may still end during a stop).
 */
#include "appliance/exports.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "appliance/appliance.h"
#include "cache/overlay.h"
#include "common/log.h"
#include "common/util.h"
#include "images/manifest.h"
#include "target/fetch_proto.h"
#include "target/lunconf.h"
#include "target/tgtmgr.h"

#define RETRY_FIRST_MS 1000u
#define RETRY_MAX_MS 60000u
#define WHY_MAX 512

struct export_fail {
	char name[DISKREC_NAME_MAX];
	char why[WHY_MAX];
};

struct exports {
	struct export_fail *v;
	size_t n;
	uint64_t failures;  /* failed exports, since start (rackdisk_export_failures_total) */
	unsigned delay_ms;  /* the wait before the next retry */
	uint64_t due_ns;    /* when the next retry runs (now_ns); 0: none due */
	bool stop;
	pthread_cond_t wake;
	pthread_t thread;
};

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;

/* --- what the tgt module needs (exports_check_lun) --- */

static int check_manifest(const struct lun_config *c, const struct diskrec *r, char *err,
			  size_t errlen)
{
	char hex[HASH_HEX_LEN + 1], tag[DISKREC_NAME_MAX + 64] = "", perr[200] = "";
	struct manifest *m = NULL;
	char *buf = NULL;
	size_t len;
	int ret;

	if (r->image_tag[0])
		snprintf(tag, sizeof(tag), ", or pull tag %s again if it still names this image",
			 r->image_tag);
	ret = read_file(c->manifest, MANIFEST_MAX_BYTES, &buf, &len);
	if (ret)
		return set_err(err, errlen, ret, "the image's manifest copy %s: %s (restore it%s)",
			       c->manifest, strerror(-ret), tag);
	ret = manifest_parse(buf, len, &m, perr, sizeof(perr));
	free(buf);
	if (ret)
		return set_err(err, errlen, ret, "the image's manifest copy %s: %s", c->manifest,
			       perr);
	ret = hash_equal(&m->id, &c->image_id) ? 0 : -EBADMSG;
	manifest_free(m);
	hash_to_hex(&c->image_id, hex);
	if (ret)
		return set_err(err, errlen, ret, "the manifest copy %s is not image %s (its bytes "
			       "do not hash to it)", c->manifest, hex);
	return 0;
}

static int check_overlay(const char *dir, char *err, size_t errlen)
{
	char path[PATH_MAX];
	uint64_t size;
	int ret;

	ret = overlay_read_size(dir, &size);
	if (ret)
		return set_err(err, errlen, ret, "the disk's overlay %s/%s: %s", dir,
			       OVERLAY_MAP_FILE, ret == -EUCLEAN ? "no valid header (see rackdisk "
			       "fsck)" : strerror(-ret));
	if (config_path_fmt(path, sizeof(path), "%s/%s", dir, OVERLAY_DATA_FILE))
		return set_err(err, errlen, -ENAMETOOLONG, "%s: path too long", dir);
	if (access(path, R_OK | W_OK) < 0)
		return set_err(err, errlen, -errno, "the disk's overlay %s: %s", path,
			       strerror(errno));
	return 0;
}

int exports_check_lun(struct appliance *a, const struct diskrec *r, const char *dir,
		      char *err, size_t errlen)
{
	struct lun_config c;
	char perr[PATH_MAX + 200] = "";
	struct stat st;
	int ret;

	ret = lun_config_load(dir, &c, perr, sizeof(perr));
	if (ret)
		/* a parse error names the file without its directory */
		return set_err(err, errlen, ret, "%s%s%s", perr[0] == '/' ? "" : dir,
			       perr[0] == '/' ? "" : "/", perr);
	if (strcmp(c.name, r->name) || !hash_equal(&c.image_id, &r->image_id))
		ret = set_err(err, errlen, -EINVAL, "%s/%s does not match the disk's record (its "
			      "name or image differs; was rewriting it refused?)", dir,
			      LUN_CONFIG_FILE);
	if (!ret)
		ret = check_manifest(&c, r, err, errlen);
	if (!ret && stat(c.chunk_dir, &st) < 0)
		ret = set_err(err, errlen, -errno, "the chunk store %s: %s", c.chunk_dir,
			      strerror(errno));
	if (!ret)
		ret = check_overlay(dir, err, errlen);
	lun_config_free(&c);
	return ret;
}

int exports_bstype_missing(struct appliance *a, const char *bstype)
{
	const char *args[] = {"--mode", "system", "--op", "show", NULL};
	char *out = NULL, *p;
	bool found = false;
	int ret;

	ret = tgtmgr_adm(a->tgt, args, &out, NULL, 0);
	if (ret)
		return ret;
	/* "Backing stores:" then one "    NAME[ (bsoflags ...)]" line each (tgt's
	 * usr/target.c, system_show) */
	p = strstr(out, "\nBacking stores:\n");
	if (!p) {
		free(out);
		return -EPROTO; /* another shape: not known */
	}
	for (p = strchr(p + 1, '\n') + 1; p && !strncmp(p, "    ", 4) && !found;) {
		size_t n = strcspn(p + 4, " \n");

		found = n == strlen(bstype) && !strncmp(p + 4, bstype, n);
		p = strchr(p, '\n');
		p = p ? p + 1 : NULL;
	}
	free(out);
	return found ? 0 : 1;
}

/* --- the table --- */

static struct export_fail *find(struct exports *e, const char *name)
{
	for (size_t i = 0; i < e->n; i++)
		if (!strcmp(e->v[i].name, name))
			return &e->v[i];
	return NULL;
}

static void drop(struct exports *e, struct export_fail *f)
{
	*f = e->v[--e->n];
}

/* Schedules a retry after the current delay unless one is due already; lock held. */
static void schedule(struct exports *e)
{
	if (e->due_ns)
		return;
	e->due_ns = now_ns() + (uint64_t)e->delay_ms * 1000000ULL;
	pthread_cond_signal(&e->wake);
}

void exports_set(struct appliance *a, const char *name, const char *err)
{
	struct exports *e;
	struct export_fail *f, *nv;

	pthread_mutex_lock(&lock);
	e = a->exports;
	f = e ? find(e, name) : NULL;
	if (!e) {
		/* before start, after stop: nothing reports or retries it */
	} else if (!err) {
		if (f)
			drop(e, f);
	} else {
		e->failures++;
		if (!f && (nv = realloc(e->v, (e->n + 1) * sizeof(*nv)))) {
			e->v = nv;
			f = &nv[e->n++];
			snprintf(f->name, sizeof(f->name), "%s", name);
		}
		if (f)
			snprintf(f->why, sizeof(f->why), "%s", err);
		else
			log_warn("out of memory recording that disk %s is not exported", name);
		schedule(e);
	}
	pthread_mutex_unlock(&lock);
}

void exports_forget(struct appliance *a, const char *name)
{
	struct export_fail *f;

	pthread_mutex_lock(&lock);
	if (a->exports && (f = find(a->exports, name)))
		drop(a->exports, f);
	pthread_mutex_unlock(&lock);
}

void exports_prune(struct appliance *a, const struct diskrec *recs, size_t n)
{
	struct exports *e;

	pthread_mutex_lock(&lock);
	e = a->exports;
	for (size_t i = 0; e && i < e->n;) {
		bool known = false;

		for (size_t j = 0; j < n && !known; j++)
			known = !strcmp(recs[j].name, e->v[i].name);
		if (known)
			i++;
		else
			drop(e, &e->v[i]);
	}
	pthread_mutex_unlock(&lock);
}

bool exports_failed(struct appliance *a, const char *name)
{
	bool failed;

	pthread_mutex_lock(&lock);
	failed = a->exports && find(a->exports, name);
	pthread_mutex_unlock(&lock);
	return failed;
}

void exports_reconciled(struct appliance *a, bool retry)
{
	struct exports *e;

	pthread_mutex_lock(&lock);
	e = a->exports;
	if (e) {
		e->delay_ms = !e->n || !retry ? RETRY_FIRST_MS : MIN(e->delay_ms * 2, RETRY_MAX_MS);
		e->due_ns = 0;
		if (e->n)
			schedule(e);
	}
	pthread_mutex_unlock(&lock);
}

bool exports_stopping(struct appliance *a)
{
	bool stopping;

	pthread_mutex_lock(&lock);
	stopping = !a->exports || a->exports->stop;
	pthread_mutex_unlock(&lock);
	return stopping;
}

/* --- the retry thread --- */

static void *retry_main(void *arg)
{
	struct appliance *a = arg;
	struct exports *e = a->exports;

	pthread_mutex_lock(&lock);
	while (!e->stop) {
		uint64_t now = now_ns();
		size_t n = e->n;

		if (!n || !e->due_ns) {
			pthread_cond_wait(&e->wake, &lock);
			continue;
		}
		if (now < e->due_ns) {
			struct timespec ts = {(time_t)(e->due_ns / 1000000000ULL),
					      (long)(e->due_ns % 1000000000ULL)};

			pthread_cond_timedwait(&e->wake, &lock, &ts);
			continue;
		}
		e->due_ns = 0;
		pthread_mutex_unlock(&lock);
		log_info("retrying the export of %zu disk(s) not exported", n);
		appliance_reconcile_failed(a); /* exports_reconciled schedules the next */
		pthread_mutex_lock(&lock);
	}
	pthread_mutex_unlock(&lock);
	return NULL;
}

int appliance_exports_start(struct appliance *a)
{
	struct exports *e = calloc(1, sizeof(*e));
	pthread_condattr_t ca;
	int ret;

	if (!e)
		return -ENOMEM;
	e->delay_ms = RETRY_FIRST_MS;
	/* due_ns is now_ns(): CLOCK_MONOTONIC */
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&e->wake, &ca);
	pthread_condattr_destroy(&ca);
	pthread_mutex_lock(&lock);
	a->exports = e;
	pthread_mutex_unlock(&lock);
	ret = -pthread_create(&e->thread, NULL, retry_main, a);
	if (ret) {
		pthread_mutex_lock(&lock);
		a->exports = NULL;
		pthread_mutex_unlock(&lock);
		pthread_cond_destroy(&e->wake);
		free(e);
		return ret;
	}
	/* every export fails without the module: say so once, plainly */
	if (exports_bstype_missing(a, "rackdisk") == 1)
		log_error("tgtd lists no 'rackdisk' backing store (tgtadm --mode system --op "
			  "show): bs_rackdisk.so is not in tgt's module directory, or not built "
			  "for this tgt version (make deps && make && make install; an external "
			  "tgtd must then be restarted). No disk can be exported until it is.");
	return 0;
}

void appliance_exports_stop(struct appliance *a)
{
	struct exports *e = a->exports;

	if (!e)
		return;
	pthread_mutex_lock(&lock);
	e->stop = true;
	pthread_cond_signal(&e->wake);
	pthread_mutex_unlock(&lock);
	pthread_join(e->thread, NULL);
	pthread_mutex_lock(&lock);
	a->exports = NULL;
	pthread_mutex_unlock(&lock);
	pthread_cond_destroy(&e->wake);
	free(e->v);
	free(e);
}

/* --- readers (without a->lock) --- */

bool appliance_disk_not_exported(struct appliance *a, const char *name, char *why,
				 size_t whylen)
{
	const struct export_fail *f;

	pthread_mutex_lock(&lock);
	f = a->exports ? find(a->exports, name) : NULL;
	if (f && why)
		snprintf(why, whylen, "%s", f->why);
	pthread_mutex_unlock(&lock);
	return f != NULL;
}

void appliance_exports_stats(struct appliance *a, struct appliance_export_stats *st)
{
	memset(st, 0, sizeof(*st));
	pthread_mutex_lock(&lock);
	if (a->exports) {
		st->not_exported = a->exports->n;
		st->failures = a->exports->failures;
	}
	pthread_mutex_unlock(&lock);
}
