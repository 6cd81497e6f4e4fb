/*
 * fetchsrv.c - see fetchsrv.h and target/fetch_proto.h.
 *
 * A FETCH is one fetcher_fetch() with the client's whole deadline: one wait joins the
 * single-flight fill once, so the fetcher's counters (coalesced, timeouts) and its retry
 * backoff see one request, not one per slice. Shutdown stays prompt because rackdiskd
 * calls fetcher_stop() before fetchsrv_stop(): every waiter then returns -ESHUTDOWN at
 * once and the connection threads can be joined.
 */
#include "appliance/fetchsrv.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "cache/chunkstore.h"
#include "cluster/fetcher.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/util.h"
#include "images/manifest.h"
#include "target/fetch_proto.h"

#define STOP_WAIT_MS 5000

struct fetchsrv {
	struct fetcher *f;
	struct chunkstore *cs;
	char path[108];
	int lfd, wake_fd;
	pthread_t acceptor;
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int conns[FETCHSRV_MAX_CONNS]; /* -1 = free slot */
	unsigned nconns;
	atomic_bool stopping;
	struct {
		atomic_uint_fast64_t connections, requests, fetch_ok, fetch_err, prefetches,
			touches, bad_requests;
	} st;
};

struct conn_arg {
	struct fetchsrv *s;
	int slot;
};

static int parse_hash(const char *tok, struct chunk_hash *h)
{
	return tok && strlen(tok) == HASH_HEX_LEN ? hash_from_hex(tok, HASH_HEX_LEN, h) : -EINVAL;
}

static int parse_u64(const char *tok, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long v;

	if (!tok || *tok < '0' || *tok > '9')
		return -EINVAL;
	errno = 0;
	v = strtoull(tok, &end, 10);
	if (errno || *end || v > max)
		return -EINVAL;
	*out = v;
	return 0;
}

static int do_fetch(struct fetchsrv *s, const struct chunk_hash *h, uint32_t len,
		    uint64_t timeout_ms)
{
	if (!s->f)
		return -ENOTCONN;
	if (atomic_load(&s->stopping))
		return -ESHUTDOWN;
	return fetcher_fetch(s->f, h, len, now_ns() + timeout_ms * 1000000ULL);
}

int fetchsrv_handle_line(struct fetchsrv *s, char *line, char *reply, size_t replylen)
{
	char *save = NULL, *cmd = strtok_r(line, " ", &save);
	struct chunk_hash h;
	uint64_t len, tmo;
	int ret;

	atomic_fetch_add(&s->st.requests, 1);
	if (cmd && !strcmp(cmd, "FETCH")) {
		if (parse_hash(strtok_r(NULL, " ", &save), &h) ||
		    parse_u64(strtok_r(NULL, " ", &save), CHUNK_SIZE_MAX, &len) || !len ||
		    parse_u64(strtok_r(NULL, " ", &save), FETCHSRV_MAX_TIMEOUT_MS, &tmo) ||
		    strtok_r(NULL, " ", &save))
			goto bad;
		ret = do_fetch(s, &h, (uint32_t)len, tmo);
		if (ret) {
			atomic_fetch_add(&s->st.fetch_err, 1);
			snprintf(reply, replylen, "ERR %d %s\n", -ret, strerror(-ret));
		} else {
			atomic_fetch_add(&s->st.fetch_ok, 1);
			snprintf(reply, replylen, "OK\n");
		}
		return 0;
	}
	if (cmd && !strcmp(cmd, "PREFETCH")) {
		if (parse_hash(strtok_r(NULL, " ", &save), &h) ||
		    parse_u64(strtok_r(NULL, " ", &save), CHUNK_SIZE_MAX, &len) || !len ||
		    strtok_r(NULL, " ", &save))
			goto bad;
		atomic_fetch_add(&s->st.prefetches, 1);
		if (s->f)
			fetcher_prefetch(s->f, &h, (uint32_t)len);
		snprintf(reply, replylen, "OK\n");
		return 0;
	}
	if (cmd && !strcmp(cmd, "TOUCH")) {
		struct chunk_hash hs[FETCH_PROTO_TOUCH_MAX];
		unsigned n = 0;
		char *tok;

		while ((tok = strtok_r(NULL, " ", &save))) {
			if (n == FETCH_PROTO_TOUCH_MAX || parse_hash(tok, &hs[n]))
				goto bad;
			n++;
		}
		if (!n)
			goto bad;
		for (unsigned i = 0; i < n && s->cs; i++)
			chunkstore_touch(s->cs, &hs[i]);
		atomic_fetch_add(&s->st.touches, n);
		snprintf(reply, replylen, "OK\n");
		return 0;
	}
bad:
	atomic_fetch_add(&s->st.bad_requests, 1);
	snprintf(reply, replylen, "ERR %d malformed request\n", EPROTO);
	return -EPROTO;
}

