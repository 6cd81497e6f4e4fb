/*
 * cli.h - the daemon-side commands of the `rackdisk` CLI (appliance/cli.c talks to
 * rackdiskd's REST API with libcurl) and the offline `rackdisk fsck` (appliance/fsck_cmd.c).
 *
 * Each *_main takes argv with argv[0] = the command word ("disk", "image", ...) and
 * returns the exit status: 0 ok, 1 failure (one line "rackdisk: ..." on stderr), 2 usage.
 */
#ifndef RACKDISK_APPLIANCE_CLI_H
#define RACKDISK_APPLIANCE_CLI_H

#include <stdbool.h>

struct cli_opts {
	const char *api;  /* base URL of rackdiskd, e.g. http://127.0.0.1:7470 */
	bool json;        /* print the API's JSON instead of text */
};

int cli_image_main(const struct cli_opts *o, int argc, char **argv);
int cli_disk_main(const struct cli_opts *o, int argc, char **argv);
int cli_cache_main(const struct cli_opts *o, int argc, char **argv);
int cli_peers_main(const struct cli_opts *o, int argc, char **argv);
int cli_fsck_main(const struct cli_opts *o, int argc, char **argv);

#endif
