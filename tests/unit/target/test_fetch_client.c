/*
 * test_fetch_client.c - the module's fetch-socket client against a scripted server:
 * request lines as fetch_proto.h spells them, replies mapped to errnos, deadlines kept
 * when the server stalls or is absent, reconnection after the server restarts.
 */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/util.h"
#include "target/fetch_client.h"
#include "target/fetch_proto.h"

enum mode {
	M_OK, M_ERR_EIO, M_ERR_TIMEDOUT, M_STALL, M_CLOSE_AFTER_REPLY, M_GARBAGE, M_SLOW,
	M_SHUTDOWN, M_REPLY, M_TIMEDOUT_FIRST
};

struct server {
	char path[108];
	int lfd;
	volatile int stop;
	volatile enum mode mode;
	pthread_t thr;
	pthread_mutex_t lock;
	char last[FETCH_PROTO_LINE_MAX + 2];   /* the last request line, protected by lock */
	int requests;
	const char *volatile reply;            /* M_REPLY's answer */
};

static void serve_conn(struct server *s, int fd)
{
	char buf[FETCH_PROTO_LINE_MAX + 2];
	size_t have = 0;
	ssize_t n;
	char *nl;
	struct pollfd p = {.fd = fd, .events = POLLIN};
	const char *reply;

	while (!s->stop) {
		if (poll(&p, 1, 50) <= 0)
			continue;
		n = read(fd, buf + have, sizeof(buf) - 1 - have);
		if (n <= 0)
			break;
		have += (size_t)n;
		buf[have] = '\0';
		nl = strchr(buf, '\n');
		if (!nl)
			continue;
		*nl = '\0';
		pthread_mutex_lock(&s->lock);
		snprintf(s->last, sizeof(s->last), "%s", buf);
		s->requests++;
		pthread_mutex_unlock(&s->lock);
		have = 0;
		switch (s->mode) {
		case M_OK: reply = "OK\n"; break;
		case M_ERR_EIO: reply = "ERR 5 every source failed\n"; break;
		case M_ERR_TIMEDOUT: reply = "ERR 110 deadline\n"; break;
		case M_GARBAGE: reply = "MAYBE\n"; break;
		case M_CLOSE_AFTER_REPLY: reply = "OK\n"; break;
		case M_SLOW: usleep(100000); reply = "OK\n"; break;
		case M_SHUTDOWN: reply = "ERR 108 shutting down\n"; break;
		case M_REPLY: reply = s->reply; break;
		case M_TIMEDOUT_FIRST:
			reply = s->requests == 1 ? "ERR 110 deadline\n" : "OK\n";
			break;
		default: reply = NULL; break;
		}
		if (reply && write(fd, reply, strlen(reply)) < 0)
			break;
		if (s->mode == M_CLOSE_AFTER_REPLY)
			break;
	}
	close(fd);
}

struct conn_arg {
	struct server *s;
	int fd;
};

static void *conn_main(void *arg)
{
	struct conn_arg *ca = arg;

	serve_conn(ca->s, ca->fd);
	free(ca);
	return NULL;
}

/* A thread per connection (the client keeps a TOUCH connection open beside the others);
 * all of them end within 50 ms of stop and are joined by server_stop(). */
static void *server_main(void *arg)
{
	struct server *s = arg;
	struct pollfd p = {.fd = s->lfd, .events = POLLIN};
	pthread_t thr[64];
	struct conn_arg *ca;
	int fd, n = 0, i;

	while (!s->stop) {
		if (poll(&p, 1, 50) <= 0)
			continue;
		fd = accept(s->lfd, NULL, NULL);
		if (fd < 0)
			continue;
		ca = malloc(sizeof(*ca));
		if (ca) {
			ca->s = s;
			ca->fd = fd;
		}
		if (!ca || n == 64 || pthread_create(&thr[n], NULL, conn_main, ca)) {
			free(ca);
			close(fd);
			continue;
		}
		n++;
	}
	for (i = 0; i < n; i++)
		pthread_join(thr[i], NULL);
	return NULL;
}

