/*
 * source.c - see source.h. qemu-img is run with posix_spawnp, its output captured so the
 * first line of its complaint can become the one-line error the operator sees.
 *
 * A qcow2 file can name other files whose bytes become part of the image: a backing file,
 * an external data file. Publishing runs with the operator's rights, often root, so such an
 * image would copy any host file into a repository that a whole rack can read. And the
 * input is a path that someone else may be able to rewrite while we work on it: checking
 * the file at that path and then reading "it" again later reads whatever is there then (a
 * raw file when checked, a qcow2 naming /etc/shadow when converted; or a qcow2 whose header
 * gains a backing file between `qemu-img info` and `qemu-img convert`).
 *
 * So the input is opened once, and everything is decided and read from that descriptor:
 *   1. The qcow2 magic is read from the descriptor; a raw input is read through it.
 *   2. A qcow2 input is first copied, from the descriptor, into a private snapshot: a file
 *      in tmpdir that is unlinked as soon as it is created, so that no name reaches it
 *      (FICLONE where the filesystem shares extents, else a copy that keeps holes).
 *   3. qemu-img info, check and convert all read that snapshot, which nobody can change,
 *      and are given it as /dev/fd/N of our descriptor, never by a name: what info saw is
 *      what convert reads. info must show no backing file and no external data file.
 *   4. On top of that, every qemu-img call opens the image with "backing": null, so no
 *      backing file is opened whatever the header says (an external data file cannot be
 *      switched off that way: step 3's refusal is what keeps it out).
 *   5. convert writes into another unlinked file of ours (/dev/fd/M, -n --target-is-zero,
 *      so holes stay holes), which becomes the input that publish reads.
 * No exit path leaves a file behind once it is unlinked; a crash in the instant between
 * creating and unlinking one leaves a "qcow2-*" file that publish's sweep of tmp/ removes.
 */
#include "images/source.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/fs.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "common/hash.h"
#include "common/util.h"

extern char **environ;

static const unsigned char qcow2_magic[4] = {'Q', 'F', 'I', 0xfb};

/* qemu-img check exit codes: 0 clean, 3 only leaked clusters (harmless to a reader). */
#define QEMU_CHECK_LEAKS 3

#define COPY_BUF_BYTES (1024 * 1024)

/*
 * Runs argv, collecting its stderr (first outlen-1 bytes) into out, and its stdout too
 * unless stdout_fd >= 0 receives it. keep[0..nkeep) are descriptors the child inherits
 * under their own numbers (the /dev/fd/N it is given); every other one of ours is
 * close-on-exec. Returns the exit status (0..255), or a negative errno when it could not
 * run.
 */
static int run_capture(char *const argv[], const int *keep, int nkeep, int stdout_fd, char *out,
		       size_t outlen)
{
	posix_spawn_file_actions_t fa;
	size_t used = 0;
	int pfd[2], status, ret;
	pid_t pid;

	out[0] = '\0';
	if (pipe2(pfd, O_CLOEXEC) < 0)
		return -errno;
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, stdout_fd >= 0 ? stdout_fd : pfd[1], 1);
	posix_spawn_file_actions_adddup2(&fa, pfd[1], 2);
	/* dup2 onto itself clears FD_CLOEXEC in the child (POSIX 2024, glibc >= 2.29). */
	for (int i = 0; i < nkeep; i++)
		posix_spawn_file_actions_adddup2(&fa, keep[i], keep[i]);
	ret = posix_spawnp(&pid, argv[0], &fa, NULL, argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	close(pfd[1]);
	if (ret) {
		close(pfd[0]);
		return -ret;
	}
	for (;;) {
		char scratch[4096];
		char *dst = used + 1 < outlen ? out + used : scratch;
		size_t room = used + 1 < outlen ? outlen - 1 - used : sizeof(scratch);
		ssize_t n = read(pfd[0], dst, room);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		if (dst != scratch) {
			used += (size_t)n;
			out[used] = '\0';
		}
	}
	close(pfd[0]);
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return -errno;
	if (WIFSIGNALED(status))
		return 128 + WTERMSIG(status);
	return WEXITSTATUS(status);
}

/* The most telling line of qemu-img's output: the first one that says "error" or
 * "qemu-img:", else the first non-empty one; without newline. The json: spec it was given
 * (qemu_spec), which means nothing to the operator, is replaced by name, the input. */
