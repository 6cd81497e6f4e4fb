/*
 * fetchsrv.c - see fetchsrv.h and target/fetch_proto.h.
 *
 * A FETCH is one fetcher_fetch() with the client's whole deadline: one wait joins the
 * single-flight fill once, so the fetcher's counters (coalesced, timeouts) and its retry
 * backoff see one request, not one per slice. Shutdown stays prompt because rackdiskd
 * calls fetcher_stop() before fetchsrv_stop(): every waiter then returns -ESHUTDOWN at
 * once and the connection threads can be joined. The client waits for a restarted
 * rackdiskd on ESHUTDOWN; after fetchsrv_end_fetches() (tgtd stops with us) the stop's
 * FETCH replies are EAGAIN instead, which ends the command (see fetchsrv.h).
 *
 * A FETCH that names its place (image id, chunk index) feeds the fetcher's sequential
 * readahead (fetcher_note_access), which also decides what is taken from peers ahead of
 * the reader. The manifests it needs are the local copies rackdiskd keeps next to this
 * socket (<state_dir>/images/<id>.json, appliance.h): each is loaded on the first FETCH
 * that names it (outside the table's lock: other hints go on meanwhile), checked against
 * its id, and kept in a table of FETCHSRV_IMAGES_MAX, the least recently used making room for a
 * new one. A manifest the fetcher borrows (fetcher_note_access) is handed back with
 * fetcher_forget_image() and freed when it has left the table and no hint is using it
 * (hint_image.refs). A copy that cannot be loaded takes no slot: it sits in a
 * negative cache (FAILED_MAX ids, most recent first to stay) and is tried again after
 * IMAGE_RETRY_NS. A hint that cannot be used (unknown image, index out of range, entry
 * not the requested hash) is counted and ignored; the FETCH itself is unaffected.
 * HIT carries the same place for a read the module served from the store; it feeds the
 * readahead in the same way and does nothing else.
 */
#include "appliance/fetchsrv.h"

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
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
/* Image ids whose manifest copy could not be loaded, remembered for IMAGE_RETRY_NS (as
 * many as the table holds: with fewer, ids in rotation pushed each other out at once). */
#define FAILED_MAX FETCHSRV_IMAGES_MAX
/* Warnings about copies that cannot be loaded: one per this, with a count of the rest. */
#define LOAD_WARN_NS (1000ull * 1000 * 1000)
/* A manifest copy that could not be loaded is tried again after this long. */
#define IMAGE_RETRY_NS (10ull * 1000 * 1000 * 1000)

_Static_assert(FETCHSRV_MAX_TIMEOUT_MS == FETCH_PROTO_TIMEOUT_MAX_MS, "one timeout limit");

/* The manifest of an image named by hints. refs: 1 while in the table, plus one per
 * hint using m; the last one hands m back from the fetcher and frees it. */
struct hint_image {
	struct chunk_hash id;
	struct manifest *m;
	unsigned refs;
	uint64_t used; /* img_clock at the last hint: the least recent is evicted */
};

/* An image whose manifest copy could not be loaded at at_ns. */
struct failed_image {
	struct chunk_hash id;
	uint64_t at_ns; /* 0: a free entry */
};

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
	atomic_bool ending; /* fetchsrv_end_fetches() was called */
	atomic_uint idle_ms;
	uint64_t refuse_logged_ns; /* protected by lock */
	uint64_t refused_unlogged; /* protected by lock */
	char images_dir[PATH_MAX];
	pthread_mutex_t img_lock;               /* protects the four below */
	struct hint_image *images[FETCHSRV_IMAGES_MAX];
	unsigned nimages;
	uint64_t img_clock;
	struct failed_image failed[FAILED_MAX];
	struct log_limit load_warn;
	struct {
		atomic_uint_fast64_t connections, requests, fetch_ok, fetch_err, prefetches,
			touches, bad_requests, hints, hints_ignored, checks, refused,
			idle_closed;
	} st;
};

struct conn_arg {
	struct fetchsrv *s;
	int slot;
};

/* "no readahead for image ..." for a copy that cannot be loaded; clients choose the ids,
 * so at most one line per LOAD_WARN_NS, with the count of those held back. */
static void load_warn(struct fetchsrv *s, const char *hex, const char *path, const char *why)
{
	unsigned long long held;

	if (log_limit_pass(&s->load_warn, LOAD_WARN_NS, &held))
		log_warn("fetch socket: no readahead for image %s: %s: %s (%llu similar held "
			 "back)", hex, path, why, held);
}

