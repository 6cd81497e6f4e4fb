/*
 * fsck_cmd.c - `rackdisk fsck --config FILE | --cache DIR --state DIR [--repair]`: the
 * check of an appliance's durable state: every chunk file of the store
 * (chunkstore_fsck), every disk's overlay (disk_fsck) and every disk record (diskrec).
 *
 * Repair removes what the owner could not trust anyway (torn chunks, temp files) and is
 * refused while rackdiskd answers on the fetch socket: the daemon owns the store then.
 * Without --repair the check may run beside rackdiskd (the README's recovery of a damaged
 * disk record does so): a disk whose overlay a running tgtd holds open (its lock) cannot
 * be checked then, and is listed as skipped, which is not a problem.
 * Exit: 0 clean, 1 problems found (listed, one per line; with --json, one JSON object
 * with a "problems" array and a "skipped" one), 2 usage.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <jansson.h>

#include "appliance/cli.h"
#include "appliance/config.h"
#include "appliance/diskrec.h"
#include "cache/chunkstore.h"
#include "cache/disk.h"
#include "common/util.h"

struct findings {
	unsigned n, nskipped;
	json_t *list;    /* with --json: [{"path", "problem"}], printed at the end */
	json_t *skipped; /* with --json: [{"path", "reason"}] */
};

static void report(void *arg, const char *path, const char *problem)
{
	struct findings *f = arg;

	f->n++;
	if (!f->list)
		printf("%s: %s\n", path, problem);
	else if (json_array_append_new(f->list, json_pack("{s:s, s:s}", "path", path,
							  "problem", problem)))
		fprintf(stderr, "rackdisk: out of memory listing a problem of %s\n", path);
}

/* A disk that could not be checked, and why; not a problem. */
static void skip(struct findings *f, const char *path, const char *reason)
{
	f->nskipped++;
	if (!f->skipped)
		printf("%s: skipped: %s\n", path, reason);
	else if (json_array_append_new(f->skipped, json_pack("{s:s, s:s}", "path", path,
							     "reason", reason)))
		fprintf(stderr, "rackdisk: out of memory listing %s as skipped\n", path);
}

/* True when something accepts connections on the daemon's fetch socket. */
static bool daemon_running(const char *state_dir)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	bool up = false;
	int fd;

	if (config_path_fmt(sa.sun_path, sizeof(sa.sun_path), "%s/rackdiskd.sock", state_dir))
		return false;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd >= 0) {
		up = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
		close(fd);
	}
	return up;
}

static int check_disks(const char *state_dir, bool repair, struct findings *problems,
		       unsigned *ndisks)
{
	char dir[PATH_MAX], path[PATH_MAX];
	struct dirent *de;
	DIR *d;

	if (config_path_fmt(dir, sizeof(dir), "%s/disks", state_dir))
		return -ENAMETOOLONG;
	d = opendir(dir);
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	while ((de = readdir(d))) {
		struct diskrec r;
		char err[512];
		int ret;

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (config_path_fmt(path, sizeof(path), "%s/%s", dir, de->d_name))
			continue;
		if (!strcmp(de->d_name, "lost+found"))
			continue; /* disks/ is a file system's root */
		if (!strncmp(de->d_name, ".new-", 5) || !strncmp(de->d_name, ".trash-", 7)) {
			/* diskrec.c invariant 3: leftovers of an interrupted create/delete. */
			report(problems, path, "leftover of an interrupted create or delete "
					       "(removed by rackdiskd at start)");
			continue;
		}
		if (!name_is_valid(de->d_name)) {
			report(problems, path, "not a disk (no disk has such a name; rackdiskd "
					       "ignores it): move it out of the disks directory");
			continue;
		}
		(*ndisks)++;
		/* the check rackdiskd's reconcile makes (a failure there: a damaged disk) */
		if (diskrec_load_disk(dir, de->d_name, &r, err, sizeof(err)))
			report(problems, path, err);
		ret = disk_fsck(path, repair, report, problems);
		if (ret == -EBUSY && !repair) {
			/* exported: the check is for a disk no tgtd holds (a repair never
			 * runs beside one, so there it stays a problem) */
			skip(problems, path, "overlay in use by a running tgtd, not checked "
					     "(check it while the disk is not exported)");
		} else if (ret < 0) {
			char msg[128];

			snprintf(msg, sizeof(msg), "overlay check failed: %s",
				 ret == -EBUSY ? "in use (a tgtd still serves this disk; stop it "
						 "first)" : strerror(-ret));
			report(problems, path, msg);
		}
	}
	closedir(d);
	return 0;
}

