/*
 * tgtmgr.h - drives tgtd: spawns and supervises a private one (or attaches to an
 * external one) and makes the tgtadm calls that create and remove targets and LUNs.
 *
 * tgtd is managed through its own tool, tgtadm, run as a child process: tgtadm's wire
 * format is private to each tgt version, and the binary installed next to tgtd always
 * speaks it. A private tgtd gets its own management socket (TGT_IPC_SOCKET) and control
 * port, so several appliances and the system's tgtd can share one machine.
 *
 * A spawned tgtd runs with glibc malloc tunables that keep its per-command data buffers
 * mapped (tgtmgr.c, TGTD_MALLOC_TUNABLES); GLIBC_TUNABLES in our environment is appended,
 * so an operator's own settings win.
 *
 * Supervision: when a spawned tgtd exits, it is restarted with a growing backoff (1 s up
 * to 30 s) and on_restart is called (from the supervisor thread) once it answers, so the
 * owner can re-export its disks. tgtmgr_stop() removes every target (closing the LUNs
 * cleanly), asks tgtd to exit and kills it if it does not within a few seconds. tgtd
 * refuses to delete a LUN while one of its commands runs (a read waiting on a chunk): the
 * owner ends those first (rackdiskd ends its fetches), and such a target is tried again
 * for up to 2 s. Once it began, on_restart is no longer called, and it first waits
 * for a call in progress to return (so no target is created after it removed them). An
 * external tgtd keeps its targets.
 *
 * Thread safety: every call may be made from any thread; tgtadm calls are serialised.
 * Errors: 0 or a negative errno; tgtadm's own refusal is -EIO with its message in the
 * log (and in err where a call takes one).
 */
#ifndef RACKDISK_TARGET_TGTMGR_H
#define RACKDISK_TARGET_TGTMGR_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct tgtmgr;

struct tgtmgr_opts {
	const char *tgtd_path;     /* /usr/sbin/tgtd */
	const char *tgtadm_path;   /* /usr/sbin/tgtadm */
	bool spawn;                /* run our own tgtd; false: use a running one */
	const char *portal;        /* spawn: "HOST:PORT" for --iscsi portal= */
	int control_port;          /* tgtd -C / tgtadm -C */
	const char *ipc_socket;    /* TGT_IPC_SOCKET; NULL or "" = tgt's default */
	unsigned ready_timeout_ms; /* how long a (re)started tgtd may take; 0 = 10000 */
	void (*on_restart)(void *arg);
	void *arg;
};

int tgtmgr_start(const struct tgtmgr_opts *o, struct tgtmgr **out);
void tgtmgr_stop(struct tgtmgr *tm);

/* The spawned tgtd's pid, or 0 (external, or not running right now). */
pid_t tgtmgr_pid(struct tgtmgr *tm);
/* tgtmgr_stop() has begun: a re-export (on_restart) in progress can end early. */
bool tgtmgr_stopping(struct tgtmgr *tm);
/* Times the spawned tgtd was restarted after exiting. */
unsigned tgtmgr_restarts(struct tgtmgr *tm);
/* The wait before restarting a tgtd that exited after running ran_ms: next_ms (the backoff,
 * doubled at each restart), or 1 s again after a run of over a minute. Exposed for tests. */
unsigned tgtmgr_restart_delay(unsigned next_ms, uint64_t ran_ms);

/*
 * Runs tgtadm with args (NULL-terminated, without the program name, -C and --lld, which
 * are added). On success *out (if not NULL) receives its malloc'd stdout. On failure
 * err receives tgtadm's message. Bounded by a 15 s timeout. -ENOEXEC when tgtadm cannot
 * be executed (err: "cannot execute PATH: why").
 */
int tgtmgr_adm(struct tgtmgr *tm, const char *const *args, char **out, char *err, size_t errlen);

