/*
 * chap.c - the CHAP accounts rackdiskd keeps in tgtd for its disks (see chap.h).
 *
 * tgtd's accounts are global by user name and live apart from its targets: one is made,
 * then bound to a target; deleting it unbinds it from every target, and deleting it is
 * also the only way tgt has to change its password (tgtmgr_replace_chap). tgtadm shows
 * the accounts bound to each target, never a password. So:
 *
 *  1. Which accounts are in use is decided from facts: the readable disk records that
 *     name them, and the live targets that bind them (tgtadm's listing). A damaged
 *     record cannot be read: its account is known through its live target alone, and a
 *     damaged disk whose target is gone (a tgtd restart) binds nothing in tgtd; its
 *     account is made again when its record is restored and it is exported.
 *  2. An account of disk D is shared when another readable record names it, or a live
 *     target other than D's (by IQN) binds it. The listing keeps a target's first
 *     account only: a target with several counts as binding any (the safe side).
 *  3. A shared account is neither deleted nor given a new password: either would take
 *     it from the other target, which tgt then lets in without CHAP.
 *  4. Accounts this daemon made or set are remembered (chap_set, with the SHA-256 of the
 *     password given). Only those are deleted when unused (chap_sweep): with an external
 *     tgtd the others may be an operator's. An account bound to one of our own targets
 *     is ours too (reconcile keeps each target's account the one its record names).
 */
#include "appliance/chap.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "appliance/appliance.h"
#include "common/hash.h"
#include "common/log.h"
#include "target/tgtmgr.h"

/* An account of ours in this tgtd (4) and the password last given to it, as SHA-256
 * (appliance.h); pw_known false for one whose delete failed (swept again). */
struct chap_set {
	char user[DISKREC_CHAP_MAX];
	struct chunk_hash pw;
	bool pw_known;
};

static struct chap_set *find_chap(struct appliance *a, const char *user)
{
	for (size_t i = 0; i < a->nchap_set; i++)
		if (!strcmp(a->chap_set[i].user, user))
			return &a->chap_set[i];
	return NULL;
}

/* The entry of user, made if need be (with no password known); NULL if out of memory. */
static struct chap_set *add_chap(struct appliance *a, const char *user)
{
	struct chap_set *e = find_chap(a, user), *nv;

	if (e)
		return e;
	nv = realloc(a->chap_set, (a->nchap_set + 1) * sizeof(*nv));
	if (!nv) {
		/* the next reconcile sets the password again; an account this daemon made
		 * and does not remember is not swept (4) */
		log_warn("out of memory remembering CHAP account %s", user);
		return NULL;
	}
	a->chap_set = nv;
	e = &nv[a->nchap_set++];
	memset(e, 0, sizeof(*e));
	snprintf(e->user, sizeof(e->user), "%s", user);
	return e;
}

void chap_remember(struct appliance *a, const char *user, const char *password)
{
	struct chap_set *e = add_chap(a, user);

	if (e) {
		hash_compute(password, strlen(password), &e->pw);
		e->pw_known = true;
	}
}

void chap_forget(struct appliance *a, const char *user)
{
	struct chap_set *e = find_chap(a, user);

	if (e)
		*e = a->chap_set[--a->nchap_set];
}

bool chap_is_set(struct appliance *a, const char *user, const char *password)
{
	const struct chap_set *e = find_chap(a, user);
	struct chunk_hash h;

	hash_compute(password, strlen(password), &h);
	return e && e->pw_known && hash_equal(&e->pw, &h);
}

/* Target t may bind account user (2: only its first account is known). */
static bool target_binds(const struct tgtmgr_target *t, const char *user)
{
	return t->naccounts && (!strcmp(t->account, user) || t->naccounts > 1);
}

bool chap_shared(struct appliance *a, const char *name, const char *user,
		 const struct diskrec *recs, size_t nrecs, const struct tgtmgr_target *t,
		 size_t nt, const bool *gone, char *why, size_t whylen)
{
	char iqn[DISKREC_IQN_MAX];

	for (size_t i = 0; i < nrecs; i++) {
		if (strcmp(recs[i].name, name) && !strcmp(recs[i].chap_user, user)) {
			if (why)
				snprintf(why, whylen, "disk %s's record names it too",
					 recs[i].name);
			return true;
		}
	}
	appliance_disk_iqn(a, name, iqn, sizeof(iqn));
	for (size_t i = 0; i < nt; i++) {
		if ((gone && gone[i]) || !strcmp(t[i].name, iqn) || !target_binds(&t[i], user))
			continue;
		if (why)
			snprintf(why, whylen, "target %d (%s) has %s bound", t[i].tid, t[i].name,
				 t[i].naccounts > 1 ? "several accounts, maybe it too," : "it");
		return true;
	}
	return false;
}

bool chap_shared_now(struct appliance *a, const char *name, const char *user, char *why,
		     size_t whylen)
{
	struct diskrec_damaged *bad = NULL;
	struct tgtmgr_target *t = NULL;
	struct diskrec *recs = NULL;
	size_t n = 0, nbad = 0, nt = 0;
	bool shared = true;
	int ret;

	ret = diskrec_scan(a->disks_dir, &recs, &n, &bad, &nbad);
	if (!ret)
		ret = tgtmgr_list(a->tgt, &t, &nt);
	if (ret) {
		if (why)
			snprintf(why, whylen, "whether another disk uses it is not known (%s)",
				 strerror(-ret));
	} else {
		shared = chap_shared(a, name, user, recs, n, t, nt, NULL, why, whylen);
	}
	free(t);
	free(recs);
	free(bad);
	return shared;
}

/* Deletes account user from tgtd and from what is remembered; logs a failure. */
static void delete_account(struct appliance *a, const char *user, const char *what)
{
	int ret = tgtmgr_account_delete(a->tgt, user);

	if (ret && ret != -ENOENT) {
		struct chap_set *e = add_chap(a, user); /* ours to delete: swept again */

		if (e)
			e->pw_known = false;
		log_error("deleting CHAP account %s (%s): %s; it stays in tgtd%s", user, what,
			  strerror(-ret), e ? ", and the next reconcile tries again" : "");
		return;
	}
	chap_forget(a, user);
	if (!ret) /* -ENOENT: gone already (a tgtd restart takes every account) */
		log_info("CHAP account %s deleted (%s)", user, what);
}

void chap_delete_unshared(struct appliance *a, const char *name, const char *user,
			  const char *what)
{
	char why[300] = "";

	if (chap_shared_now(a, name, user, why, sizeof(why))) {
		log_warn("CHAP account %s stays in tgtd (%s): %s", user, what, why);
		return;
	}
	delete_account(a, user, what);
}

void chap_sweep(struct appliance *a, const struct diskrec *recs, size_t nrecs,
		const struct tgtmgr_target *t, size_t nt, const bool *gone)
{
	size_t i = 0;

	/* delete_account may drop entry i (the last one takes its place) */
	while (i < a->nchap_set) {
		char user[DISKREC_CHAP_MAX];
		size_t before = a->nchap_set;

		snprintf(user, sizeof(user), "%s", a->chap_set[i].user);
		/* "" names no disk: every other disk counts as another */
		if (!chap_shared(a, "", user, recs, nrecs, t, nt, gone, NULL, 0))
			delete_account(a, user, "no disk record names it, no target binds it");
		if (a->nchap_set == before)
			i++;
	}
}