static void first_line(const char *text, const char *name, char *buf, size_t len)
{
	const char *p = strstr(text, "qemu-img:"), *spec;
	size_t n;

	if (!p)
		p = strstr(text, "ERROR");
	if (!p)
		p = text + strspn(text, " \t\r\n");
	if (!strncmp(p, "qemu-img: ", 10))
		p += 10;
	n = strcspn(p, "\r\n");
	spec = memmem(p, n, "json:{", 6);
	if (spec) {
		/* the spec ends at the '}' that closes its first '{' (no braces in its strings) */
		size_t at = (size_t)(spec - p), end = at + 5;
		int depth = 0;

		do
			depth += p[end] == '{' ? 1 : p[end] == '}' ? -1 : 0;
		while (++end < n && depth);
		if (!depth) {
			snprintf(buf, len, "%.*s%s%.*s", (int)at, p, name, (int)(n - end), p + end);
			return;
		}
	}
	snprintf(buf, len, "%.*s", (int)n, p);
}

/*
 * The qcow2 held by descriptor fd, as qemu-img is given it (steps 3 and 4 at the top): by
 * descriptor, not by name, and without a backing file. A json: name also keeps qemu-img
 * from reading "protocol:rest" or "-option" into a file name.
 */
static void qemu_spec(int fd, char *buf, size_t len)
{
	snprintf(buf, len,
		 "json:{\"driver\":\"qcow2\",\"backing\":null,"
		 "\"file\":{\"driver\":\"file\",\"filename\":\"/dev/fd/%d\"}}",
		 fd);
}

/* A new file in tmpdir that only the returned descriptor reaches (unlinked at once). */
static int private_file(const char *tmpdir, const char *what)
{
	char path[PATH_MAX];
	int fd;

	if (snprintf(path, sizeof(path), "%s/qcow2-%s.XXXXXX", tmpdir, what) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	fd = mkostemp(path, O_CLOEXEC);
	if (fd < 0)
		return -errno;
	unlink(path);
	return fd;
}

/* Copies [off, off + len) with pread/pwrite, leaving all-zero pieces as holes. */
static int copy_plain(int dst, int src, uint64_t off, uint64_t len, uint8_t *buf)
{
	while (len) {
		size_t n = (size_t)MIN(len, COPY_BUF_BYTES);
		ssize_t got = pread(src, buf, n, (off_t)off);
		int ret;

		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return -errno;
		if (got == 0)
			return 0; /* it shrank: the copy is what there was */
		if (!buf_is_zero(buf, (size_t)got)) {
			ret = pwrite_full(dst, buf, (size_t)got, off);
			if (ret)
				return ret;
		}
		off += (uint64_t)got;
		len -= (uint64_t)got;
	}
	return 0;
}

/* Copies [off, off + len): copy_file_range (which may share extents), else copy_plain. */
static int copy_range(int dst, int src, uint64_t off, uint64_t len, uint8_t *buf)
{
	while (len) {
		loff_t in = (loff_t)off, out = (loff_t)off;
		ssize_t n = copy_file_range(src, &in, dst, &out, (size_t)MIN(len, 1 * GiB), 0);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EXDEV || errno == EINVAL || errno == EOPNOTSUPP ||
			      errno == ENOSYS || errno == EBADF))
			return copy_plain(dst, src, off, len, buf);
		if (n < 0)
			return -errno;
		if (n == 0)
			return 0;
		off += (uint64_t)n;
		len -= (uint64_t)n;
	}
	return 0;
}

/*
 * Step 2: dst becomes a copy of the first size bytes of src. FICLONE shares the extents
 * (btrfs, XFS with reflink): instant, and later writes to src do not reach dst. Otherwise
 * the data segments (SEEK_DATA/SEEK_HOLE; a preallocated qcow2 is mostly holes) are copied.
 */
static int snapshot_copy(int dst, int src, uint64_t size)
{
	uint8_t *buf = NULL;
	uint64_t off = 0;
	int ret = 0;

	if (ioctl(dst, FICLONE, src) == 0)
		return 0;
	buf = malloc(COPY_BUF_BYTES);
	if (!buf)
		return -ENOMEM;
	while (!ret && off < size) {
		off_t data = lseek(src, (off_t)off, SEEK_DATA), hole;

		if (data < 0 && errno == ENXIO)
			break; /* only a hole is left */
		if (data < 0) {
			/* no SEEK_DATA here (a block device, an old filesystem): all of it */
			ret = copy_range(dst, src, off, size - off, buf);
			break;
		}
		if ((uint64_t)data >= size)
			break; /* data the file gained past size since it was measured: not ours */
		hole = lseek(src, data, SEEK_HOLE);
		if (hole < 0 || (uint64_t)hole > size)
			hole = (off_t)size;
		ret = copy_range(dst, src, (uint64_t)data, (uint64_t)(hole - data), buf);
		off = (uint64_t)hole;
	}
	free(buf);
	if (!ret && ftruncate(dst, (off_t)size) < 0)
		ret = -errno;
	return ret;
}

