/*
 * test_peer_server.c - the peer chunk server and the peer client over loopback, with
 * real chunk stores: authentication (no data without the token), malformed paths and
 * hashes (400), absent chunks (404), exact bytes on success, HEAD, counters, pins
 * released; the client's hash check against a lying server, its deadline against a
 * server that never answers, keep-alive reuse.
 */
#include <ctype.h>
#include <microhttpd.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "cluster/peer_client.h"
#include "cluster/peer_server.h"
#include "cluster_fixture.h"
#include "common/log.h"

#define CHUNK (256 * 1024)
#define TOKEN "s3cret-token"
#define MS 1000000ULL

/* peer_client_fetch's receive buffer (the fetch worker's, in rackdiskd). */
static uint8_t scratch[CHUNK];

struct env {
	char dir_a[64], dir_b[64];
	struct chunkstore *a, *b;      /* a serves, b receives */
	struct peer_server *srv;
	struct peer_client *cli;
	char addr[64];
	struct chunk_hash h[4];        /* h[0..2] in a; h[3] nowhere */
	uint8_t *data[4];
};

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));
	struct chunkstore_hooks none = {0};
	struct peer_server_opts so = {.listen = "127.0.0.1:0", .token = TOKEN, .threads = 2};
	struct peer_client_opts co = {.token = TOKEN};
	int i;

	if (!e)
		return -1;
	e->a = fx_store_open(e->dir_a, none);
	e->b = fx_store_open(e->dir_b, none);
	if (!e->a || !e->b)
		return -1;
	for (i = 0; i < 4; i++) {
		e->data[i] = malloc(CHUNK);
		fx_chunk(100 + i, e->data[i], CHUNK, &e->h[i]);
		if (i < 3 && chunkstore_insert(e->a, &e->h[i], e->data[i], CHUNK))
			return -1;
	}
	so.store = e->a;
	if (peer_server_start(&so, &e->srv))
		return -1;
	snprintf(e->addr, sizeof(e->addr), "127.0.0.1:%d", peer_server_port(e->srv));
	co.store = e->b;
	if (peer_client_create(&co, &e->cli))
		return -1;
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;
	int i;

	peer_client_destroy(e->cli);
	peer_server_stop(e->srv);
	chunkstore_close(e->a);
	chunkstore_close(e->b);
	fx_rm_rf(e->dir_a);
	fx_rm_rf(e->dir_b);
	for (i = 0; i < 4; i++)
		free(e->data[i]);
	free(e);
	return 0;
}

/* ---- a raw HTTP/1.1 exchange, so the test controls every byte of the request ---- */

struct resp {
	int status;
	size_t body_len;
	uint8_t *body;
	char head[2048];
};

