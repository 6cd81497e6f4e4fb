/*
 * rackdisk.c - the rackdisk command-line tool: dispatches to each command family.
 *
 *   rackdisk image publish|verify ...            (images/image_cmd.c, works on a repo)
 *   rackdisk image ls|show ... --repo DIR|URL    (images/image_cmd.c)
 *   rackdisk image ls|pull|show ...              (appliance/cli.c, asks rackdiskd)
 *   rackdisk disk create|ls|show|rm ...          (appliance/cli.c)
 *   rackdisk cache stats | peers                 (appliance/cli.c)
 *   rackdisk fsck ...                            (appliance/fsck_cmd.c, no daemon asked)
 *
 * Global options, accepted anywhere before or after the command words:
 *   --api URL   rackdiskd's API (default $RACKDISK_API, else http://127.0.0.1:7470)
 *   --json      print JSON (daemon commands)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>

#include "appliance/cli.h"
#include "common/log.h"
#include "images/image_cmd.h"

#define DEFAULT_API "http://127.0.0.1:7470"

static void usage(FILE *f)
{
	fprintf(f,
		"usage: rackdisk [--api URL] [--json] COMMAND ...\n"
		"  image publish SRC --repo DIR --name NAME [--chunk-size SIZE] [--level N]\n"
		"       [--workers N] [--json]\n"
		"  image verify --repo DIR|URL NAME|ID [--workers N] [--json]\n"
		"  image ls --repo DIR|URL        image show --repo DIR|URL NAME|ID\n"
		"  image ls | pull TAG | show TAG          (images pulled by rackdiskd)\n"
		"  disk create NAME --image TAG [--size S] [--initiator IQN]...\n"
		"       [--chap-user U --chap-password P|--chap-password-file FILE|--chap-password -]\n"
		"       (prints the iSCSI URL last; FILE or - (stdin): the password's first line)\n"
		"  disk ls | show NAME | rm NAME [--force]\n"
		"  disk resize NAME --size S               (grows it; no initiator logged in)\n"
		"  cache stats\n"
		"  peers\n"
		"  fsck --config FILE | --cache DIR --state DIR [--repair]\n"
		"       (exported disks are skipped; --repair needs rackdiskd stopped)\n"
		"The API is --api URL, else $RACKDISK_API, else " DEFAULT_API ".\n");
}

/* arg given alone ("--repo") or with its value ("--repo=DIR") */
static bool has_arg(int argc, char **argv, const char *arg)
{
	size_t n = strlen(arg);

	for (int i = 0; i < argc; i++)
		if (!strncmp(argv[i], arg, n) && (argv[i][n] == '\0' || argv[i][n] == '='))
			return true;
	return false;
}

/*
 * `image` commands that work on a repository go to images/; the rest ask rackdiskd.
 * `image --help`, `image pull --help` and `image ls|show --help` without --repo get the
 * general usage, which has both forms (images/ knows neither pull nor the daemon's ls).
 */
static bool image_cmd_is_repo(int argc, char **argv)
{
	const char *sub = argc > 1 ? argv[1] : "";

	return !strcmp(sub, "publish") || !strcmp(sub, "verify") || has_arg(argc, argv, "--repo") ||
	       argc < 2;
}

int main(int argc, char **argv)
{
	struct cli_opts o = {.api = getenv("RACKDISK_API"), .json = false};
	char **args = calloc((size_t)argc + 1, sizeof(*args));
	int n = 0, ret;

	log_init("rackdisk", LOG_LVL_INFO, 0);
	if (!args)
		return 1;
	/* Take the global options out, keep the rest in order. */
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--api") || !strncmp(argv[i], "--api=", 6)) {
			/* "--api" last on the line was "unknown command '--api'" */
			o.api = argv[i][5] ? argv[i] + 6 : i + 1 < argc ? argv[++i] : "";
			if (!*o.api) {
				fprintf(stderr, "rackdisk: --api needs a value (rackdiskd's URL)\n");
				free(args);
				return 2;
			}
		} else if (!strcmp(argv[i], "--json"))
			o.json = true;
		else
			args[n++] = argv[i];
	}
	if (!o.api || !*o.api)
		o.api = DEFAULT_API;
	if (n < 1) {
		usage(stderr);
		free(args);
		return 2;
	}
	if (!strcmp(args[0], "--help") || !strcmp(args[0], "-h") || !strcmp(args[0], "help")) {
		usage(stdout);
		free(args);
		return 0;
	}
	if (!strcmp(args[0], "image") && image_cmd_is_repo(n, args)) {
		/* image_cmd_main parses its own options, --json included. */
		if (o.json)
			args[n++] = "--json";
		args[n] = NULL;
		ret = image_cmd_main(n, args);
		free(args);
		return ret;
	}
	/* `rackdisk disk --help`, `rackdisk fsck --help`, ...: what the command takes, exit 0
	 * (image's repository commands answer --help themselves, above). */
	if (has_arg(n, args, "--help") || has_arg(n, args, "-h")) {
		usage(stdout);
		free(args);
		return 0;
	}
	curl_global_init(CURL_GLOBAL_DEFAULT);
	if (!strcmp(args[0], "image"))
		ret = cli_image_main(&o, n, args);
	else if (!strcmp(args[0], "disk"))
		ret = cli_disk_main(&o, n, args);
	else if (!strcmp(args[0], "cache"))
		ret = cli_cache_main(&o, n, args);
	else if (!strcmp(args[0], "peers"))
		ret = cli_peers_main(&o, n, args);
	else if (!strcmp(args[0], "fsck"))
		ret = cli_fsck_main(&o, n, args);
	else {
		fprintf(stderr, "rackdisk: unknown command '%s'\n", args[0]);
		usage(stderr);
		ret = 2;
	}
	curl_global_cleanup();
	free(args);
	return ret;
}