/* A member of qemu-img info's JSON that names another file, or NULL. */
static const char *external_file(json_t *info)
{
	json_t *data = json_object_get(json_object_get(info, "format-specific"), "data");

	if (json_object_get(info, "backing-filename") ||
	    json_object_get(info, "full-backing-filename"))
		return "a backing file";
	if (json_object_get(data, "data-file"))
		return "an external data file";
	return NULL;
}

/* `qemu-img info` of the snapshot: refuses a qcow2 that reads another file, and gives its
 * virtual size. */
static int qcow2_info(int snap, const char *name, uint64_t *vsize, char *err, size_t errlen)
{
	char out[4096], line[512], spec[256];
	char *info[] = {"qemu-img", "info", "--output=json", spec, NULL};
	json_t *j = NULL, *size;
	const char *what;
	int fd, ret;

	qemu_spec(snap, spec, sizeof(spec));
	fd = memfd_create("qemu-img-info", MFD_CLOEXEC);
	if (fd < 0)
		return set_err(err, errlen, -errno, "cannot run qemu-img: %s", strerror(errno));
	ret = run_capture(info, &snap, 1, fd, out, sizeof(out));
	if (ret < 0) {
		set_err(err, errlen, ret, "cannot run qemu-img: %s", strerror(-ret));
		goto out;
	}
	if (ret != 0) {
		first_line(out, name, line, sizeof(line));
		ret = set_err(err, errlen, -EBADMSG,
			      "corrupt or truncated qcow2 (qemu-img info: %s)", line);
		goto out;
	}
	if (lseek(fd, 0, SEEK_SET) == 0)
		j = json_loadfd(fd, 0, NULL);
	size = json_object_get(j, "virtual-size");
	if (!json_is_object(j) || !json_is_integer(size) || json_integer_value(size) < 0) {
		ret = set_err(err, errlen, -EBADMSG,
			      "cannot read qcow2 (qemu-img info: no JSON description)");
		goto out;
	}
	what = external_file(j);
	if (what) {
		ret = set_err(err, errlen, -EPERM,
			      "qcow2 with %s: refused (it would publish another file; "
			      "qemu-img convert it to a standalone image first)",
			      what);
		goto out;
	}
	*vsize = (uint64_t)json_integer_value(size);
out:
	json_decref(j);
	close(fd);
	return ret;
}

/* `qemu-img check` of the snapshot: leaked clusters are harmless to a reader. */
static int qcow2_check(int snap, const char *name, char *err, size_t errlen)
{
	char out[4096], line[512], spec[256];
	char *check[] = {"qemu-img", "check", spec, NULL};
	int ret;

	qemu_spec(snap, spec, sizeof(spec));
	ret = run_capture(check, &snap, 1, -1, out, sizeof(out));
	if (ret < 0)
		return set_err(err, errlen, ret, "cannot run qemu-img: %s", strerror(-ret));
	if (ret != 0 && ret != QEMU_CHECK_LEAKS) {
		first_line(out, name, line, sizeof(line));
		return set_err(err, errlen, -EBADMSG,
			       "corrupt or truncated qcow2 (qemu-img check: %s)", line);
	}
	return 0;
}

/* Step 5: converts the snapshot into raw, into a new private file, returned in *out. */
static int qcow2_convert(int snap, const char *name, uint64_t vsize, const char *tmpdir,
			 int *out, char *err, size_t errlen)
{
	char text[4096], line[512], spec[256], dst[32];
	/* -n: into our file, which is all zeros (a hole) so far: holes stay holes */
	char *convert[] = {"qemu-img", "convert", "-n", "--target-is-zero", "-O", "raw", spec, dst,
			   NULL};
	int raw, ret, keep[2];

	raw = private_file(tmpdir, "raw");
	if (raw < 0)
		return set_err(err, errlen, raw, "converted qcow2: %s", strerror(-raw));
	if (ftruncate(raw, (off_t)vsize) < 0) {
		ret = set_err(err, errlen, -errno, "converted qcow2: %s", strerror(errno));
		goto fail;
	}
	qemu_spec(snap, spec, sizeof(spec));
	snprintf(dst, sizeof(dst), "/dev/fd/%d", raw);
	keep[0] = snap;
	keep[1] = raw;
	ret = run_capture(convert, keep, 2, -1, text, sizeof(text));
	if (ret < 0) {
		set_err(err, errlen, ret, "cannot run qemu-img: %s", strerror(-ret));
		goto fail;
	}
	if (ret != 0) {
		first_line(text, name, line, sizeof(line));
		ret = set_err(err, errlen, -EBADMSG, "cannot read qcow2 (qemu-img convert: %s)",
			      line);
		goto fail;
	}
	*out = raw;
	return 0;
fail:
	close(raw);
	return ret;
}

/* Steps 2 to 5 for the qcow2 open as fd (name: its path, for messages), size bytes long. */
static int open_qcow2(int fd, const char *name, uint64_t size, const char *tmpdir,
		      struct image_source *src, char *err, size_t errlen)
{
	uint64_t vsize = 0;
	struct stat st;
	int snap, raw = -1, ret;

