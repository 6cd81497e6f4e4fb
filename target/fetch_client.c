/*
 * fetch_client.c - requests on the fetch socket (see fetch_client.h, fetch_proto.h).
 */
#include "target/fetch_client.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "common/util.h"
#include "target/fetch_proto.h"

/* More idle connections than tgtd has worker threads per LU is waste. */
#define POOL_MAX 32
#define REPLY_MAX 512
/* While rackdiskd cannot be reached, a FETCH retries its connect at this interval. */
#define RECONNECT_NS (50ull * 1000 * 1000)
/* After a best-effort request fails, drop best-effort requests for this long. */
#define BACKOFF_NS (1000ull * 1000 * 1000)
/* One-way (TOUCH, HIT) replies not yet read beyond which lines are dropped (the server
 * lags). A burst of reads completing together sends a HIT each before any reply can be
 * read; 64 lines are a few KiB in the socket's buffer. */
#define TOUCH_OWED_MAX 64

struct fetch_client {
	char *path;
	pthread_mutex_t lock;
	int idle[POOL_MAX];          /* idle connections, protected by lock */
	int nidle;
	uint64_t quiet_until_ns;     /* best-effort requests dropped until then */
	struct fetch_client_stats st;

	/* TOUCH and HIT have their own connection on which requests are sent without
	 * waiting for their replies: the reads that report hits never wait on rackdiskd. */
	pthread_mutex_t touch_lock;
	int touch_fd;                /* -1 when closed; protected by touch_lock */
	unsigned touch_owed;         /* replies not read yet */
};

int fetch_client_new(const char *socket_path, struct fetch_client **out)
{
	struct sockaddr_un sa;
	struct fetch_client *fc;

	if (strlen(socket_path) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	fc = calloc(1, sizeof(*fc));
	if (!fc)
		return -ENOMEM;
	fc->path = strdup(socket_path);
	if (!fc->path) {
		free(fc);
		return -ENOMEM;
	}
	pthread_mutex_init(&fc->lock, NULL);
	pthread_mutex_init(&fc->touch_lock, NULL);
	fc->touch_fd = -1;
	*out = fc;
	return 0;
}

void fetch_client_free(struct fetch_client *fc)
{
	int i;

	if (!fc)
		return;
	for (i = 0; i < fc->nidle; i++)
		close(fc->idle[i]);
	if (fc->touch_fd >= 0)
		close(fc->touch_fd);
	pthread_mutex_destroy(&fc->touch_lock);
	pthread_mutex_destroy(&fc->lock);
	free(fc->path);
	free(fc);
}

#define STAT_INC(fc, field)                                                                \
	do {                                                                               \
		pthread_mutex_lock(&(fc)->lock);                                           \
		(fc)->st.field++;                                                          \
		pthread_mutex_unlock(&(fc)->lock);                                         \
	} while (0)

static int conn_open(struct fetch_client *fc)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd, ret;

	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		return -errno;
	memcpy(sa.sun_path, fc->path, strlen(fc->path) + 1);
	/* A unix-socket connect either completes at once or fails (EAGAIN: the backlog
	 * is full, which the caller treats like an absent server). */
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		ret = -errno;
		close(fd);
		return ret;
	}
	STAT_INC(fc, connects);
	return fd;
}

/* Returns an idle connection, or a new one; *reused tells which. */
static int conn_get(struct fetch_client *fc, bool *reused)
{
	int fd = -1;

	pthread_mutex_lock(&fc->lock);
	if (fc->nidle > 0)
		fd = fc->idle[--fc->nidle];
	pthread_mutex_unlock(&fc->lock);
	*reused = fd >= 0;
	return fd >= 0 ? fd : conn_open(fc);
}

/* Closes every idle connection: they all belong to a server that has gone away. */
static void conn_flush(struct fetch_client *fc)
{
	int fds[POOL_MAX], n, i;

	pthread_mutex_lock(&fc->lock);
	n = fc->nidle;
	memcpy(fds, fc->idle, (size_t)n * sizeof(fds[0]));
	fc->nidle = 0;
	pthread_mutex_unlock(&fc->lock);
	for (i = 0; i < n; i++)
		close(fds[i]);
}

static void conn_put(struct fetch_client *fc, int fd)
{
	pthread_mutex_lock(&fc->lock);
	if (fc->nidle < POOL_MAX) {
		fc->idle[fc->nidle++] = fd;
		fd = -1;
	}
	pthread_mutex_unlock(&fc->lock);
	if (fd >= 0)
		close(fd);
}