static void server_start(struct server *s)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};

	s->stop = 0;
	s->lfd = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_true(s->lfd >= 0);
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", s->path);
	unlink(s->path);
	assert_int_equal(bind(s->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(s->lfd, 8), 0);
	assert_int_equal(pthread_create(&s->thr, NULL, server_main, s), 0);
}

static void server_stop(struct server *s)
{
	s->stop = 1;
	pthread_join(s->thr, NULL);
	close(s->lfd);
	unlink(s->path);
}

static struct server srv;
static struct chunk_hash H1;

static int setup(void **state)
{
	memset(&srv, 0, sizeof(srv));
	snprintf(srv.path, sizeof(srv.path), "/tmp/test_fetch_client.%d.sock", (int)getpid());
	pthread_mutex_init(&srv.lock, NULL);
	hash_compute("chunk", 5, &H1);
	return 0;
}

static void last_line(char *out, size_t len)
{
	pthread_mutex_lock(&srv.lock);
	assert_true(strlen(srv.last) < len);
	memcpy(out, srv.last, strlen(srv.last) + 1);
	pthread_mutex_unlock(&srv.lock);
}

static void test_fetch_line_and_replies(void **state)
{
	struct fetch_client *fc;
	char hex[HASH_HEX_LEN + 1], line[FETCH_PROTO_LINE_MAX + 2], want[256];
	unsigned long long t;

	server_start(&srv);
	assert_int_equal(fetch_client_new(srv.path, &fc), 0);
	srv.mode = M_OK;
	assert_int_equal(fetch_client_fetch(fc, &H1, 4096, now_ns() + 2000000000ull), 0);
	last_line(line, sizeof(line));
	hash_to_hex(&H1, hex);
	snprintf(want, sizeof(want), "FETCH %s 4096 ", hex);
	assert_memory_equal(line, want, strlen(want));
	/* The server is given less time than the client waits, so its answer arrives. */
	t = strtoull(line + strlen(want), NULL, 10);
	assert_true(t > 1000 && t < 2000);

	srv.mode = M_ERR_EIO;
	assert_int_equal(fetch_client_fetch(fc, &H1, 4096, now_ns() + 1000000000ull), -EIO);
	srv.mode = M_ERR_TIMEDOUT;
	assert_int_equal(fetch_client_fetch(fc, &H1, 4096, now_ns() + 1000000000ull), -ETIMEDOUT);
	srv.mode = M_GARBAGE;
	assert_int_equal(fetch_client_fetch(fc, &H1, 4096, now_ns() + 1000000000ull), -EPROTO);

	srv.mode = M_OK;
	assert_int_equal(fetch_client_prefetch(fc, &H1, 65536, now_ns() + 1000000000ull), 0);
	last_line(line, sizeof(line));
	snprintf(want, sizeof(want), "PREFETCH %s 65536", hex);
	assert_string_equal(line, want);
	fetch_client_free(fc);
	server_stop(&srv);
}

/*
 * rackdiskd's errnos reach the initiator through the module's errno-to-sense mapping,
 * whose meanings are local ones (EROFS: write protected, EINVAL: invalid field in CDB,
 * anything unknown: target failure). Only the errnos the protocol gives a meaning pass
 * as they are; any other daemon-side failure of a FETCH is EIO (MEDIUM ERROR).
 */
