/*
 * cluster_fixture.h - shared by the cluster unit tests: a real redis-server on a free
 * loopback port in a temporary directory (fork/exec; it dies with the test process via
 * PR_SET_PDEATHSIG and is stopped at exit even when a test fails), temporary chunk
 * stores, and random chunks. Header-only: each test is one translation unit.
 */
#ifndef RACKDISK_TESTS_CLUSTER_FIXTURE_H
#define RACKDISK_TESTS_CLUSTER_FIXTURE_H

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cache/chunkstore.h"
#include "common/hash.h"
#include "common/util.h"

struct fx_redis {
	pid_t pid;
	int port;
	char dir[64];
	char password[64];
	bool ipv6;                  /* listen on ::1 too */
};

static pid_t fx_children[16];

static inline void fx_kill_all(void)
{
	for (size_t i = 0; i < ARRAY_SIZE(fx_children); i++)
		if (fx_children[i] > 0) {
			kill(fx_children[i], SIGKILL);
			waitpid(fx_children[i], NULL, 0);
			fx_children[i] = 0;
		}
}

static inline void fx_track(pid_t pid, bool add)
{
	static bool registered;

	if (!registered) {
		atexit(fx_kill_all);
		registered = true;
	}
	for (size_t i = 0; i < ARRAY_SIZE(fx_children); i++) {
		if (add && fx_children[i] == 0) {
			fx_children[i] = pid;
			return;
		}
		if (!add && fx_children[i] == pid) {
			fx_children[i] = 0;
			return;
		}
	}
}

static inline int fx_free_port(void)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t l = sizeof(a);
	int s = socket(AF_INET, SOCK_STREAM, 0), port = -1;

	if (s >= 0 && !bind(s, (struct sockaddr *)&a, sizeof(a)) &&
	    !getsockname(s, (struct sockaddr *)&a, &l))
		port = ntohs(a.sin_port);
	if (s >= 0)
		close(s);
	return port;
}

static inline bool fx_port_open(int port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int s = socket(AF_INET, SOCK_STREAM, 0);
	bool ok = s >= 0 && connect(s, (struct sockaddr *)&a, sizeof(a)) == 0;

	if (s >= 0)
		close(s);
	return ok;
}

static inline void fx_sleep_ms(unsigned ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

/* Starts redis-server (on r->port if set, else a free port). 0 or -1. */
static inline int fx_redis_start(struct fx_redis *r)
{
	char port[16];
	int i;

	if (!r->dir[0]) {
		snprintf(r->dir, sizeof(r->dir), "/tmp/rd-redis-XXXXXX");
		if (!mkdtemp(r->dir))
			return -1;
	}
	if (!r->port)
		r->port = fx_free_port();
	snprintf(port, sizeof(port), "%d", r->port);
	r->pid = fork();
	if (r->pid < 0)
		return -1;
	if (r->pid == 0) {
		const char *args[20] = {"redis-server", "--port", port, "--dir", r->dir,
					"--save", "", "--appendonly", "no", "--daemonize", "no",
					"--loglevel", "warning", "--bind", "127.0.0.1"};
		int n = 15;

		if (r->ipv6)
			args[n++] = "::1"; /* --bind takes several addresses */
		if (r->password[0]) {
			args[n++] = "--requirepass";
			args[n++] = r->password;
		}
		args[n] = NULL;
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (!freopen("/dev/null", "w", stdout))
			_exit(127);
		execvp("redis-server", (char **)args);
		_exit(127);
	}
	fx_track(r->pid, true);
	for (i = 0; i < 200; i++) { /* 10 s at most */
		if (fx_port_open(r->port))
			return 0;
		if (waitpid(r->pid, NULL, WNOHANG) == r->pid) {
			fx_track(r->pid, false);
			r->pid = 0;
			return -1;
		}
		fx_sleep_ms(50);
	}
	return -1;
}

static inline void fx_redis_stop(struct fx_redis *r)
{
	int i;

	if (r->pid <= 0)
		return;
	kill(r->pid, SIGTERM);
	for (i = 0; i < 100 && waitpid(r->pid, NULL, WNOHANG) != r->pid; i++)
		fx_sleep_ms(50);
	if (i == 100) {
		kill(r->pid, SIGKILL);
		waitpid(r->pid, NULL, 0);
	}
	fx_track(r->pid, false);
	r->pid = 0;
}

static inline void fx_rm_rf(const char *dir)
{
	char cmd[256];

	if (dir[0] && strncmp(dir, "/tmp/rd-", 8) == 0) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", dir);
		if (system(cmd) != 0)
			fprintf(stderr, "cannot remove %s\n", dir);
	}
}

static inline void fx_redis_url(const struct fx_redis *r, int db, char *buf, size_t len)
{
	if (r->password[0])
		snprintf(buf, len, "redis://:%s@127.0.0.1:%d/%d", r->password, r->port, db);
	else
		snprintf(buf, len, "redis://127.0.0.1:%d/%d", r->port, db);
}

/* A temporary owner-mode store of capacity bytes (0: unlimited); dir receives its path. */
static inline struct chunkstore *fx_store_open_cap(char dir[64],
						   struct chunkstore_hooks hooks,
						   uint64_t capacity)
{
	struct chunkstore_opts o = {.dir = dir, .hooks = hooks, .capacity = capacity};
	struct chunkstore *cs = NULL;

	snprintf(dir, 64, "/tmp/rd-store-XXXXXX");
	if (!mkdtemp(dir))
		return NULL;
	if (chunkstore_open(&o, &cs))
		return NULL;
	return cs;
}

static inline struct chunkstore *fx_store_open(char dir[64], struct chunkstore_hooks hooks)
{
	return fx_store_open_cap(dir, hooks, 0);
}

/* Deterministic pseudo-random chunk content for seed. */
static inline void fx_chunk(unsigned seed, void *buf, size_t len, struct chunk_hash *h)
{
	uint64_t x = 0x9e3779b97f4a7c15ULL * (seed + 1);
	uint8_t *p = buf;

	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)x;
	}
	hash_compute(buf, len, h);
}

static inline uint64_t fx_ms_since(uint64_t t0)
{
	return (now_ns() - t0) / 1000000ULL;
}

#endif