/* Waits for events on fd until deadline_ns: 0, -ETIMEDOUT, or -errno. */
static int wait_fd(int fd, short events, uint64_t deadline_ns)
{
	struct pollfd p = {.fd = fd, .events = events};
	uint64_t now;
	int ret;

	for (;;) {
		now = now_ns();
		if (now >= deadline_ns)
			return -ETIMEDOUT;
		ret = poll(&p, 1, (int)DIV_ROUND_UP(deadline_ns - now, 1000000ull));
		if (ret > 0)
			return 0;
		if (ret < 0 && errno != EINTR)
			return -errno;
	}
}

static int send_line(int fd, const char *line, size_t len, uint64_t deadline_ns)
{
	ssize_t n;
	int ret;

	while (len) {
		n = send(fd, line, len, MSG_NOSIGNAL);
		if (n > 0) {
			line += n;
			len -= (size_t)n;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && errno != EAGAIN)
			return -errno;
		ret = wait_fd(fd, POLLOUT, deadline_ns);
		if (ret)
			return ret;
	}
	return 0;
}

/* Reads one reply line (without its '\n') into buf. EOF before it: -ECONNRESET. */
static int recv_line(int fd, char *buf, size_t size, uint64_t deadline_ns)
{
	size_t have = 0;
	ssize_t n;
	char *nl;
	int ret;

	for (;;) {
		/* The protocol has one request in flight per connection, so nothing follows
		 * the reply line and reading past it cannot swallow another reply. */
		n = recv(fd, buf + have, size - 1 - have, 0);
		if (n > 0) {
			have += (size_t)n;
			buf[have] = '\0';
			nl = memchr(buf, '\n', have);
			if (nl) {
				*nl = '\0';
				return nl + 1 == buf + have ? 0 : -EPROTO;
			}
			if (have == size - 1)
				return -EPROTO;
			continue;
		}
		if (n == 0)
			return -ECONNRESET;
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			return -errno;
		ret = wait_fd(fd, POLLIN, deadline_ns);
		if (ret)
			return ret;
	}
}

/*
 * The errno rackdiskd answered, as this client returns it. The module turns errors into
 * SCSI sense (bs_rackdisk.c, cmd_error_errno) with local meanings: EROFS/EACCES are a
 * write-protected LUN, EINVAL a bad CDB field, anything unknown a target failure. A
 * daemon-side failure means none of those to the initiator, so only the errnos the
 * protocol gives a meaning (fetch_proto.h) pass: the fill may still come (ETIMEDOUT,
 * EAGAIN, ESHUTDOWN: BUSY, retried), the chunk store is full of chunks in use
 * (ENOSPC, EDQUOT: BUSY on a read), or no source could serve the chunk (EIO). Every other
 * daemon-side failure is the chunk that could not be had: EIO, MEDIUM ERROR.
 */
static int remote_errno(long e)
{
	switch (e) {
	case ETIMEDOUT:
	case EAGAIN:
	case ESHUTDOWN:
	case ENOSPC:
	case EDQUOT:
	case EIO:
		return (int)-e;
	default:
		return -EIO;
	}
}

static int parse_reply(const char *r)
{
	char *end;
	long e;

	if (!strcmp(r, "OK"))
		return 0;
	if (strncmp(r, "ERR ", 4))
		return -EPROTO;
	e = strtol(r + 4, &end, 10);
	if (end == r + 4 || (*end && *end != ' ') || e <= 0 || e >= 4096)
		return -EPROTO;
	return remote_errno(e);
}

static bool server_absent(int err)
{
	return err == -ENOENT || err == -ECONNREFUSED || err == -EAGAIN;
}

/* The server went away during the exchange, or answered that it is stopping. */
static bool server_gone(int err)
{
	return err == -EPIPE || err == -ECONNRESET || err == -ESHUTDOWN;
}

/* Sleeps RECONNECT_NS, or until deadline_ns if that is sooner. */
static void pause_until(uint64_t deadline_ns)
{
	uint64_t now = now_ns(), pause = RECONNECT_NS;
	struct timespec ts;

	if (now >= deadline_ns)
		return;
	if (deadline_ns - now < pause)
		pause = deadline_ns - now;
	ts.tv_sec = (time_t)(pause / 1000000000ull);
	ts.tv_nsec = (long)(pause % 1000000000ull);
	nanosleep(&ts, NULL);
}

/*
 * One request/reply exchange; every request is idempotent. A connection taken from the
 * pool may belong to a server that has restarted since: the first such failure empties
 * the pool (its other connections are just as dead) and retries on a fresh connection.
 * With `patient`, a server that is absent, goes away mid-request or answers that it is
 * stopping (rackdiskd restarting) is retried every RECONNECT_NS until the deadline.
 */