static void test_remote_errnos_outside_the_protocol_are_eio(void **state)
{
	static const struct {
		const char *reply;
		int want;
	} cases[] = {
		{"ERR 30 Read-only file system\n", -EIO},
		{"ERR 13 Permission denied\n", -EIO},
		{"ERR 1 Operation not permitted\n", -EIO},
		{"ERR 22 Invalid argument\n", -EIO},
		{"ERR 24 Too many open files\n", -EIO},
		{"ERR 107 Transport endpoint is not connected\n", -EIO},
		{"ERR 34 Numerical result out of range\n", -EIO},
		{"ERR 111 Connection refused\n", -EIO},
		{"ERR 5 every source failed\n", -EIO},
		{"ERR 110 deadline\n", -ETIMEDOUT},
		{"ERR 11 try again\n", -EAGAIN},
		{"ERR 28 No space left on device\n", -ENOSPC},
		{"ERR 122 Disk quota exceeded\n", -EDQUOT},
	};
	struct fetch_client *fc;
	int got;

	server_start(&srv);
	assert_int_equal(fetch_client_new(srv.path, &fc), 0);
	srv.mode = M_REPLY;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		srv.reply = cases[i].reply;
		got = fetch_client_fetch(fc, &H1, 4096, now_ns() + 1000000000ull);
		if (got != cases[i].want)
			fail_msg("reply %s: got %d, want %d", cases[i].reply, got, cases[i].want);
	}
	fetch_client_free(fc);
	server_stop(&srv);
}

static int requests_seen(void)
{
	int n;

	pthread_mutex_lock(&srv.lock);
	n = srv.requests;
	pthread_mutex_unlock(&srv.lock);
	return n;
}

/*
 * A LUN's io_timeout_ms may be up to an hour, but a FETCH asks the server to wait at
 * most FETCH_PROTO_TIMEOUT_MAX_MS. The server's ETIMEDOUT for that part is not the end
 * of the command's deadline: FETCH is sent again for the rest. Within the cap, the
 * server's ETIMEDOUT is the answer (it waited the whole deadline).
 */
static void test_deadline_beyond_protocol_cap_asks_again(void **state)
{
	struct fetch_client *fc;
	char line[FETCH_PROTO_LINE_MAX + 2], want[256], hex[HASH_HEX_LEN + 1];
	unsigned long long t;

	server_start(&srv);
	assert_int_equal(fetch_client_new(srv.path, &fc), 0);
	hash_to_hex(&H1, hex);
	snprintf(want, sizeof(want), "FETCH %s 4096 ", hex);

	srv.mode = M_TIMEDOUT_FIRST;
	assert_int_equal(fetch_client_fetch(fc, &H1, 4096, now_ns() + 1200ull * 1000000000ull), 0);
	assert_int_equal(requests_seen(), 2);
	last_line(line, sizeof(line));
	assert_memory_equal(line, want, strlen(want));
	t = strtoull(line + strlen(want), NULL, 10);
	assert_int_equal(t, FETCH_PROTO_TIMEOUT_MAX_MS); /* 1200 s left: capped again */

	pthread_mutex_lock(&srv.lock);
	srv.requests = 0;
	pthread_mutex_unlock(&srv.lock);
	srv.mode = M_ERR_TIMEDOUT;
	assert_int_equal(fetch_client_fetch(fc, &H1, 4096, now_ns() + 2000000000ull), -ETIMEDOUT);
	assert_int_equal(requests_seen(), 1);
	fetch_client_free(fc);
	server_stop(&srv);
}

static void test_stall_keeps_deadline(void **state)
{
	struct fetch_client *fc;
	uint64_t t0, dt;

	server_start(&srv);
	assert_int_equal(fetch_client_new(srv.path, &fc), 0);
	srv.mode = M_STALL;
	t0 = now_ns();
	assert_int_equal(fetch_client_fetch(fc, &H1, 4096, t0 + 300000000ull), -ETIMEDOUT);
	dt = now_ns() - t0;
	assert_true(dt >= 290000000ull && dt < 600000000ull);
	/* The stalled connection was dropped: the next request works on a fresh one. */
	srv.mode = M_OK;
	assert_int_equal(fetch_client_fetch(fc, &H1, 4096, now_ns() + 1000000000ull), 0);
	fetch_client_free(fc);
	server_stop(&srv);
}

struct late_start {
	struct server *s;
	unsigned delay_ms;
};

static void *start_later(void *arg)
{
	struct late_start *ls = arg;

	usleep(ls->delay_ms * 1000);
	server_start(ls->s);
	return NULL;
}

