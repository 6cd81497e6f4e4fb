/*
 * source.h - the input of `rackdisk image publish`: a raw file or block device, or a qcow2
 * file read through qemu-img. Internal to images/.
 *
 * A qcow2 file is first checked (source_check): `qemu-img info` must show no backing file and
 * no external data file, `qemu-img check` no corruption. It is then converted by `qemu-img
 * convert` into a sparse raw file in a temporary directory (the repository's tmp/), which
 * is unlinked as soon as it is open: no exit path can leave it behind once opened.
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
 * The functions below that take err write a one-line reason there on every error, and
 * leave it empty on success.
 *
 * Checks, without writing anything, that path can be published: it exists, is a file or
 * a block device, and if it is a qcow2, it reads no other file (a backing file or an external
 * data file: -EPERM) and `qemu-img check` finds no corruption (leaked clusters are harmless
 * to a reader and accepted). -errno and a one-line reason.
 */
int source_check(const char *path, char *err, size_t errlen);

/*
 * Opens path (after source_check). tmpdir receives the converted raw file of a qcow2 input. On
 * error returns a negative errno and writes a one-line reason (without the path) into err.
 */
int source_open(const char *path, const char *tmpdir, struct image_source *src, char *err,
		size_t errlen);

/* True when path starts with the qcow2 magic; false for anything else or unreadable. */
bool source_is_qcow2(const char *path);

/*
 * Reads exactly len bytes at the current position. -ENODATA when the input ends before
 * (it shrank since source_open measured it); a failed read returns its own -errno (-EIO for
 * a device error), never -ENODATA.
 */
int source_read(struct image_source *src, void *buf, size_t len);

void source_close(struct image_source *src);

#endif