static int request(struct fetch_client *fc, const char *line, size_t len, uint64_t deadline_ns,
		   bool patient)
{
	char reply[REPLY_MAX];
	bool reused;
	int fd, ret, attempts = 0;

	for (;;) {
		if (now_ns() >= deadline_ns)
			return -ETIMEDOUT;
		fd = conn_get(fc, &reused);
		if (fd < 0) {
			if (!patient || !server_absent(fd))
				return fd;
			pause_until(deadline_ns);
			continue;
		}
		ret = send_line(fd, line, len, deadline_ns);
		if (!ret)
			ret = recv_line(fd, reply, sizeof(reply), deadline_ns);
		if (!ret) {
			ret = parse_reply(reply);
			if (!(patient && ret == -ESHUTDOWN)) {
				conn_put(fc, fd);
				return ret;
			}
		}
		close(fd);
		if (!server_gone(ret))
			return ret;
		if (reused && attempts++ == 0) {
			conn_flush(fc);
			continue;
		}
		if (!patient)
			return ret;
		pause_until(deadline_ns);
	}
}

static int fetch(struct fetch_client *fc, const struct chunk_hash *h, uint32_t len,
		 const struct chunk_hash *image, uint64_t idx, uint64_t deadline_ns)
{
	char line[FETCH_PROTO_FETCH_LINE_MAX];
	uint64_t now, left_ms, margin_ms;
	bool capped;
	size_t n;
	int ret;

	STAT_INC(fc, fetches);
	for (;;) {
		now = now_ns();
		if (now >= deadline_ns) {
			ret = -ETIMEDOUT;
			break;
		}
		/* Give the server a little less time than we wait, so that its own "ERR
		 * ETIMEDOUT" arrives before our deadline and the connection stays usable. */
		left_ms = (deadline_ns - now) / 1000000ull;
		margin_ms = MIN(left_ms / 10, 250);
		left_ms = MAX(left_ms - margin_ms, 1);
		capped = left_ms > FETCH_PROTO_TIMEOUT_MAX_MS;
		left_ms = MIN(left_ms, FETCH_PROTO_TIMEOUT_MAX_MS);
		n = fetch_proto_format_fetch(line, sizeof(line), h, len, (uint32_t)left_ms, image,
					     idx);
		ret = request(fc, line, n, deadline_ns, true);
		/* A LUN's deadline (io_timeout_ms, up to LUN_IO_TIMEOUT_MAX_MS) may be longer
		 * than a FETCH may ask the server to wait: the server's ETIMEDOUT then ends
		 * only the part it was given, and the rest is asked for again. */
		if (!(ret == -ETIMEDOUT && capped))
			break;
	}
	if (ret == -ETIMEDOUT)
		STAT_INC(fc, fetch_timeouts);
	else if (ret)
		STAT_INC(fc, fetch_errors);
	return ret;
}

int fetch_client_fetch(struct fetch_client *fc, const struct chunk_hash *h, uint32_t len,
		       uint64_t deadline_ns)
{
	return fetch(fc, h, len, NULL, 0, deadline_ns);
}

int fetch_client_fetch_at(struct fetch_client *fc, const struct chunk_hash *h, uint32_t len,
			  const struct chunk_hash *image, uint64_t idx, uint64_t deadline_ns)
{
	return fetch(fc, h, len, image, idx, deadline_ns);
}

/* Whether best-effort and one-way requests are held back (the server recently failed);
 * a request held back is counted as dropped. */
static bool quiet_now(struct fetch_client *fc)
{
	uint64_t now = now_ns();
	bool quiet;

	pthread_mutex_lock(&fc->lock);
	quiet = now < fc->quiet_until_ns;
	if (quiet)
		fc->st.dropped++;
	pthread_mutex_unlock(&fc->lock);
	return quiet;
}

/* Best-effort requests: dropped while the server recently failed. */
static int best_effort(struct fetch_client *fc, const char *line, size_t len, uint64_t deadline_ns)
{
	int ret;

	if (quiet_now(fc))
		return -EAGAIN;
	ret = request(fc, line, len, deadline_ns, false);
	if (ret) {
		pthread_mutex_lock(&fc->lock);
		fc->quiet_until_ns = now_ns() + BACKOFF_NS;
		fc->st.dropped++;
		pthread_mutex_unlock(&fc->lock);
	}
	return ret;
}

int fetch_client_prefetch(struct fetch_client *fc, const struct chunk_hash *h, uint32_t len,
			  uint64_t deadline_ns)
{
	char hex[HASH_HEX_LEN + 1], line[128];
	int n;

	STAT_INC(fc, prefetches);
	hash_to_hex(h, hex);
	n = snprintf(line, sizeof(line), "PREFETCH %s %u\n", hex, len);
	return best_effort(fc, line, (size_t)n, deadline_ns);
}

