/*
 * publish_fixture.h - shared by the publish unit tests that inject faults with --wrap: a
 * temporary directory holding an input image (in.raw) and the path of a repository
 * beside it, the name of a descriptor's file (how a wrapper picks the file it faults),
 * and a bounded wait for a child that may hang. Header-only.
 */
#ifndef RACKDISK_TESTS_PUBLISH_FIXTURE_H
#define RACKDISK_TESTS_PUBLISH_FIXTURE_H

#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The path of descriptor fd ("" when it has none). */
static inline void fd_name(int fd, char *buf, size_t len)
{
	char link[64];
	ssize_t n;

	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, buf, len - 1);
	buf[n < 0 ? 0 : n] = '\0';
}

/*
 * Makes a directory from the mkdtemp template in dir (rewritten in place) holding in.raw,
 * size bytes of a pattern with no two 4 KiB blocks alike, and sets src to that file and
 * repo to <dir>/repo (not created). 0, or -1 with errno set.
 */
static inline int pubfx_input(char *dir, char *src, size_t srclen, char *repo, size_t repolen,
			      size_t size)
{
	uint8_t *buf = malloc(size);
	int fd, ok;

	if (!buf || !mkdtemp(dir)) {
		free(buf);
		return -1;
	}
	snprintf(src, srclen, "%s/in.raw", dir);
	snprintf(repo, repolen, "%s/repo", dir);
	for (size_t i = 0; i < size; i++)
		buf[i] = (uint8_t)(i * 7 + i / 4096);
	fd = open(src, O_WRONLY | O_CREAT | O_EXCL, 0644);
	ok = fd >= 0 && write(fd, buf, size) == (ssize_t)size;
	if (fd >= 0 && close(fd) < 0)
		ok = 0;
	free(buf);
	return ok ? 0 : -1;
}

/* Waits up to ms for child pid: its wait status, or -1 after killing it (it hung). */
static inline int pubfx_wait_child(pid_t pid, unsigned ms)
{
	const struct timespec ms10 = {0, 10 * 1000 * 1000};
	int status;

	for (unsigned i = 0; i < ms / 10; i++) {
		if (waitpid(pid, &status, WNOHANG) == pid)
			return status;
		nanosleep(&ms10, NULL);
	}
	if (waitpid(pid, &status, WNOHANG) == pid)
		return status;
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	return -1;
}

#endif
