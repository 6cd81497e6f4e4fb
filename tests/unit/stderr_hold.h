/*
 * stderr_hold.h - holds a thread at its next log line, for tests that need another thread
 * parked at a known point: stderr becomes a pipe filled to the brim, so the next line any
 * thread writes blocks in write(2) (and keeps stdio's lock on stderr) until the test
 * restores stderr and drains the pipe. No cmocka assertion may run while stderr is held:
 * cmocka reports there. Header-only, for the unit tests of any directory.
 */
#ifndef RACKDISK_TESTS_STDERR_HOLD_H
#define RACKDISK_TESTS_STDERR_HOLD_H

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

struct stderr_hold {
	int pfd[2];
	int saved; /* the real stderr */
};

/* 0: stderr is now a full pipe. -1: it is not (errno says why), stderr unchanged. */
static inline int stderr_hold(struct stderr_hold *h)
{
	static char sink[65536];
	int flags;

	if (pipe(h->pfd) < 0)
		return -1;
	flags = fcntl(h->pfd[1], F_GETFL);
	if (flags < 0 || fcntl(h->pfd[1], F_SETFL, flags | O_NONBLOCK) < 0)
		goto fail;
	while (write(h->pfd[1], sink, sizeof(sink)) > 0)
		;
	while (write(h->pfd[1], sink, 1) > 0)
		;
	if (fcntl(h->pfd[1], F_SETFL, flags) < 0)
		goto fail;
	h->saved = dup(STDERR_FILENO);
	if (h->saved < 0 || dup2(h->pfd[1], STDERR_FILENO) < 0)
		goto fail;
	return 0;
fail:
	close(h->pfd[0]);
	close(h->pfd[1]);
	return -1;
}

/* Whether a thread of this process is blocked in write(2): its /proc syscall line starts
 * with 1. */
static inline bool stderr_hold_writer_blocked(void)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *de;
	bool found = false;

	while (d && !found && (de = readdir(d))) {
		char path[300], line[32] = "";
		FILE *f;

		if (de->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "/proc/self/task/%s/syscall", de->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(line, sizeof(line), f))
			found = !strncmp(line, "1 ", 2);
		fclose(f);
	}
	if (d)
		closedir(d);
	return found;
}

/* Waits (at most max_ms) until a thread is blocked writing to the held stderr. */
static inline bool stderr_hold_wait_blocked(unsigned max_ms)
{
	for (unsigned waited = 0; waited <= max_ms; waited += 5) {
		if (stderr_hold_writer_blocked())
			return true;
		usleep(5000);
	}
	return false;
}

/* stderr is the real one again; the held writers go on as stderr_hold_drain() reads. */
static inline void stderr_hold_restore(struct stderr_hold *h)
{
	int flags = fcntl(h->pfd[0], F_GETFL);

	dup2(h->saved, STDERR_FILENO);
	close(h->saved);
	if (flags >= 0)
		fcntl(h->pfd[0], F_SETFL, flags | O_NONBLOCK);
}

/* Reads what the held writers wrote so far (never blocks). */
static inline void stderr_hold_drain(struct stderr_hold *h)
{
	static char sink[65536];

	while (read(h->pfd[0], sink, sizeof(sink)) > 0)
		;
}

static inline void stderr_hold_close(struct stderr_hold *h)
{
	stderr_hold_drain(h);
	close(h->pfd[0]);
	close(h->pfd[1]);
}

#endif
