/*
 * source.c - see source.h. qemu-img is run with posix_spawnp, its output captured so the
 * first line of its complaint can become the one-line error the operator sees.
 *
 * A qcow2 file can name other files whose bytes become part of the image: a backing file,
 * an external data file. Publishing runs with the operator's rights, often root, so such an
 * image would copy any host file into a repository that a whole rack can read. qemu-img info
 * (which opens no backing file) is asked first, and an image naming either is refused.
 *
 * qemu-img reads a file name as "protocol:rest" when a ':' comes before any '/' ("file:x.qcow2"
 * opens x.qcow2, "backup-10:30.qcow2" names an unknown protocol "backup-10"), and takes a name
 * starting with '-' for an option. Every name it is given (qemu_name) therefore starts with
 * '/' or "./": the file qemu-img opens is the file that was checked.
 */
#include "images/source.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <sys/mman.h>
#include <unistd.h>

#include <jansson.h>

extern char **environ;

static const unsigned char qcow2_magic[4] = {'Q', 'F', 'I', 0xfb};

/* qemu-img check exit codes: 0 clean, 3 only leaked clusters (harmless to a reader). */
#define QEMU_CHECK_LEAKS 3

/*
 * Runs argv, collecting its stderr (first outlen-1 bytes) into out, and its stdout too
 * unless stdout_fd >= 0 receives it. Returns the exit status (0..255), or a negative errno
 * when it could not run.
 */
static int run_capture(char *const argv[], int stdout_fd, char *out, size_t outlen)
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
 * "qemu-img:", else the first non-empty one; without newline. */
static void first_line(const char *text, char *buf, size_t len)
{
	const char *p = strstr(text, "qemu-img:");
	size_t n;

	if (!p)
		p = strstr(text, "ERROR");
	if (!p)
		p = text + strspn(text, " \t\r\n");
	if (!strncmp(p, "qemu-img: ", 10))
		p += 10;
	n = strcspn(p, "\r\n");
	snprintf(buf, len, "%.*s", (int)n, p);
}

/* path as qemu-img must be given it to open that very file (see the top of this file). */
static int qemu_name(const char *path, char *buf, size_t len)
{
	int n = snprintf(buf, len, "%s%s", path[0] == '/' ? "" : "./", path);

	return n < 0 || (size_t)n >= len ? -ENAMETOOLONG : 0;
}

bool source_is_qcow2(const char *path)
{
	unsigned char magic[4];
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	bool ret;

	if (fd < 0)
		return false;
	ret = pread(fd, magic, sizeof(magic), 0) == (ssize_t)sizeof(magic) &&
	      !memcmp(magic, qcow2_magic, sizeof(magic));
	close(fd);
	return ret;
}

static int open_qcow2(const char *path, const char *tmpdir, struct image_source *src, char *err,
		      size_t errlen)
{
	char out[4096], line[512], tmp[PATH_MAX], qsrc[PATH_MAX + 2], qtmp[PATH_MAX + 2];
	char *convert[] = {"qemu-img", "convert", "-f", "qcow2", "-O", "raw", qsrc, qtmp, NULL};
	struct stat st;
	int ret, fd;

	if (snprintf(tmp, sizeof(tmp), "%s/qcow2-raw.XXXXXX", tmpdir) >= (int)sizeof(tmp) ||
	    qemu_name(path, qsrc, sizeof(qsrc))) {
		snprintf(err, errlen, "converted qcow2: %s", strerror(ENAMETOOLONG));
		return -ENAMETOOLONG;
	}
	/* A name of our own (publishers in containers share pids); qemu-img writes into it. */
	fd = mkostemp(tmp, O_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "converted qcow2: %s", strerror(-ret));
		return ret;
	}
	close(fd);
	qemu_name(tmp, qtmp, sizeof(qtmp)); /* fits: qtmp has room for tmp and "./" */
	ret = run_capture(convert, -1, out, sizeof(out));
	if (ret != 0) {
		unlink(tmp);
		first_line(out, line, sizeof(line));
		snprintf(err, errlen, "cannot read qcow2 (qemu-img convert: %s)", line);
		return ret < 0 ? ret : -EBADMSG;
	}
	fd = open(tmp, O_RDONLY | O_CLOEXEC);
	ret = fd < 0 ? -errno : 0;
	unlink(tmp); /* from here on the file lives only as long as fd */
	if (ret) {
		snprintf(err, errlen, "converted qcow2: %s", strerror(-ret));
		return ret;
	}
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		snprintf(err, errlen, "converted qcow2: %s", strerror(-ret));
		close(fd);
		return ret;
	}
	src->fd = fd;
	src->size = (uint64_t)st.st_size;
	src->qcow2 = true;
	return 0;
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