int cli_fsck_main(const struct cli_opts *o, int argc, char **argv)
{
	const char *cfg_path = NULL, *cache = NULL, *state = NULL;
	static struct config cfg;
	struct findings problems = {0};
	unsigned ndisks = 0;
	bool repair = false;
	char err[1024];
	int ret;

	for (int i = 1; i < argc; i++) {
		bool has = i + 1 < argc;

		if (!strcmp(argv[i], "--config") && has)
			cfg_path = argv[++i];
		else if (!strcmp(argv[i], "--cache") && has)
			cache = argv[++i];
		else if (!strcmp(argv[i], "--state") && has)
			state = argv[++i];
		else if (!strcmp(argv[i], "--repair"))
			repair = true;
		else
			goto usage;
	}
	if (cfg_path) {
		if (cache || state)
			goto usage;
		if (config_load(cfg_path, &cfg, err, sizeof(err))) {
			fprintf(stderr, "rackdisk: %s\n", err);
			return 2;
		}
		cache = cfg.cache_dir;
		state = cfg.state_dir;
	}
	if (!cache || !state)
		goto usage;
	if (o->json && (!(problems.list = json_array()) || !(problems.skipped = json_array()))) {
		fprintf(stderr, "rackdisk: out of memory\n");
		goto fail;
	}
	if (repair && daemon_running(state)) {
		fprintf(stderr, "rackdisk: rackdiskd is running on %s; stop it before fsck "
				"--repair\n", state);
		goto fail;
	}
	ret = chunkstore_fsck(cache, repair, report, &problems);
	if (ret < 0) {
		fprintf(stderr, "rackdisk: checking the chunk store %s: %s\n", cache,
			strerror(-ret));
		goto fail;
	}
	ret = check_disks(state, repair, &problems, &ndisks);
	if (ret < 0) {
		fprintf(stderr, "rackdisk: checking the disks in %s: %s\n", state, strerror(-ret));
		goto fail;
	}
	if (problems.list) {
		json_t *j = json_pack("{s:s, s:s, s:I, s:b, s:o, s:o}", "cache", cache, "state",
				      state, "disks", (json_int_t)ndisks, "repair", repair,
				      "problems", problems.list, "skipped", problems.skipped);

		if (!j || json_dumpf(j, stdout, JSON_INDENT(2)) < 0) {
			fprintf(stderr, "rackdisk: out of memory\n");
			json_decref(j);
			return 1;
		}
		putchar('\n');
		json_decref(j);
	} else {
		printf("fsck: chunk store %s and %u disk(s) in %s: %u problem(s)%s", cache,
		       ndisks, state, problems.n,
		       problems.n && repair ? " (repaired where possible)" : "");
		if (problems.nskipped)
			printf(", %u disk(s) skipped (in use by a running tgtd)",
			       problems.nskipped);
		putchar('\n');
	}
	return problems.n ? 1 : 0;
fail:
	json_decref(problems.list);
	json_decref(problems.skipped);
	return 1;
usage:
	fprintf(stderr, "usage: rackdisk fsck --config FILE [--repair]\n"
			"       rackdisk fsck --cache DIR --state DIR [--repair]\n");
	return 2;
}