static void raw_request(int port, const char *req, struct resp *r)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(port),
				.sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	struct timeval tv = {.tv_sec = 5};
	size_t cap = CHUNK + 65536, n = 0;
	uint8_t *buf = malloc(cap);
	char *sep;
	ssize_t k;
	int s = socket(AF_INET, SOCK_STREAM, 0);

	assert_non_null(buf);
	assert_true(s >= 0);
	setsockopt(s, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	assert_int_equal(connect(s, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(write(s, req, strlen(req)), (ssize_t)strlen(req));
	while (n < cap && (k = read(s, buf + n, cap - n)) > 0) /* bounded by cap and timeout */
		n += k;
	close(s);
	memset(r, 0, sizeof(*r));
	assert_true(n > 12);
	r->status = atoi((char *)buf + 9);
	sep = memmem(buf, n, "\r\n\r\n", 4);
	assert_non_null(sep);
	snprintf(r->head, sizeof(r->head), "%.*s", (int)((uint8_t *)sep - buf), buf);
	r->body_len = n - ((uint8_t *)sep + 4 - buf);
	r->body = malloc(r->body_len + 1);
	memcpy(r->body, sep + 4, r->body_len);
	free(buf);
}

static int get(struct env *e, const char *path, const char *auth, struct resp *r)
{
	char req[1024];

	snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: x\r\n%s%s%sConnection: close\r\n\r\n",
		 path, auth ? "Authorization: " : "", auth ? auth : "", auth ? "\r\n" : "");
	raw_request(peer_server_port(e->srv), req, r);
	return r->status;
}

static void chunk_path(const struct chunk_hash *h, char *buf, size_t len)
{
	char hex[HASH_HEX_LEN + 1];

	hash_to_hex(h, hex);
	snprintf(buf, len, "/v1/chunks/%s", hex);
}

static bool body_has_chunk_data(const struct resp *r, const uint8_t *chunk)
{
	/* any 16-byte run of the chunk in the body counts as leaked data */
	return r->body_len >= 16 && memmem(r->body, r->body_len, chunk, 16) != NULL;
}

static void test_auth_required(void **state)
{
	struct env *e = *state;
	struct peer_server_stats st;
	struct resp r;
	char path[128];

	chunk_path(&e->h[0], path, sizeof(path));
	assert_int_equal(get(e, path, NULL, &r), 401);
	assert_false(body_has_chunk_data(&r, e->data[0]));
	assert_true(r.body_len < 100);
	free(r.body);
	assert_int_equal(get(e, path, "Bearer wrong-token", &r), 403);
	assert_false(body_has_chunk_data(&r, e->data[0]));
	free(r.body);
	assert_int_equal(get(e, path, "Bearer " TOKEN "x", &r), 403);
	free(r.body);
	assert_int_equal(get(e, path, "Bearer s3cret-toke", &r), 403);
	free(r.body);
	assert_int_equal(get(e, path, "Basic " TOKEN, &r), 401);
	free(r.body);
	assert_int_equal(get(e, path, "Bearer ", &r), 403);
	free(r.body);
	/* the token is checked before the path: no oracle for chunk presence */
	chunk_path(&e->h[3], path, sizeof(path));
	assert_int_equal(get(e, path, "Bearer nope", &r), 403);
	free(r.body);
	peer_server_get_stats(e->srv, &st);
	assert_int_equal(st.responses[PEER_ST_401], 2);
	assert_int_equal(st.responses[PEER_ST_403], 5);
	assert_int_equal(st.responses[PEER_ST_200], 0);
	assert_int_equal(st.bytes, 0);
}

/* Whitespace around the token is not part of it (RFC 9110 5.5: optional whitespace around
 * a field value): trailing spaces or tabs were compared as token bytes (403). */
static void test_auth_ignores_whitespace_around_the_token(void **state)
{
	struct env *e = *state;
	struct resp r;
	char path[128];
	const char *ok[] = {"Bearer " TOKEN " ", "Bearer " TOKEN "\t", "Bearer   " TOKEN " \t ",
			    "bearer " TOKEN "  "};

	chunk_path(&e->h[0], path, sizeof(path));
	for (size_t i = 0; i < ARRAY_SIZE(ok); i++) {
		if (get(e, path, ok[i], &r) != 200)
			fail_msg("'%s': HTTP %d", ok[i], r.status);
		assert_int_equal(r.body_len, CHUNK);
		free(r.body);
	}
	/* inner whitespace is still part of what is compared */
	assert_int_equal(get(e, path, "Bearer s3cret -token", &r), 403);
	free(r.body);
	assert_int_equal(get(e, path, "Bearer " TOKEN " x", &r), 403);
	free(r.body);
}

/*
 * Slowloris: one address holding idle half-requests took every one of the 256 slots, and
 * every peer was locked out (counted before any token check). Now an address gets at
 * most 64; 300 idle sockets from 127.0.0.2 (loopback too) leave a peer on 127.0.0.1 served
 * at once.
 */
static void test_idle_sockets_from_one_address_do_not_lock_peers_out(void **state)
{
	struct env *e = *state;
	struct sockaddr_in src = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(0x7f000002)};
	struct sockaddr_in dst = {.sin_family = AF_INET,
				  .sin_port = htons(peer_server_port(e->srv)),
				  .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	static const char half[] = "GET /v1/chunks/ HTTP/1.1\r\n";
	enum { NSOCK = 300 };
	int socks[NSOCK], n = 0;
	uint64_t t0;
	struct resp r;
	char path[128];

	for (; n < NSOCK; n++) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);

		assert_true(fd >= 0);
		assert_int_equal(bind(fd, (struct sockaddr *)&src, sizeof(src)), 0);
		if (connect(fd, (struct sockaddr *)&dst, sizeof(dst))) {
			close(fd);
			break;
		}
		if (write(fd, half, strlen(half)) < 0) { /* closed at the limit: fine */
			close(fd);
			continue;
		}
		socks[n] = fd;
	}
	assert_int_equal(n, NSOCK);
	fx_sleep_ms(300); /* MHD has accepted (or refused) them all */
	chunk_path(&e->h[0], path, sizeof(path));
	t0 = now_ns();
	assert_int_equal(get(e, path, "Bearer " TOKEN, &r), 200);
	assert_int_equal(r.body_len, CHUNK);
	assert_true(now_ns() - t0 < 3000 * MS);
	free(r.body);
	for (int i = 0; i < n; i++)
		close(socks[i]);
}