static int write_all(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = send(fd, p, n, MSG_NOSIGNAL);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return -errno;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

/* Serves one connection: lines in, one reply each, in order. */
static void serve(struct fetchsrv *s, int fd)
{
	char buf[FETCH_PROTO_LINE_MAX + 1], reply[256];
	size_t have = 0;

	while (!atomic_load(&s->stopping)) {
		char *nl = memchr(buf, '\n', have);

		if (!nl) {
			ssize_t r;

			if (have == FETCH_PROTO_LINE_MAX) {
				log_warn("fetch socket: request line too long; closing");
				atomic_fetch_add(&s->st.bad_requests, 1);
				return;
			}
			r = recv(fd, buf + have, FETCH_PROTO_LINE_MAX - have, 0);
			if (r < 0 && errno == EINTR)
				continue;
			if (r <= 0)
				return;
			have += (size_t)r;
			continue;
		}
		*nl = '\0';
		size_t used = (size_t)(nl - buf) + 1;
		int bad = fetchsrv_handle_line(s, buf, reply, sizeof(reply));

		if (write_all(fd, reply, strlen(reply)) || bad)
			return;
		memmove(buf, buf + used, have - used);
		have -= used;
	}
}

static void *conn_main(void *p)
{
	struct conn_arg *ca = p;
	struct fetchsrv *s = ca->s;
	int slot = ca->slot, fd;

	free(ca);
	pthread_mutex_lock(&s->lock);
	fd = s->conns[slot];
	pthread_mutex_unlock(&s->lock);
	serve(s, fd);
	pthread_mutex_lock(&s->lock);
	close(fd);
	s->conns[slot] = -1;
	s->nconns--;
	pthread_cond_broadcast(&s->cond);
	pthread_mutex_unlock(&s->lock);
	return NULL;
}

static void start_conn(struct fetchsrv *s, int fd)
{
	struct conn_arg *ca = malloc(sizeof(*ca));
	pthread_attr_t attr;
	pthread_t th;
	int slot = -1;

	pthread_mutex_lock(&s->lock);
	for (int i = 0; i < FETCHSRV_MAX_CONNS && slot < 0; i++)
		if (s->conns[i] < 0)
			slot = i;
	if (slot >= 0 && ca) {
		s->conns[slot] = fd;
		s->nconns++;
	}
	pthread_mutex_unlock(&s->lock);
	if (slot < 0 || !ca) {
		log_warn("fetch socket: too many connections; refusing one");
		free(ca);
		close(fd);
		return;
	}
	ca->s = s;
	ca->slot = slot;
	atomic_fetch_add(&s->st.connections, 1);
	pthread_attr_init(&attr);
	pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
	pthread_attr_setstacksize(&attr, 256 * 1024);
	if (pthread_create(&th, &attr, conn_main, ca)) {
		pthread_mutex_lock(&s->lock);
		s->conns[slot] = -1;
		s->nconns--;
		pthread_mutex_unlock(&s->lock);
		free(ca);
		close(fd);
	}
	pthread_attr_destroy(&attr);
}

static void *accept_main(void *p)
{
	struct fetchsrv *s = p;

	while (!atomic_load(&s->stopping)) {
		struct pollfd pf[2] = {{s->lfd, POLLIN, 0}, {s->wake_fd, POLLIN, 0}};
		int fd;

		if (poll(pf, 2, -1) < 0) {
			if (errno == EINTR)
				continue;
			log_error("fetch socket: poll: %s", strerror(errno));
			break;
		}
		if (pf[1].revents)
			break;
		fd = accept4(s->lfd, NULL, NULL, SOCK_CLOEXEC);
		if (fd < 0) {
			if (errno != EINTR && errno != EAGAIN && errno != ECONNABORTED)
				log_warn("fetch socket: accept: %s", strerror(errno));
			continue;
		}
		start_conn(s, fd);
	}
	return NULL;
}

int fetchsrv_start(const char *path, struct fetcher *f, struct chunkstore *cs,
		   struct fetchsrv **out)
{
	struct sockaddr_un addr = {.sun_family = AF_UNIX};
	struct fetchsrv *s;
	int ret;

	if (strlen(path) >= sizeof(addr.sun_path))
		return -ENAMETOOLONG;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->f = f;
	s->cs = cs;
	s->wake_fd = -1;
	snprintf(s->path, sizeof(s->path), "%s", path);
	for (int i = 0; i < FETCHSRV_MAX_CONNS; i++)
		s->conns[i] = -1;
	pthread_mutex_init(&s->lock, NULL);
	pthread_cond_init(&s->cond, NULL);
	memcpy(addr.sun_path, path, strlen(path) + 1);
	s->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	s->wake_fd = eventfd(0, EFD_CLOEXEC);
	if (s->lfd < 0 || s->wake_fd < 0) {
		ret = -errno;
		goto fail;
	}
	unlink(path); /* a socket file left by a previous run */
	if (bind(s->lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 ||
	    chmod(path, 0600) < 0 || listen(s->lfd, 64) < 0) {
		ret = -errno;
		goto fail;
	}
	ret = -pthread_create(&s->acceptor, NULL, accept_main, s);
	if (ret)
		goto fail;
	*out = s;
	return 0;
fail:
	if (s->lfd >= 0)
		close(s->lfd);
	if (s->wake_fd >= 0)
		close(s->wake_fd);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
	free(s);
	return ret;
}

void fetchsrv_stop(struct fetchsrv *s)
{
	uint64_t one = 1, deadline = now_ns() + STOP_WAIT_MS * 1000000ULL;

	if (!s)
		return;
	atomic_store(&s->stopping, true);
	if (write(s->wake_fd, &one, sizeof(one)) < 0)
		log_warn("fetch socket: wake: %s", strerror(errno));
	pthread_join(s->acceptor, NULL);
	close(s->lfd);
	unlink(s->path);
	pthread_mutex_lock(&s->lock);
	for (int i = 0; i < FETCHSRV_MAX_CONNS; i++)
		if (s->conns[i] >= 0)
			shutdown(s->conns[i], SHUT_RDWR);
	while (s->nconns && now_ns() < deadline) {
		pthread_mutex_unlock(&s->lock);
		usleep(10000);
		pthread_mutex_lock(&s->lock);
	}
	unsigned left = s->nconns;
	pthread_mutex_unlock(&s->lock);
	close(s->wake_fd);
	if (left) {
		/* A thread still inside the fetcher would touch freed memory: leak rather
		 * than free under it (the process is exiting). */
		log_warn("fetch socket: %u connection(s) did not finish", left);
		return;
	}
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
	free(s);
}

void fetchsrv_get_stats(struct fetchsrv *s, struct fetchsrv_stats *st)
{
	st->connections = atomic_load(&s->st.connections);
	st->requests = atomic_load(&s->st.requests);
	st->fetch_ok = atomic_load(&s->st.fetch_ok);
	st->fetch_err = atomic_load(&s->st.fetch_err);
	st->prefetches = atomic_load(&s->st.prefetches);
	st->touches = atomic_load(&s->st.touches);
	st->bad_requests = atomic_load(&s->st.bad_requests);
}