int fetch_client_check(struct fetch_client *fc, const struct chunk_hash *h, uint32_t len,
		       uint64_t deadline_ns)
{
	char hex[HASH_HEX_LEN + 1], line[128];
	int n;

	hash_to_hex(h, hex);
	n = snprintf(line, sizeof(line), "CHECK %s %u\n", hex, len);
	return request(fc, line, (size_t)n, deadline_ns, false);
}

/* Reads the TOUCH replies that have arrived, without waiting. -ECONNRESET: closed. */
static int touch_drain(struct fetch_client *fc)
{
	char buf[512];
	ssize_t n, i;

	for (;;) {
		n = recv(fc->touch_fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (n == 0)
			return -ECONNRESET;
		if (n < 0)
			return (errno == EAGAIN || errno == EINTR) ? 0 : -errno;
		for (i = 0; i < n; i++)
			if (buf[i] == '\n' && fc->touch_owed)
				fc->touch_owed--;
	}
}

static void touch_close(struct fetch_client *fc)
{
	close(fc->touch_fd);
	fc->touch_fd = -1;
	fc->touch_owed = 0;
}

/* Sends one TOUCH line on the touch connection, under touch_lock. */
static int touch_send_locked(struct fetch_client *fc, const char *line, size_t len,
			     uint64_t deadline_ns)
{
	bool reused;
	int ret;

	if (fc->touch_fd >= 0 && touch_drain(fc) < 0)
		touch_close(fc);
	for (;;) {
		reused = fc->touch_fd >= 0;
		if (!reused) {
			ret = conn_open(fc);
			if (ret < 0)
				return ret;
			fc->touch_fd = ret;
		}
		if (fc->touch_owed >= TOUCH_OWED_MAX)
			return -EAGAIN;
		/* The socket buffer takes a whole line at once unless the server stopped
		 * reading, and then send_line gives up at the (short) deadline. */
		ret = send_line(fc->touch_fd, line, len, deadline_ns);
		if (!ret)
			break;
		touch_close(fc);
		/* The server may have closed the connection as idle just after the drain
		 * above looked: that is no failure, try once on a fresh one. */
		if (!reused || !server_gone(ret))
			return ret;
	}
	fc->touch_owed++;
	return 0;
}

/*
 * Sends a one-way line (TOUCH, HIT) on the touch connection: never waits for a reply and
 * never waits behind another thread. Dropped (counted) while the server recently failed,
 * another thread is sending, or the server lags.
 */
static int oneway(struct fetch_client *fc, const char *line, size_t len, uint64_t deadline_ns)
{
	int ret;

	if (quiet_now(fc))
		return -EAGAIN;
	/* Another thread is sending a line: this one is dropped rather than waited for. */
	if (pthread_mutex_trylock(&fc->touch_lock))
		ret = -EBUSY;
	else {
		ret = touch_send_locked(fc, line, len, deadline_ns);
		pthread_mutex_unlock(&fc->touch_lock);
	}
	if (ret) {
		pthread_mutex_lock(&fc->lock);
		fc->st.dropped++;
		if (ret != -EBUSY && ret != -EAGAIN)
			fc->quiet_until_ns = now_ns() + BACKOFF_NS;
		pthread_mutex_unlock(&fc->lock);
	}
	return ret;
}

int fetch_client_touch(struct fetch_client *fc, const struct chunk_hash *hs, size_t n,
		       uint64_t deadline_ns)
{
	char line[FETCH_PROTO_LINE_MAX];
	size_t i, len;

	if (n == 0)
		return 0;
	if (n > FETCH_PROTO_TOUCH_MAX)
		return -EINVAL;
	STAT_INC(fc, touches);
	memcpy(line, "TOUCH", 5);
	len = 5;
	for (i = 0; i < n; i++) {
		line[len++] = ' ';
		hash_to_hex(&hs[i], line + len);
		len += HASH_HEX_LEN;
	}
	line[len++] = '\n';
	return oneway(fc, line, len, deadline_ns);
}

int fetch_client_hit(struct fetch_client *fc, const struct chunk_hash *image, uint64_t idx,
		     const struct chunk_hash *h, uint64_t deadline_ns)
{
	char line[FETCH_PROTO_HIT_LINE_MAX];
	size_t len;

	STAT_INC(fc, hits);
	len = fetch_proto_format_hit(line, sizeof(line), image, idx, h);
	return oneway(fc, line, len, deadline_ns);
}

void fetch_client_get_stats(struct fetch_client *fc, struct fetch_client_stats *st)
{
	pthread_mutex_lock(&fc->lock);
	*st = fc->st;
	pthread_mutex_unlock(&fc->lock);
}