static void test_malformed_paths(void **state)
{
	struct env *e = *state;
	char hex[HASH_HEX_LEN + 1], p[256];
	const char *auth = "Bearer " TOKEN;
	struct peer_server_stats st;
	struct resp r;
	int i;

	hash_to_hex(&e->h[0], hex);
	const char *bad[] = {"/", "/v1/chunks/", "/v1/chunks/abc", "/v1/chunk/x", "/v2/chunks/",
			     "/v1/chunks/../../etc/passwd"};
	for (i = 0; i < (int)ARRAY_SIZE(bad); i++) {
		assert_int_equal(get(e, bad[i], auth, &r), 400);
		free(r.body);
	}
	snprintf(p, sizeof(p), "/v1/chunks/%.63s", hex); /* 63 digits */
	assert_int_equal(get(e, p, auth, &r), 400);
	free(r.body);
	snprintf(p, sizeof(p), "/v1/chunks/%s0", hex); /* 65 */
	assert_int_equal(get(e, p, auth, &r), 400);
	free(r.body);
	snprintf(p, sizeof(p), "/v1/chunks/%s/x", hex);
	assert_int_equal(get(e, p, auth, &r), 400);
	free(r.body);
	snprintf(p, sizeof(p), "/v1/chunks/%.63sg", hex); /* not hex */
	assert_int_equal(get(e, p, auth, &r), 400);
	free(r.body);
	snprintf(p, sizeof(p), "/v1/chunks/%.62s%%2f", hex); /* escaped slash */
	assert_int_equal(get(e, p, auth, &r), 400);
	free(r.body);
	snprintf(p, sizeof(p), "/v1/chunks/../chunks/%s", hex);
	assert_int_equal(get(e, p, auth, &r), 400);
	free(r.body);
	/* other methods */
	snprintf(p, sizeof(p),
		 "DELETE /v1/chunks/%s HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n"
		 "Connection: close\r\n\r\n", hex, auth);
	raw_request(peer_server_port(e->srv), p, &r);
	assert_int_equal(r.status, 405);
	free(r.body);
	peer_server_get_stats(e->srv, &st);
	assert_int_equal(st.responses[PEER_ST_400], (uint64_t)ARRAY_SIZE(bad) + 6);
	assert_int_equal(st.responses[PEER_ST_405], 1);
	assert_int_equal(st.responses[PEER_ST_200], 0);
}

