/*
 * peer_server.c - the HTTP peer chunk server on libmicrohttpd (see peer_server.h).
 *
 * Responses come from MHD_create_response_from_fd on a fresh descriptor of the chunk
 * file, which MHD sends with sendfile(2) and closes; the chunk stays pinned until MHD
 * reports the request finished (notify_completed), whatever the outcome.
 */
#include "cluster/peer_server.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <microhttpd.h>
#include <netdb.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/hash.h"
#include "common/log.h"
#include "common/util.h"

#define CHUNK_PATH_PREFIX "/v1/chunks/"

const int peer_status_code[PEER_ST_COUNT] = {200, 400, 401, 403, 404, 405, 500};

struct peer_server {
	struct MHD_Daemon *mhd;
	struct chunkstore *store;
	void (*not_held)(void *arg, const struct chunk_hash *h);
	void *not_held_arg;
	struct chunk_hash token_hash; /* SHA-256 of the token: compared in constant time */
	struct peer_server_stats st;  /* __atomic updates */
	struct log_limit mhd_log_limit;
};

/* One request's state, from its first callback to notify_completed. */
struct peer_req {
	struct chunk_ref *ref;
	uint64_t len;
	bool is_get;
	bool not_held;              /* answered 404 for h: run the not_held hook at the end */
	struct chunk_hash h;
};

#define ST_ADD(s, field, n) __atomic_fetch_add(&(s)->st.field, (n), __ATOMIC_RELAXED)

static int parse_listen(const char *listen, struct sockaddr_storage *ss, socklen_t *sl)
{
	char host[256];
	const char *colon, *port, *h = listen;
	size_t hl;
	struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE,
				 .ai_socktype = SOCK_STREAM};
	struct addrinfo *ai = NULL;

	if (!listen || !*listen)
		return -EINVAL;
	colon = strrchr(listen, ':');
	if (!colon)
		return -EINVAL;
	port = colon + 1;
	hl = colon - listen;
	if (*h == '[') {
		if (hl < 2 || listen[hl - 1] != ']')
			return -EINVAL;
		h++;
		hl -= 2;
	}
	if (hl >= sizeof(host))
		return -EINVAL;
	memcpy(host, h, hl);
	host[hl] = '\0';
	if (getaddrinfo(hl ? host : NULL, port, &hints, &ai) || !ai) {
		/* not numeric: resolve the name (e.g. "localhost") */
		hints.ai_flags = AI_NUMERICSERV | AI_PASSIVE;
		if (getaddrinfo(hl ? host : NULL, port, &hints, &ai) || !ai)
			return -EINVAL;
	}
	memcpy(ss, ai->ai_addr, ai->ai_addrlen);
	*sl = ai->ai_addrlen;
	freeaddrinfo(ai);
	return 0;
}

static enum MHD_Result respond_text(struct peer_server *s, struct MHD_Connection *c,
				    enum peer_status st, const char *msg)
{
	struct MHD_Response *r;
	enum MHD_Result ret;

	r = MHD_create_response_from_buffer(strlen(msg), (void *)msg, MHD_RESPMEM_PERSISTENT);
	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain");
	if (st == PEER_ST_401)
		MHD_add_response_header(r, MHD_HTTP_HEADER_WWW_AUTHENTICATE, "Bearer");
	if (st == PEER_ST_405)
		MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, "GET, HEAD");
	ST_ADD(s, responses[st], 1);
	ret = MHD_queue_response(c, peer_status_code[st], r);
	MHD_destroy_response(r);
	return ret;
}

/* 0 when the Authorization header carries the token, else PEER_ST_401 or PEER_ST_403. */
static int check_auth(struct peer_server *s, struct MHD_Connection *c)
{
	const char *a = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
						    MHD_HTTP_HEADER_AUTHORIZATION);
	struct chunk_hash got;
	size_t n;

	if (!a)
		return PEER_ST_401;
	if (strncasecmp(a, "Bearer ", 7) != 0)
		return PEER_ST_401;
	a += 7;
	/* whitespace around the token is not part of it (peer_token_load trims the
	 * token file's line the same way) */
	while (*a == ' ' || *a == '\t')
		a++;
	n = strlen(a);
	while (n > 0 && (a[n - 1] == ' ' || a[n - 1] == '\t'))
		n--;
	/* hashing first makes the comparison independent of the token's length too */
	hash_compute(a, n, &got);
	return CRYPTO_memcmp(got.b, s->token_hash.b, HASH_LEN) == 0 ? 0 : PEER_ST_403;
}