/* Loads and checks <images_dir>/<id>.json; NULL when it cannot be used. */
static struct manifest *load_image(struct fetchsrv *s, const struct chunk_hash *id)
{
	char hex[HASH_HEX_LEN + 1], path[PATH_MAX + 80], err[200] = "", *buf = NULL;
	struct manifest *m = NULL;
	size_t len;
	int ret;

	hash_to_hex(id, hex);
	snprintf(path, sizeof(path), "%s/%s.json", s->images_dir, hex);
	ret = read_file(path, MANIFEST_MAX_BYTES, &buf, &len);
	if (ret) {
		load_warn(s, hex, path, strerror(-ret));
		return NULL;
	}
	ret = manifest_parse(buf, len, &m, err, sizeof(err));
	free(buf);
	if (ret) {
		load_warn(s, hex, path, err);
		return NULL;
	}
	if (!hash_equal(&m->id, id)) {
		load_warn(s, hex, path, "another image");
		manifest_free(m);
		return NULL;
	}
	return m;
}

/* The table's entry for id, or NULL; under img_lock. */
static struct hint_image *image_find(struct fetchsrv *s, const struct chunk_hash *id)
{
	for (unsigned i = 0; i < s->nimages; i++)
		if (hash_equal(&s->images[i]->id, id))
			return s->images[i];
	return NULL;
}

/* Whether id's copy failed to load within IMAGE_RETRY_NS; under img_lock. */
static bool image_failed_recently(struct fetchsrv *s, const struct chunk_hash *id, uint64_t now)
{
	for (unsigned i = 0; i < FAILED_MAX; i++)
		if (s->failed[i].at_ns && hash_equal(&s->failed[i].id, id))
			return now - s->failed[i].at_ns < IMAGE_RETRY_NS;
	return false;
}

/* Remembers that id's copy failed to load, in its own entry or in place of the oldest;
 * under img_lock. */
static void image_note_failed(struct fetchsrv *s, const struct chunk_hash *id, uint64_t now)
{
	struct failed_image *slot = &s->failed[0];

	for (unsigned i = 0; i < FAILED_MAX; i++) {
		if (s->failed[i].at_ns && hash_equal(&s->failed[i].id, id)) {
			slot = &s->failed[i];
			break;
		}
		if (s->failed[i].at_ns < slot->at_ns)
			slot = &s->failed[i];
	}
	slot->id = *id;
	slot->at_ns = now;
}

/* Drops one reference; the last hands the manifest back from the fetcher and frees it. */
static void image_put(struct fetchsrv *s, struct hint_image *hi)
{
	bool last;

	pthread_mutex_lock(&s->img_lock);
	last = --hi->refs == 0;
	pthread_mutex_unlock(&s->img_lock);
	if (!last)
		return;
	if (s->f)
		fetcher_forget_image(s->f, hi->m);
	manifest_free(hi->m);
	free(hi);
}

/* Puts a freshly loaded image into the table, taking the least recently used entry out
 * when it is full; returns that entry (its table reference to drop), or NULL. Under
 * img_lock. */
static struct hint_image *image_insert(struct fetchsrv *s, struct hint_image *hi)
{
	struct hint_image *old = NULL;
	unsigned lru = 0;

	if (s->nimages == FETCHSRV_IMAGES_MAX) {
		for (unsigned i = 1; i < s->nimages; i++)
			if (s->images[i]->used < s->images[lru]->used)
				lru = i;
		old = s->images[lru];
		s->images[lru] = s->images[--s->nimages];
	}
	s->images[s->nimages++] = hi;
	return old;
}

/*
 * The manifest of image id for readahead, loaded on first use, with a reference for the
 * caller (image_put); NULL if unusable. The load runs outside img_lock, so hints for
 * other images do not wait for it; two threads may load the same new image at once, and
 * the second to finish uses the first one's copy.
 */
static struct hint_image *image_get(struct fetchsrv *s, const struct chunk_hash *id)
{
	struct hint_image *hi, *evicted = NULL;
	struct manifest *m;
	uint64_t now = now_ns();

	pthread_mutex_lock(&s->img_lock);
	hi = image_find(s, id);
	if (hi || image_failed_recently(s, id, now)) {
		if (hi) {
			hi->refs++;
			hi->used = ++s->img_clock;
		}
		pthread_mutex_unlock(&s->img_lock);
		return hi;
	}
	pthread_mutex_unlock(&s->img_lock);

