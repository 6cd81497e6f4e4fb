/*
 * chap.h - the CHAP accounts rackdiskd keeps in tgtd for its disks (appliance/chap.c).
 * Internal to appliance/: disks.c is its user. Every call is made under a->lock.
 *
 * recs/nrecs are the readable disk records (diskrec_scan); t/nt tgtd's targets as listed
 * (tgtmgr_list), gone[i] (gone may be NULL) true for a target deleted since.
 */
#ifndef RACKDISK_APPLIANCE_CHAP_H
#define RACKDISK_APPLIANCE_CHAP_H

#include <stdbool.h>
#include <stddef.h>

struct appliance;
struct diskrec;
struct tgtmgr_target;

/* The password given to account user in this tgtd, remembered (as SHA-256): tgtadm
 * cannot show it. An account remembered is one this daemon made or set (chap.c, 4). */
void chap_remember(struct appliance *a, const char *user, const char *password);
void chap_forget(struct appliance *a, const char *user);
/* True when user was given password last (by this daemon, in this tgtd). */
bool chap_is_set(struct appliance *a, const char *user, const char *password);

/*
 * True when an account of disk name is used elsewhere too (chap.c, 2): another readable
 * record names user, or a live target other than the disk's own binds it. why (may be
 * NULL) then says which.
 */
bool chap_shared(struct appliance *a, const char *name, const char *user,
		 const struct diskrec *recs, size_t nrecs, const struct tgtmgr_target *t,
		 size_t nt, const bool *gone, char *why, size_t whylen);
/* chap_shared from a fresh scan of the records and listing of tgtd; true (the safe side)
 * when either fails. */
bool chap_shared_now(struct appliance *a, const char *name, const char *user, char *why,
		     size_t whylen);

/* Deletes account user of disk name, unless chap_shared_now (logged: why it stays).
 * what says when, for the log ("deleting disk d1"). */
void chap_delete_unshared(struct appliance *a, const char *name, const char *user,
			  const char *what);

/* Deletes the accounts this daemon made that no record names and no live target binds
 * (chap.c, 4): those of disks deleted by hand, or whose delete could not remove them. */
void chap_sweep(struct appliance *a, const struct diskrec *recs, size_t nrecs,
		const struct tgtmgr_target *t, size_t nt, const bool *gone);

#endif