static void test_serves_exact_bytes(void **state)
{
	struct env *e = *state;
	struct peer_server_stats st;
	struct chunkstore_stats cst;
	char path[128], req[512], hex[HASH_HEX_LEN + 1];
	struct resp r;
	int i;

	for (i = 0; i < 3; i++) {
		chunk_path(&e->h[i], path, sizeof(path));
		assert_int_equal(get(e, path, "Bearer " TOKEN, &r), 200);
		assert_int_equal(r.body_len, CHUNK);
		assert_memory_equal(r.body, e->data[i], CHUNK);
		free(r.body);
	}
	/* upper-case hex names the same chunk */
	hash_to_hex(&e->h[1], hex);
	for (i = 0; hex[i]; i++)
		hex[i] = (char)toupper((unsigned char)hex[i]);
	snprintf(path, sizeof(path), "/v1/chunks/%s", hex);
	assert_int_equal(get(e, path, "bearer " TOKEN, &r), 200);
	assert_memory_equal(r.body, e->data[1], CHUNK);
	free(r.body);
	/* absent */
	chunk_path(&e->h[3], path, sizeof(path));
	assert_int_equal(get(e, path, "Bearer " TOKEN, &r), 404);
	assert_true(r.body_len < 100);
	free(r.body);
	/* HEAD: the length, no body */
	chunk_path(&e->h[2], path, sizeof(path));
	snprintf(req, sizeof(req),
		 "HEAD %s HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
		 "Connection: close\r\n\r\n", path, TOKEN);
	raw_request(peer_server_port(e->srv), req, &r);
	assert_int_equal(r.status, 200);
	assert_int_equal(r.body_len, 0);
	assert_non_null(strcasestr(r.head, "Content-Length: 262144"));
	free(r.body);
	peer_server_get_stats(e->srv, &st);
	assert_int_equal(st.responses[PEER_ST_200], 5);
	assert_int_equal(st.responses[PEER_ST_404], 1);
	assert_int_equal(st.bytes, 4ULL * CHUNK); /* HEAD sends none */
	assert_int_equal(st.requests, 6);
	/* every pin was released when its response finished */
	fx_sleep_ms(50);
	chunkstore_get_stats(e->a, &cst);
	assert_int_equal(cst.pinned, 0);
}

static void test_client_fetch(void **state)
{
	struct env *e = *state;
	struct peer_client_stats st;
	struct peer_server_stats sst;
	struct chunk_ref *ref;
	uint8_t *buf = malloc(CHUNK);
	uint64_t dl = now_ns() + 5000 * MS;
	int i;

	for (i = 0; i < 3; i++) {
		assert_false(chunkstore_contains(e->b, &e->h[i]));
		assert_int_equal(peer_client_fetch(e->cli, e->addr, &e->h[i], scratch, CHUNK, dl), 0);
		assert_true(chunkstore_contains(e->b, &e->h[i]));
		assert_int_equal(chunkstore_get(e->b, &e->h[i], &ref), 0);
		assert_int_equal(pread_full(chunk_ref_fd(ref), buf, CHUNK, 0), 0);
		assert_memory_equal(buf, e->data[i], CHUNK);
		chunkstore_put(e->b, ref);
	}
	assert_int_equal(peer_client_fetch(e->cli, e->addr, &e->h[3], scratch, CHUNK, dl), -ENOENT);
	assert_false(chunkstore_contains(e->b, &e->h[3]));
	/* a length that is not the chunk's is wrong data, not a chunk */
	assert_int_equal(peer_client_get(e->cli, e->addr, &e->h[0], buf, CHUNK - 1, dl),
			 -EBADMSG);
	peer_client_get_stats(e->cli, &st);
	assert_int_equal(st.ok, 3);
	assert_int_equal(st.not_found, 1);
	assert_int_equal(st.bad_data, 1);
	assert_int_equal(st.bytes, 3ULL * CHUNK);
	peer_server_get_stats(e->srv, &sst);
	assert_int_equal(sst.requests, 5);
	/* keep-alive: sequential requests from one thread reuse one connection */
	assert_int_equal(st.connects, 1);
	free(buf);
}

/* A listening socket on a free loopback port; *port set. */
static int listener(int *port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t al = sizeof(a);
	int s = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);

	assert_true(s >= 0);
	assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(s, 16), 0);
	assert_int_equal(getsockname(s, (struct sockaddr *)&a, &al), 0);
	*port = ntohs(a.sin_port);
	return s;
}

/* Peer requests carry the cluster token: with http_proxy set in rackdiskd's environment
 * they went to the proxy, token and all. They go straight to the peer now. */
