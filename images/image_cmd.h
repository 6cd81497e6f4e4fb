/*
 * image_cmd.h - `rackdisk image publish|verify|ls|show`: the command-line edge of images/.
 *
 * Errors are printed as one line, "rackdisk: <what>: <why>", and give a non-zero exit
 * (1 for a failure, 2 for a usage error).
 */
#ifndef RACKDISK_IMAGES_IMAGE_CMD_H
#define RACKDISK_IMAGES_IMAGE_CMD_H

/* argv[0] is "image"; argv[1] the subcommand. Returns the process exit status. */
int image_cmd_main(int argc, char **argv);

#endif