/* Refuses a qcow2 that reads another file (see the top of this file). */
static int check_self_contained(const char *path, char *err, size_t errlen)
{
	char out[4096], line[512], qpath[PATH_MAX + 2];
	char *info[] = {"qemu-img", "info", "--output=json", "-f", "qcow2", qpath, NULL};
	const char *what;
	json_t *j = NULL;
	int fd, ret;

	ret = qemu_name(path, qpath, sizeof(qpath));
	if (ret) {
		snprintf(err, errlen, "cannot open: %s", strerror(-ret));
		return ret;
	}
	fd = memfd_create("qemu-img-info", MFD_CLOEXEC);
	if (fd < 0) {
		ret = -errno;
		snprintf(err, errlen, "cannot run qemu-img: %s", strerror(-ret));
		return ret;
	}
	ret = run_capture(info, fd, out, sizeof(out));
	if (ret < 0) {
		snprintf(err, errlen, "cannot run qemu-img: %s", strerror(-ret));
		goto out;
	}
	if (ret != 0) {
		first_line(out, line, sizeof(line));
		snprintf(err, errlen, "corrupt or truncated qcow2 (qemu-img info: %s)", line);
		ret = -EBADMSG;
		goto out;
	}
	if (lseek(fd, 0, SEEK_SET) == 0)
		j = json_loadfd(fd, 0, NULL);
	if (!json_is_object(j)) {
		snprintf(err, errlen, "cannot read qcow2 (qemu-img info: no JSON description)");
		ret = -EBADMSG;
		goto out;
	}
	what = external_file(j);
	if (what) {
		snprintf(err, errlen,
			 "qcow2 with %s: refused (it would publish another file; "
			 "qemu-img convert it to a standalone image first)",
			 what);
		ret = -EPERM;
	}
out:
	json_decref(j);
	close(fd);
	return ret;
}

int source_check(const char *path, char *err, size_t errlen)
{
	char out[4096], line[512], qpath[PATH_MAX + 2];
	char *check[] = {"qemu-img", "check", "-f", "qcow2", qpath, NULL};
	struct stat st;
	int ret;

	if (errlen)
		err[0] = '\0';
	if (stat(path, &st) < 0) {
		ret = -errno;
		snprintf(err, errlen, "cannot open: %s", strerror(-ret));
		return ret;
	}
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		snprintf(err, errlen, "not a regular file or block device");
		return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
	}
	if (!source_is_qcow2(path))
		return 0;
	ret = qemu_name(path, qpath, sizeof(qpath));
	if (ret) {
		snprintf(err, errlen, "cannot open: %s", strerror(-ret));
		return ret;
	}
	ret = check_self_contained(path, err, errlen);
	if (ret)
		return ret;
	ret = run_capture(check, -1, out, sizeof(out));
	if (ret < 0) {
		snprintf(err, errlen, "cannot run qemu-img: %s", strerror(-ret));
		return ret;
	}
	if (ret != 0 && ret != QEMU_CHECK_LEAKS) {
		first_line(out, line, sizeof(line));
		snprintf(err, errlen, "corrupt or truncated qcow2 (qemu-img check: %s)", line);
		return -EBADMSG;
	}
	return 0;
}

int source_open(const char *path, const char *tmpdir, struct image_source *src, char *err,
		size_t errlen)
{
	struct stat st;
	off_t end;
	int fd, ret;

	memset(src, 0, sizeof(*src));
	src->fd = -1;
	if (errlen)
		err[0] = '\0';
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0) {
		ret = -errno;
		snprintf(err, errlen, "cannot open: %s", strerror(-ret));
		goto fail;
	}
	if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
		ret = S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
		snprintf(err, errlen, "not a regular file or block device");
		goto fail;
	}
	if (source_is_qcow2(path)) {
		close(fd);
		return open_qcow2(path, tmpdir, src, err, errlen);
	}
	end = lseek(fd, 0, SEEK_END); /* also right for block devices, unlike st_size */
	if (end < 0 || lseek(fd, 0, SEEK_SET) < 0) {
		ret = -errno;
		snprintf(err, errlen, "cannot read: %s", strerror(-ret));
		goto fail;
	}
	src->fd = fd;
	src->size = (uint64_t)end;
	return 0;
fail:
	if (fd >= 0)
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
