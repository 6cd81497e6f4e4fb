/*
 * rackdisk.c - the rackdisk command-line tool: dispatches to each command family.
 *
 *   rackdisk image publish|verify|ls|show ...   (images/image_cmd.c, works on a repo)
 */
#include <stdio.h>
#include <string.h>

#include "common/log.h"
#include "images/image_cmd.h"

static void usage(FILE *f)
{
	fprintf(f, "usage: rackdisk image publish|verify|ls|show ...\n"
		   "       rackdisk --help\n");
}

int main(int argc, char **argv)
{
	log_init("rackdisk", LOG_LVL_INFO, 0);
	if (argc < 2) {
		usage(stderr);
		return 2;
	}
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(stdout);
		return 0;
	}
	if (!strcmp(argv[1], "image"))
		return image_cmd_main(argc - 1, argv + 1);
	fprintf(stderr, "rackdisk: unknown command '%s'\n", argv[1]);
	usage(stderr);
	return 2;
}