static void test_client_ignores_proxy_env(void **state)
{
	struct env *e = *state;
	char proxy[64];
	uint8_t *buf = malloc(CHUNK);
	int port, lsock = listener(&port), conn;

	snprintf(proxy, sizeof(proxy), "http://127.0.0.1:%d", port);
	setenv("http_proxy", proxy, 1);
	setenv("HTTP_PROXY", proxy, 1);
	setenv("ALL_PROXY", proxy, 1);
	setenv("all_proxy", proxy, 1);
	unsetenv("no_proxy");
	unsetenv("NO_PROXY");
	/* the "proxy" accepts and never answers: a request sent to it times out */
	assert_int_equal(peer_client_get(e->cli, e->addr, &e->h[0], buf, CHUNK,
					 now_ns() + 2000 * MS), 0);
	assert_memory_equal(buf, e->data[0], CHUNK);
	conn = accept(lsock, NULL, NULL);
	if (conn >= 0)
		close(conn);
	close(lsock);
	free(buf);
	assert_true(conn < 0); /* nobody connected to the proxy */
}

/* The proxy variables go even when the test fails (cmocka jumps out of it). */
static int teardown_proxy_env(void **state)
{
	unsetenv("http_proxy");
	unsetenv("HTTP_PROXY");
	unsetenv("ALL_PROXY");
	unsetenv("all_proxy");
	return teardown(state);
}

static void test_client_wrong_token(void **state)
{
	struct env *e = *state;
	struct peer_client_opts co = {.token = "not-it", .store = e->b};
	struct peer_client *c;

	assert_int_equal(peer_client_create(&co, &c), 0);
	assert_int_equal(peer_client_fetch(c, e->addr, &e->h[0], scratch, CHUNK, now_ns() + 5000 * MS),
			 -EACCES);
	assert_false(chunkstore_contains(e->b, &e->h[0]));
	peer_client_destroy(c);
	co.token = "";
	assert_int_equal(peer_client_create(&co, &c), -EINVAL);
}

/* ---- a lying peer: answers every GET with bytes that are not the chunk ---- */

struct liar {
	size_t len;
	uint8_t fill;
};

static enum MHD_Result liar_cb(void *cls, struct MHD_Connection *c, const char *url,
			       const char *method, const char *version, const char *data,
			       size_t *dlen, void **con_cls)
{
	struct liar *l = cls;
	uint8_t *body = malloc(l->len);
	struct MHD_Response *r;
	enum MHD_Result ret;

	memset(body, l->fill, l->len);
	r = MHD_create_response_from_buffer(l->len, body, MHD_RESPMEM_MUST_FREE);
	ret = MHD_queue_response(c, 200, r);
	MHD_destroy_response(r);
	return ret;
}

static void test_client_detects_wrong_bytes(void **state)
{
	struct env *e = *state;
	struct liar l = {.len = CHUNK, .fill = 0x5a};
	struct MHD_Daemon *d;
	struct peer_client_stats st;
	char addr[64];
	const union MHD_DaemonInfo *info;
	uint64_t dl = now_ns() + 5000 * MS;

	d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, liar_cb, &l,
			     MHD_OPTION_END);
	assert_non_null(d);
	info = MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT);
	snprintf(addr, sizeof(addr), "127.0.0.1:%u", info->port);
	assert_int_equal(peer_client_fetch(e->cli, addr, &e->h[0], scratch, CHUNK, dl), -EBADMSG);
	assert_false(chunkstore_contains(e->b, &e->h[0]));
	l.len = CHUNK * 2; /* too long: cut short, still wrong */
	assert_int_equal(peer_client_fetch(e->cli, addr, &e->h[0], scratch, CHUNK, dl), -EBADMSG);
	l.len = 10; /* too short */
	assert_int_equal(peer_client_fetch(e->cli, addr, &e->h[0], scratch, CHUNK, dl), -EBADMSG);
	assert_false(chunkstore_contains(e->b, &e->h[0]));
	peer_client_get_stats(e->cli, &st);
	assert_int_equal(st.bad_data, 3);
	assert_int_equal(st.ok, 0);
	/* the real peer still serves it */
	assert_int_equal(peer_client_fetch(e->cli, e->addr, &e->h[0], scratch, CHUNK, dl), 0);
	MHD_stop_daemon(d);
}