	snap = private_file(tmpdir, "copy");
	if (snap < 0)
		return set_err(err, errlen, snap, "private copy of the qcow2: %s", strerror(-snap));
	ret = snapshot_copy(snap, fd, size);
	if (ret) {
		set_err(err, errlen, ret, "private copy of the qcow2: %s", strerror(-ret));
		goto out;
	}
	ret = qcow2_info(snap, name, &vsize, err, errlen);
	if (!ret)
		ret = qcow2_check(snap, name, err, errlen);
	if (!ret)
		ret = qcow2_convert(snap, name, vsize, tmpdir, &raw, err, errlen);
	if (ret)
		goto out;
	if (fstat(raw, &st) < 0) {
		ret = set_err(err, errlen, -errno, "converted qcow2: %s", strerror(errno));
		close(raw);
		goto out;
	}
	src->fd = raw;
	src->size = (uint64_t)st.st_size;
	src->qcow2 = true;
out:
	close(snap);
	return ret;
}

/*
 * Opens path and checks its kind; the descriptor or -errno with a reason in err. O_NONBLOCK
 * keeps open() of a FIFO from waiting for a writer (where no signal would stop it: the
 * stop handlers restart system calls) and O_NOCTTY keeps a terminal from becoming ours; the
 * kind is then judged on the descriptor. A character device is refused before it is opened
 * (opening one can have effects: a tape rewinds). A file swapped in between stat and open
 * is judged again on the descriptor, which is all that is read.
 */
static int open_input(const char *path, struct stat *st, char *err, size_t errlen)
{
	struct stat first;
	int fd, ret, flags;

	if (stat(path, &first) < 0)
		return set_err(err, errlen, -errno, "cannot open: %s", strerror(errno));
	if (!S_ISREG(first.st_mode) && !S_ISBLK(first.st_mode))
		return set_err(err, errlen, S_ISDIR(first.st_mode) ? -EISDIR : -EINVAL,
			       "not a regular file or block device");
	fd = open(path, O_RDONLY | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, st) < 0) {
		ret = set_err(err, errlen, -errno, "cannot open: %s", strerror(errno));
		if (fd >= 0)
			close(fd);
		return ret;
	}
	if (!S_ISREG(st->st_mode) && !S_ISBLK(st->st_mode)) {
		close(fd);
		return set_err(err, errlen, S_ISDIR(st->st_mode) ? -EISDIR : -EINVAL,
			       "not a regular file or block device");
	}
	/* reads of a regular file or block device ignore O_NONBLOCK, but say what we mean */
	flags = fcntl(fd, F_GETFL);
	if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0) {
		ret = set_err(err, errlen, -errno, "cannot open: %s", strerror(errno));
		close(fd);
		return ret;
	}
	return fd;
}

int source_check(const char *path, char *err, size_t errlen)
{
	struct stat st;
	int fd;

	if (errlen)
		err[0] = '\0';
	fd = open_input(path, &st, err, errlen);
	if (fd < 0)
		return fd;
	close(fd);
	return 0;
}

int source_open(const char *path, const char *tmpdir, struct image_source *src, char *err,
		size_t errlen)
{
	unsigned char magic[sizeof(qcow2_magic)];
	struct stat st;
	off_t end;
	int fd, ret;

	memset(src, 0, sizeof(*src));
	src->fd = -1;
	if (errlen)
		err[0] = '\0';
	fd = open_input(path, &st, err, errlen);
	if (fd < 0)
		return fd;
	end = lseek(fd, 0, SEEK_END); /* also right for block devices, unlike st_size */
	if (end < 0 || lseek(fd, 0, SEEK_SET) < 0) {
		ret = set_err(err, errlen, -errno, "cannot read: %s", strerror(errno));
		goto fail;
	}
	/* Step 1: the kind is read from the descriptor that is then read, never re-opened. */
	if (pread(fd, magic, sizeof(magic), 0) == (ssize_t)sizeof(magic) &&
	    !memcmp(magic, qcow2_magic, sizeof(magic))) {
		ret = open_qcow2(fd, path, (uint64_t)end, tmpdir, src, err, errlen);
		close(fd); /* the snapshot, then the converted file, replaced it */
		return ret;
	}
	src->fd = fd;
	src->size = (uint64_t)end;
	return 0;
fail:
	close(fd);
	return ret;
}

int source_read(struct image_source *src, void *buf, size_t len)
{
	char *p = buf;

	while (len) {
		ssize_t n = read(src->fd, p, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -ENODATA; /* not -EIO: that is what a failing device returns */
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

void source_close(struct image_source *src)
{
	if (src->fd >= 0)
		close(src->fd);
	src->fd = -1;
}