/* Exactly "/v1/chunks/" followed by 64 hex digits. */
static int parse_chunk_path(const char *url, struct chunk_hash *h)
{
	size_t plen = strlen(CHUNK_PATH_PREFIX);

	if (strncmp(url, CHUNK_PATH_PREFIX, plen) != 0)
		return -EINVAL;
	url += plen;
	if (strlen(url) != HASH_HEX_LEN)
		return -EINVAL;
	return hash_from_hex(url, HASH_HEX_LEN, h);
}

static enum MHD_Result serve_chunk(struct peer_server *s, struct MHD_Connection *c,
				   const struct chunk_hash *h, struct peer_req *rq)
{
	struct MHD_Response *r = NULL;
	struct chunk_ref *ref = NULL;
	char path[4096];
	struct stat sb;
	enum MHD_Result ret;
	int fd = -1, rc;

	rc = chunkstore_get(s->store, h, &ref);
	if (rc == -ENOENT) {
		rq->not_held = true;
		rq->h = *h;
		return respond_text(s, c, PEER_ST_404, "no such chunk here\n");
	}
	if (rc)
		return respond_text(s, c, PEER_ST_500, "chunk store error\n");
	/*
	 * A descriptor of our own, without the store's O_DIRECT, for sendfile; MHD closes
	 * it. The pin (ref) keeps the chunk from eviction until notify_completed.
	 */
	chunkstore_path(s->store, h, path, sizeof(path));
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &sb) || (uint64_t)sb.st_size != chunk_ref_len(ref)) {
		log_warn("peer server: chunk file %s unreadable or of the wrong size", path);
		ret = respond_text(s, c, PEER_ST_500, "chunk store error\n");
		goto out;
	}
	r = MHD_create_response_from_fd((uint64_t)sb.st_size, fd);
	if (!r) {
		ret = MHD_NO;
		goto out;
	}
	fd = -1; /* owned by the response now */
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "application/octet-stream");
	rq->ref = ref;
	rq->len = (uint64_t)sb.st_size;
	ref = NULL;
	ST_ADD(s, responses[PEER_ST_200], 1);
	ret = MHD_queue_response(c, MHD_HTTP_OK, r);
out:
	if (r)
		MHD_destroy_response(r);
	if (fd >= 0)
		close(fd);
	if (ref)
		chunkstore_put(s->store, ref);
	return ret;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
				  const char *method, const char *version,
				  const char *upload_data, size_t *upload_data_size, void **con_cls)
{
	struct peer_server *s = cls;
	struct peer_req *rq;
	struct chunk_hash h;
	int st;

	if (!*con_cls) {
		/*
		 * First call: headers only. Answering now would make MHD close the
		 * connection (the request is not fully read yet); answer on the next call
		 * to keep it alive.
		 */
		rq = calloc(1, sizeof(*rq));
		if (!rq)
			return MHD_NO;
		*con_cls = rq;
		rq->is_get = !strcmp(method, MHD_HTTP_METHOD_GET);
		if (rq->is_get || !strcmp(method, MHD_HTTP_METHOD_HEAD))
			return MHD_YES;
		/* refuse other methods before any body is read (MHD then closes) */
		ST_ADD(s, requests, 1);
		return respond_text(s, c, PEER_ST_405, "only GET and HEAD\n");
	}
	rq = *con_cls;
	if (*upload_data_size) {
		/* a body we do not want (GET/HEAD have none): drop it, answer at the end */
		*upload_data_size = 0;
		return MHD_YES;
	}
	ST_ADD(s, requests, 1);
	st = check_auth(s, c);
	if (st)
		return respond_text(s, c, st, st == PEER_ST_401 ? "token required\n" :
				    "wrong token\n");
	if (parse_chunk_path(url, &h))
		return respond_text(s, c, PEER_ST_400,
				    "expected /v1/chunks/<64 hex digits>\n");
	return serve_chunk(s, c, &h, rq);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
			 enum MHD_RequestTerminationCode toe)
{
	struct peer_server *s = cls;
	struct peer_req *rq = *con_cls;