/* A FETCH made while the server is down succeeds once ls starts it. */
static void fetch_while_it_comes_up(struct fetch_client *fc, struct late_start *ls)
{
	pthread_t thr;

	srv.mode = M_OK;
	assert_int_equal(pthread_create(&thr, NULL, start_later, ls), 0);
	assert_int_equal(fetch_client_fetch(fc, &H1, 4096, now_ns() + 3000000000ull), 0);
	pthread_join(thr, NULL);
}

static void test_absent_server(void **state)
{
	struct fetch_client *fc;
	struct late_start ls = {.s = &srv, .delay_ms = 200};
	struct chunk_hash hs[FETCH_PROTO_TOUCH_MAX + 1];
	uint64_t t0, dt;

	unlink(srv.path);
	assert_int_equal(fetch_client_new(srv.path, &fc), 0);
	/* FETCH waits for the server up to its deadline ... */
	t0 = now_ns();
	assert_int_equal(fetch_client_fetch(fc, &H1, 4096, t0 + 200000000ull), -ETIMEDOUT);
	dt = now_ns() - t0;
	assert_true(dt >= 190000000ull && dt < 500000000ull);
	/* ... and best-effort requests fail at once, then are dropped for a while. */
	t0 = now_ns();
	assert_true(fetch_client_touch(fc, &H1, 1, t0 + 1000000000ull) < 0);
	assert_int_equal(fetch_client_touch(fc, &H1, 1, t0 + 1000000000ull), -EAGAIN);
	/* "at once": well under the 1 s deadline a wait for the server would run to */
	assert_true(now_ns() - t0 < 500000000ull);
	assert_int_equal(fetch_client_touch(fc, hs, FETCH_PROTO_TOUCH_MAX + 1, t0), -EINVAL);

	/* A FETCH made while the server is down succeeds once it comes up. */
	fetch_while_it_comes_up(fc, &ls);
	fetch_client_free(fc);
	server_stop(&srv);
}

static void test_touch_and_reconnect(void **state)
{
	struct chunk_hash hs[FETCH_PROTO_TOUCH_MAX];
	struct fetch_client_stats st;
	struct fetch_client *fc;
	char line[FETCH_PROTO_LINE_MAX + 2], hex[HASH_HEX_LEN + 1];
	size_t i;

	for (i = 0; i < FETCH_PROTO_TOUCH_MAX; i++)
		hash_compute(&i, sizeof(i), &hs[i]);
	server_start(&srv);
	assert_int_equal(fetch_client_new(srv.path, &fc), 0);
	srv.mode = M_OK;
	assert_int_equal(fetch_client_touch(fc, hs, FETCH_PROTO_TOUCH_MAX, now_ns() + 1000000000ull), 0);
	/* TOUCH does not wait for its reply: wait (bounded) for the server to see it. */
	for (i = 0; i < 100; i++) {
		last_line(line, sizeof(line));
		if (!strncmp(line, "TOUCH", 5))
			break;
		usleep(10000);
	}
	assert_int_equal(strlen(line), 5 + FETCH_PROTO_TOUCH_MAX * (HASH_HEX_LEN + 1));
	hash_to_hex(&hs[FETCH_PROTO_TOUCH_MAX - 1], hex);
	assert_string_equal(line + strlen(line) - HASH_HEX_LEN, hex);

	/* The server closes its side after each reply (as a restarting rackdiskd would):
	 * the pooled connection is dead, and the client retries on a new one. */
	srv.mode = M_CLOSE_AFTER_REPLY;
	assert_int_equal(fetch_client_fetch(fc, &H1, 4096, now_ns() + 1000000000ull), 0);
	usleep(100000);
	assert_int_equal(fetch_client_fetch(fc, &H1, 4096, now_ns() + 1000000000ull), 0);
	fetch_client_get_stats(fc, &st);
	assert_int_equal(st.fetches, 2);
	assert_int_equal(st.fetch_errors, 0);
	assert_true(st.connects >= 2);
	fetch_client_free(fc);
	server_stop(&srv);
}

struct fetch_arg {
	struct fetch_client *fc;
	int ret;
};

