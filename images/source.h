/*
 * source.h - the input of `rackdisk image publish`: a raw file or block device, or a qcow2
 * file read through qemu-img. Internal to images/.
 *
 * The input is opened once (source_open) and read only through that descriptor, so that
 * replacing the file at the path meanwhile cannot change what is published. A qcow2 is
 * first copied from that descriptor into a private, unlinked snapshot in a temporary
 * directory (the repository's tmp/); `qemu-img info` of the snapshot must show no backing
 * file and no external data file, `qemu-img check` no corruption, and `qemu-img convert`
 * turns it into a sparse raw file, also unlinked, that is then read (see source.c).
 */
#ifndef RACKDISK_IMAGES_SOURCE_H
#define RACKDISK_IMAGES_SOURCE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct image_source {
	int fd;
	uint64_t size;
	bool qcow2;
};

/*
 * The functions below that take err write a one-line reason there on every error (without
 * the path), and leave it empty on success.
 *
 * An early answer, without writing anything, to whether path can be published at all: it
 * exists and is a file or a block device. Only a hint for a friendly early error: the file
 * may change before source_open, which decides on its own.
 */
int source_check(const char *path, char *err, size_t errlen);

/*
 * Opens path once and makes src read what that descriptor holds: a raw file or device as
 * is, a qcow2 through a private snapshot and conversion in tmpdir (nothing is left there
 * afterwards). A qcow2 that reads another file (a backing file or an external data file)
 * is refused with -EPERM; one that `qemu-img info` or `check` finds corrupt with -EBADMSG
 * (leaked clusters are harmless to a reader and accepted). Other errors: -errno.
 */
int source_open(const char *path, const char *tmpdir, struct image_source *src, char *err,
		size_t errlen);

/*
 * Reads exactly len bytes at the current position. -ENODATA when the input ends before
 * (it shrank since source_open measured it); a failed read returns its own -errno (-EIO for
 * a device error), never -ENODATA.
 */
int source_read(struct image_source *src, void *buf, size_t len);

void source_close(struct image_source *src);

#endif