	if (!rq)
		return;
	if (rq->ref) {
		if (toe == MHD_REQUEST_TERMINATED_COMPLETED_OK) {
			if (rq->is_get)
				ST_ADD(s, bytes, rq->len);
		} else {
			ST_ADD(s, aborted, 1);
		}
		chunkstore_put(s->store, rq->ref);
	}
	/* after the 404 went out: the repair's Redis round trip does not delay it */
	if (rq->not_held && s->not_held)
		s->not_held(s->not_held_arg, &rq->h);
	free(rq);
	*con_cls = NULL;
}

/* MHD's own messages: log_server_message() (one warning per 5 s, the rest debug). */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	struct peer_server *s = cls;

	log_server_message(&s->mhd_log_limit, "peer server", fmt, ap);
}

int peer_server_start(const struct peer_server_opts *o, struct peer_server **out)
{
	struct peer_server *s;
	struct sockaddr_storage ss;
	socklen_t sl;
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL | MHD_USE_ERROR_LOG;
	unsigned per_ip = o->max_per_ip ? o->max_per_ip : 64;
	unsigned total = MAX(o->max_connections ? o->max_connections : 256, per_ip);

	if (!o->token || !*o->token || !o->store || parse_listen(o->listen, &ss, &sl))
		return -EINVAL;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	s->store = o->store;
	s->not_held = o->not_held;
	s->not_held_arg = o->not_held_arg;
	hash_compute(o->token, strlen(o->token), &s->token_hash);
	if (ss.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	s->mhd = MHD_start_daemon(
		flags, 0, NULL, NULL, on_request, s,
		MHD_OPTION_EXTERNAL_LOGGER, mhd_log, s,
		MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&ss,
		MHD_OPTION_THREAD_POOL_SIZE, (unsigned)(o->threads ? o->threads : 4),
		MHD_OPTION_CONNECTION_LIMIT, total, MHD_OPTION_PER_IP_CONNECTION_LIMIT, per_ip,
		MHD_OPTION_CONNECTION_TIMEOUT,
		(unsigned)(o->idle_timeout_s ? o->idle_timeout_s : 60),
		MHD_OPTION_NOTIFY_COMPLETED, on_completed, s,
		MHD_OPTION_END);
	if (!s->mhd) {
		log_error("peer server: cannot listen on %s", o->listen);
		free(s);
		return -EADDRNOTAVAIL;
	}
	log_info("peer server: listening on %s (port %d)", o->listen, peer_server_port(s));
	*out = s;
	return 0;
}

int peer_server_port(struct peer_server *s)
{
	const union MHD_DaemonInfo *i = MHD_get_daemon_info(s->mhd, MHD_DAEMON_INFO_BIND_PORT);

	return i ? i->port : -1;
}

void peer_server_stop(struct peer_server *s)
{
	if (!s)
		return;
	MHD_stop_daemon(s->mhd);
	free(s);
}

void peer_server_get_stats(struct peer_server *s, struct peer_server_stats *st)
{
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	*st = s->st;
}

int peer_token_load(const char *path, char *buf, size_t len)
{
	char *data = NULL, *p, *end;
	size_t n;
	int rc;

	rc = read_file(path, 4096, &data, &n);
	if (rc)
		return rc;
	p = data;
	while (*p && isspace((unsigned char)*p))
		p++;
	end = p + strcspn(p, "\r\n");
	while (end > p && isspace((unsigned char)end[-1]))
		end--;
	n = end - p;
	rc = -EINVAL;
	if (n == 0 || n >= len)
		goto out;
	memcpy(buf, p, n);
	buf[n] = '\0';
	rc = 0;
out:
	free(data);
	return rc;
}