static void *fetch_main(void *arg)
{
	struct fetch_arg *fa = arg;

	fa->ret = fetch_client_fetch(fa->fc, &H1, 4096, now_ns() + 3000000000ull);
	return NULL;
}

/* After a restart of the server every pooled connection is dead: the first failure
 * empties the pool, and the FETCH goes on over a new connection. */
static void test_restart_with_full_pool(void **state)
{
	struct fetch_arg fa[4];
	pthread_t thr[4];
	struct fetch_client *fc;
	struct late_start ls = {.s = &srv, .delay_ms = 200};
	uint64_t t0, dt;
	int i;

	server_start(&srv);
	assert_int_equal(fetch_client_new(srv.path, &fc), 0);
	srv.mode = M_SLOW; /* four FETCHes at once: four pooled connections */
	for (i = 0; i < 4; i++) {
		fa[i] = (struct fetch_arg){.fc = fc};
		assert_int_equal(pthread_create(&thr[i], NULL, fetch_main, &fa[i]), 0);
	}
	for (i = 0; i < 4; i++) {
		pthread_join(thr[i], NULL);
		assert_int_equal(fa[i].ret, 0);
	}
	server_stop(&srv);
	server_start(&srv);
	srv.mode = M_OK;
	assert_int_equal(fetch_client_fetch(fc, &H1, 4096, now_ns() + 1000000000ull), 0);

	/* A server that answers it is stopping is retried until the deadline ... */
	srv.mode = M_SHUTDOWN;
	t0 = now_ns();
	assert_int_equal(fetch_client_fetch(fc, &H1, 4096, t0 + 300000000ull), -ETIMEDOUT);
	dt = now_ns() - t0;
	assert_true(dt >= 290000000ull && dt < 800000000ull);
	/* ... and a FETCH it refused that way succeeds once it is back. */
	server_stop(&srv);
	fetch_while_it_comes_up(fc, &ls);
	fetch_client_free(fc);
	server_stop(&srv);
}

/* HIT goes out on the one-way connection: it returns at once even while the server
 * never replies (M_STALL), and the server receives exactly the protocol's line. */
static void test_hit_never_waits(void **state)
{
	char line[FETCH_PROTO_LINE_MAX + 2], want[FETCH_PROTO_HIT_LINE_MAX];
	struct fetch_client_stats st;
	struct fetch_client *fc;
	struct chunk_hash image;
	uint64_t t0;
	size_t i;

	hash_compute("image", 5, &image);
	server_start(&srv);
	srv.mode = M_STALL;
	assert_int_equal(fetch_client_new(srv.path, &fc), 0);
	t0 = now_ns();
	for (i = 0; i < 3; i++)
		assert_int_equal(fetch_client_hit(fc, &image, 100 + i, &H1, now_ns() + 2000000000ull),
				 0);
	/* Three lines with no reply took far less than any reply timeout. */
	assert_true(now_ns() - t0 < 500000000ull);
	/* (The scripted server reads the first line of what arrives together.) */
	fetch_proto_format_hit(want, sizeof(want), &image, 100, &H1);
	want[strlen(want) - 1] = '\0';
	for (i = 0; i < 100; i++) {
		last_line(line, sizeof(line));
		if (!strcmp(line, want))
			break;
		usleep(10000);
	}
	assert_string_equal(line, want);
	fetch_client_get_stats(fc, &st);
	assert_int_equal(st.hits, 3);
	assert_int_equal(st.dropped, 0);
	fetch_client_free(fc);
	server_stop(&srv);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(test_fetch_line_and_replies, setup),
		cmocka_unit_test_setup(test_remote_errnos_outside_the_protocol_are_eio, setup),
		cmocka_unit_test_setup(test_deadline_beyond_protocol_cap_asks_again, setup),
		cmocka_unit_test_setup(test_stall_keeps_deadline, setup),
		cmocka_unit_test_setup(test_absent_server, setup),
		cmocka_unit_test_setup(test_touch_and_reconnect, setup),
		cmocka_unit_test_setup(test_restart_with_full_pool, setup),
		cmocka_unit_test_setup(test_hit_never_waits, setup),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