#define TGTMGR_ACL_MAX 33 /* ACL entries kept per target (nacl counts them all) */
struct tgtmgr_target {
	int tid;
	char name[224];
	char backing[4096]; /* LUN 1's backing-store path, "" if none */
	int nsessions;      /* I_T nexuses logged in */
	unsigned naccounts; /* incoming CHAP accounts bound */
	char account[256];  /* the first of them, "" if none */
	unsigned nacl;      /* ACL entries: initiator names, addresses or "ALL" */
	char acl[TGTMGR_ACL_MAX][224];
};

/* Lists targets (parses `tgtadm --op show --mode target`). *out is malloc'd. */
int tgtmgr_list(struct tgtmgr *tm, struct tgtmgr_target **out, size_t *n);

/* Creates target tid named iqn with LUN 1 = backing store path of type bstype, whose SCSI
 * id and serial number are scsi_id (hex digits; NULL or "": tgt's, from the tid). The
 * target offers larger iSCSI PDUs and bursts than tgt's defaults (tgtmgr.c,
 * target_params). */
int tgtmgr_export(struct tgtmgr *tm, int tid, const char *iqn, const char *bstype,
		  const char *path, const char *scsi_id, char *err, size_t errlen);
/* Binds an initiator name ("ALL" for any) to target tid. */
int tgtmgr_bind_initiator(struct tgtmgr *tm, int tid, const char *initiator, char *err,
			  size_t errlen);
/*
 * Creates CHAP account user/password and binds it to target tid. tgtd's accounts are
 * global by user name: with fresh, an account of that name that exists already is an
 * error (-EEXIST; it may hold another password); without (re-exporting a record whose
 * account tgtd kept), it is used as it is, password and all. 0 when this call created
 * the account, 1 when it bound one that was there; an account this call created is
 * deleted again when the bind fails.
 */
int tgtmgr_bind_chap(struct tgtmgr *tm, int tid, const char *user, const char *password,
		     bool fresh, char *err, size_t errlen);
/*
 * Sets a new password on CHAP account user, bound to target tid alone. tgt has no update:
 * the account is deleted and made again, and while a target has no account bound tgt
 * lets initiators in without CHAP, so the target's ACL entries (acl, nacl; "ALL" for any)
 * are taken away first and given back last: meanwhile nobody new logs in, and logged-in
 * sessions stay. On an error the target may be left without its ACL (closed, not open).
 */
int tgtmgr_replace_chap(struct tgtmgr *tm, int tid, const char *user, const char *password,
			const char *const *acl, size_t nacl, char *err, size_t errlen);
/* Deletes target tid (force: also when initiators are logged in). -ENOENT if absent,
 * -EBUSY when an initiator is logged in (without force), -EAGAIN when a command of its LUN
 * is still running (tgt refuses that even with force; it ends within the LUN's
 * io_timeout_ms). */
int tgtmgr_unexport(struct tgtmgr *tm, int tid, bool force);
/* Deletes a CHAP account; -ENOENT if absent. */
int tgtmgr_account_delete(struct tgtmgr *tm, const char *user);

/* IO counters of LUN lun of target tid summed over its sessions (tgtadm --op stat). */
struct tgtmgr_lun_stats {
	uint64_t read_bytes, read_ops, write_bytes, write_ops, errors;
};
int tgtmgr_lun_stats(struct tgtmgr *tm, int tid, int lun, struct tgtmgr_lun_stats *st);
/* Raw `tgtadm --op stat --mode system` text (every target, one tgtadm run); malloc'd. */
int tgtmgr_stat_all(struct tgtmgr *tm, char **text);

/* Parsers, exposed for tests. */
/* -EINVAL, with why, for a listing not in the exact shape tgt prints (see tgtmgr.c). */
int tgtmgr_parse_show(const char *text, struct tgtmgr_target **out, size_t *n, char *why,
		      size_t whylen);
/* Sums the lines of target tid (-1: any), LUN lun. */
int tgtmgr_parse_stat(const char *text, int tid, int lun, struct tgtmgr_lun_stats *st);

#endif