static void test_client_deadline(void **state)
{
	struct env *e = *state;
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t l = sizeof(a);
	char addr[64];
	uint64_t t0;
	int s = socket(AF_INET, SOCK_STREAM, 0);

	/* listens but never accepts nor answers: a stalled peer */
	assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
	assert_int_equal(listen(s, 8), 0);
	assert_int_equal(getsockname(s, (struct sockaddr *)&a, &l), 0);
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", ntohs(a.sin_port));
	t0 = now_ns();
	assert_int_equal(peer_client_fetch(e->cli, addr, &e->h[1], scratch, CHUNK, now_ns() + 300 * MS),
			 -ETIMEDOUT);
	assert_true(fx_ms_since(t0) < 2000);
	close(s);
	/* a closed port: refused at once */
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", fx_free_port());
	assert_int_equal(peer_client_fetch(e->cli, addr, &e->h[1], scratch, CHUNK, now_ns() + 2000 * MS),
			 -ECONNREFUSED);
	/* a deadline already passed */
	assert_int_equal(peer_client_fetch(e->cli, e->addr, &e->h[1], scratch, CHUNK, now_ns() - 1),
			 -ETIMEDOUT);
}

static void test_token_file(void **state)
{
	char dir[] = "/tmp/rd-token-XXXXXX", path[128], tok[64];

	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/t", dir);
	assert_int_equal(write_file_atomic(path, "  abc-123 \nsecond\n", 18), 0);
	assert_int_equal(peer_token_load(path, tok, sizeof(tok)), 0);
	assert_string_equal(tok, "abc-123");
	assert_int_equal(write_file_atomic(path, " \n", 2), 0);
	assert_int_equal(peer_token_load(path, tok, sizeof(tok)), -EINVAL);
	assert_int_equal(write_file_atomic(path, "abcdef", 6), 0);
	assert_int_equal(peer_token_load(path, tok, 4), -EINVAL);
	snprintf(path, sizeof(path), "%s/missing", dir);
	assert_int_equal(peer_token_load(path, tok, sizeof(tok)), -ENOENT);
	fx_rm_rf(dir);
}

static void test_bad_listen(void **state)
{
	struct env *e = *state;
	struct peer_server_opts so = {.listen = "nonsense", .token = TOKEN, .store = e->a};
	struct peer_server *s;
	char busy[64];

	assert_int_equal(peer_server_start(&so, &s), -EINVAL);
	so.listen = "127.0.0.1:0";
	so.token = "";
	assert_int_equal(peer_server_start(&so, &s), -EINVAL);
	/* the port is taken */
	snprintf(busy, sizeof(busy), "127.0.0.1:%d", peer_server_port(e->srv));
	so.listen = busy;
	so.token = TOKEN;
	assert_int_equal(peer_server_start(&so, &s), -EADDRNOTAVAIL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_auth_required, setup, teardown),
		cmocka_unit_test_setup_teardown(test_auth_ignores_whitespace_around_the_token,
						setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_idle_sockets_from_one_address_do_not_lock_peers_out, setup, teardown),
		cmocka_unit_test_setup_teardown(test_malformed_paths, setup, teardown),
		cmocka_unit_test_setup_teardown(test_serves_exact_bytes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_client_fetch, setup, teardown),
		cmocka_unit_test_setup_teardown(test_client_ignores_proxy_env, setup,
						teardown_proxy_env),
		cmocka_unit_test_setup_teardown(test_client_wrong_token, setup, teardown),
		cmocka_unit_test_setup_teardown(test_client_detects_wrong_bytes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_client_deadline, setup, teardown),
		cmocka_unit_test(test_token_file),
		cmocka_unit_test_setup_teardown(test_bad_listen, setup, teardown),
	};

	log_init("test_peer_server", LOG_LVL_ERROR, 0);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