	m = load_image(s, id);
	hi = m ? calloc(1, sizeof(*hi)) : NULL;
	if (m && !hi)
		log_warn("fetch socket: out of memory; no readahead for an image");
	pthread_mutex_lock(&s->img_lock);
	if (!hi) {
		image_note_failed(s, id, now);
		pthread_mutex_unlock(&s->img_lock);
		manifest_free(m);
		return NULL;
	}
	if (image_find(s, id)) {
		/* Another thread loaded it meanwhile: use that copy. */
		free(hi);
		hi = image_find(s, id);
	} else {
		hi->id = *id;
		hi->m = m;
		hi->refs = 1; /* the table's */
		m = NULL;
		evicted = image_insert(s, hi);
	}
	hi->refs++;
	hi->used = ++s->img_clock;
	pthread_mutex_unlock(&s->img_lock);
	manifest_free(m);
	if (evicted)
		image_put(s, evicted);
	return hi;
}

/* Passes a FETCH's or HIT's place to the readahead when it is that chunk's place. */
static void note_access(struct fetchsrv *s, const struct fetch_req *r)
{
	const struct manifest *m;
	struct hint_image *hi;

	if (!r->has_pos || !s->f)
		return;
	hi = image_get(s, &r->image);
	m = hi ? hi->m : NULL;
	if (!m || r->idx >= m->nchunks || manifest_chunk_is_zero(m, r->idx) ||
	    !hash_equal(&m->hashes[r->idx], &r->h)) {
		atomic_fetch_add(&s->st.hints_ignored, 1);
	} else {
		atomic_fetch_add(&s->st.hints, 1);
		/* The reference keeps m alive (and out of fetcher_forget_image) meanwhile. */
		fetcher_note_access(s->f, m, r->idx);
	}
	if (hi)
		image_put(s, hi);
}

static int do_fetch(struct fetchsrv *s, const struct fetch_req *r)
{
	int ret;

	if (!s->f)
		return -ENOTCONN;
	if (atomic_load(&s->ending))
		return -EAGAIN;
	if (atomic_load(&s->stopping))
		return -ESHUTDOWN;
	note_access(s, r);
	ret = fetcher_fetch(s->f, &r->h, r->len, now_ns() + r->timeout_ms * 1000000ULL);
	/* The fetcher stopped under this FETCH after fetchsrv_end_fetches(). */
	if (ret == -ESHUTDOWN && atomic_load(&s->ending))
		ret = -EAGAIN;
	return ret;
}

int fetchsrv_handle_line(struct fetchsrv *s, const char *line, size_t len, char *reply,
			 size_t replylen)
{
	struct fetch_req req, *r = &req;
	int ret;

	atomic_fetch_add(&s->st.requests, 1);
	if (fetch_proto_parse(line, len, r)) {
		atomic_fetch_add(&s->st.bad_requests, 1);
		snprintf(reply, replylen, "ERR %d malformed request\n", EPROTO);
		return -EPROTO;
	}
	switch (r->cmd) {
	case FETCH_CMD_FETCH:
		ret = do_fetch(s, r);
		if (ret) {
			atomic_fetch_add(&s->st.fetch_err, 1);
			snprintf(reply, replylen, "ERR %d %s\n", -ret, strerror(-ret));
		} else {
			atomic_fetch_add(&s->st.fetch_ok, 1);
			snprintf(reply, replylen, "OK\n");
		}
		break;
	case FETCH_CMD_PREFETCH:
		atomic_fetch_add(&s->st.prefetches, 1);
		if (s->f)
			fetcher_prefetch(s->f, &r->h, r->len);
		snprintf(reply, replylen, "OK\n");
		break;
	case FETCH_CMD_HIT:
		/* A hit needs no fill: only its place, for the readahead. */
		note_access(s, r);
		snprintf(reply, replylen, "OK\n");
		break;
	case FETCH_CMD_CHECK:
		/* The module found the file bad: drop it if so, so that its FETCH refills
		 * (a drop counts in the store's dropped_corrupt). */
		atomic_fetch_add(&s->st.checks, 1);
		if (s->cs)
			chunkstore_recheck(s->cs, &r->h);
		snprintf(reply, replylen, "OK\n");
		break;
	case FETCH_CMD_TOUCH:
		for (unsigned i = 0; i < r->ntouch && s->cs; i++)
			chunkstore_touch(s->cs, &r->touch[i]);
		atomic_fetch_add(&s->st.touches, r->ntouch);
		snprintf(reply, replylen, "OK\n");
		break;
	}
	return 0;
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

/*
 * Waits for bytes on fd for at most the idle timeout: 1 when some (or EOF, an error, or
 * fetchsrv_stop's shutdown()) can be read, 0 when the connection stayed idle.
 */
static int wait_request(struct fetchsrv *s, int fd)
{
	struct pollfd pf = {fd, POLLIN, 0};
	uint64_t deadline = now_ns() + atomic_load(&s->idle_ms) * 1000000ULL, now;
	int ret;

	while ((now = now_ns()) < deadline) {
		ret = poll(&pf, 1, (int)DIV_ROUND_UP(deadline - now, 1000000ULL));
		if (ret > 0 || (ret < 0 && errno != EINTR))
			return 1;
	}
	return 0;
}

/* Serves one connection: lines in, one reply each, in order. Returns when the client
 * closes it, after an error, or when no byte of a request came for the idle timeout. */
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
			/* No request is in progress here (each is answered before the next
			 * line is read), so closing loses nothing: the client reconnects. */
			if (!wait_request(s, fd)) {
				atomic_fetch_add(&s->st.idle_closed, 1);
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
		/* The line's length, not strlen(): a NUL inside it is malformed (fetch_proto.h),
		 * never the end of a shorter request. */
		size_t used = (size_t)(nl - buf) + 1;
		int bad = fetchsrv_handle_line(s, buf, used - 1, reply, sizeof(reply));

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

/*
 * Refuses a connection for lack of a slot. No reply line: one would precede any request
 * (the protocol answers requests), and the client's send on the closed socket fails
 * (EPIPE) before it could read it. The client treats the close like a restarting
 * server and retries within its deadline; idle connections free slots meanwhile.
 */
static void refuse_conn(struct fetchsrv *s, int fd)
{
	uint64_t now = now_ns(), n = 0;

	close(fd);
	atomic_fetch_add(&s->st.refused, 1);
	pthread_mutex_lock(&s->lock);
	s->refused_unlogged++;
	if (!s->refuse_logged_ns ||
	    now - s->refuse_logged_ns >= FETCHSRV_REFUSE_LOG_MS * 1000000ULL) {
		n = s->refused_unlogged;
		s->refused_unlogged = 0;
		s->refuse_logged_ns = now;
	}
	pthread_mutex_unlock(&s->lock);
	if (n)
		log_warn("fetch socket: all %d connections in use; refused %" PRIu64
			 " connection(s)", FETCHSRV_MAX_CONNS, n);
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
	if (!ca) {
		log_warn("fetch socket: out of memory; refusing a connection");
		close(fd);
		return;
	}
	if (slot < 0) {
		free(ca);
		refuse_conn(s, fd);
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

/* The socket is <state_dir>/rackdiskd.sock and the manifest copies are in
 * <state_dir>/images/ (appliance.h's layout), so the images sit next to the socket. */
static void images_dir_of(const char *sock_path, char *buf, size_t len)
{
	const char *slash = strrchr(sock_path, '/');
	int dlen = slash ? (int)(slash - sock_path) : 1;

	snprintf(buf, len, "%.*s/images", dlen, slash ? sock_path : ".");
}

/* Hands every kept manifest back from the fetcher's readahead and frees it (no hint is
 * in progress: the connections are done). */
static void forget_images(struct fetchsrv *s)
{
	while (s->nimages)
		image_put(s, s->images[--s->nimages]);
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
	atomic_init(&s->idle_ms, FETCHSRV_IDLE_MS);
	snprintf(s->path, sizeof(s->path), "%s", path);
	images_dir_of(path, s->images_dir, sizeof(s->images_dir));
	pthread_mutex_init(&s->img_lock, NULL);
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
	pthread_mutex_destroy(&s->img_lock);
	free(s);
	return ret;
}

void fetchsrv_end_fetches(struct fetchsrv *s)
{
	if (s)
		atomic_store(&s->ending, true);
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
	forget_images(s);
	pthread_mutex_destroy(&s->lock);
	pthread_cond_destroy(&s->cond);
	pthread_mutex_destroy(&s->img_lock);
	free(s);
}

void fetchsrv_set_idle_ms(struct fetchsrv *s, unsigned ms)
{
	atomic_store(&s->idle_ms, ms);
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
	st->hints = atomic_load(&s->st.hints);
	st->hints_ignored = atomic_load(&s->st.hints_ignored);
	st->checks = atomic_load(&s->st.checks);
	st->refused = atomic_load(&s->st.refused);
	st->idle_closed = atomic_load(&s->st.idle_closed);
}
