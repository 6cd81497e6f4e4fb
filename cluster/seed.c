/*
 * seed.c - the seed repository client (see seed.h).
 *
 * HTTP(S): a pool of libcurl easy handles. A handle keeps its connection open after a
 * transfer (HTTP/1.1 keep-alive), so returning it to the pool and taking it again for
 * the next chunk skips the TCP and TLS handshakes; the pool grows to the number of
 * concurrent callers (the fetcher's workers). DNS answers and TLS sessions are shared
 * between the handles through a curl share object.
 *
 * Every object is decompressed and hash-checked by chunkobj_decode before the caller
 * sees a byte, and the download is capped at the largest valid encoding of the chunk,
 * so a hostile or broken seed can make a fetch fail but can neither hand out wrong data
 * nor make us buffer an unbounded body.
 */
#include "cluster/seed.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/util.h"
#include "images/chunkobj.h"
#include "images/repo.h"
#include "images/repoloc.h"

#define SEED_POOL_MAX 64 /* idle handles kept; more are closed when returned */

struct seed {
	char *url;   /* as configured */
	char *shown; /* url without its user:password@ (repoloc_shown): for log lines */
	char *base;  /* HTTP: url without trailing '/'; NULL for a directory */
	char *dir;   /* directory repository; NULL for HTTP */
	char *ca_file;
	struct seed_opts o;
	CURLSH *share;
	pthread_mutex_t share_locks[CURL_LOCK_DATA_LAST];
	pthread_mutex_t lock; /* guards pool, npool, stats */
	CURL *pool[SEED_POOL_MAX];
	unsigned npool;
	struct seed_stats stats;
	atomic_bool cancelled;
};

/* One transfer's receive state. */
struct seed_rx {
	struct seed *s;
	char *buf;       /* max bytes, the caller's hugebuf */
	size_t len, max;
	bool too_big;
};

static pthread_once_t seed_curl_once = PTHREAD_ONCE_INIT;
static CURLcode seed_curl_init_rc;

static void seed_curl_init(void)
{
	seed_curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void seed_share_lock(CURL *h, curl_lock_data data, curl_lock_access acc, void *arg)
{
	struct seed *s = arg;

	pthread_mutex_lock(&s->share_locks[data]);
}

static void seed_share_unlock(CURL *h, curl_lock_data data, void *arg)
{
	struct seed *s = arg;

	pthread_mutex_unlock(&s->share_locks[data]);
}

/* Splits loc into the HTTP base or the directory (repoloc.h: the CLI's reading too). */
static int seed_parse_url(struct seed *s, const char *loc)
{
	struct repoloc l;
	int ret;

	ret = repoloc_parse(loc, &l, NULL, 0);
	if (ret)
		return ret;
	if (l.http)
		s->base = l.where;
	else
		s->dir = l.where;
	return 0;
}

int seed_open(const struct seed_opts *o, struct seed **out)
{
	struct seed *s;
	int ret, i;

	if (!o || !o->url || !o->url[0])
		return -EINVAL;
	pthread_once(&seed_curl_once, seed_curl_init);
	if (seed_curl_init_rc != CURLE_OK)
		return -EIO;
	s = calloc(1, sizeof(*s));
	if (!s)
		return -ENOMEM;
	pthread_mutex_init(&s->lock, NULL);
	for (i = 0; i < CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_init(&s->share_locks[i], NULL);
	s->o = *o;
	if (!s->o.request_timeout_ms)
		s->o.request_timeout_ms = 10000;
	if (!s->o.connect_timeout_ms)
		s->o.connect_timeout_ms = 3000;
	if (!s->o.low_speed_bytes)
		s->o.low_speed_bytes = 16384;
	if (!s->o.low_speed_secs)
		s->o.low_speed_secs = 5;
	s->url = strdup(o->url);
	s->shown = strdup(REPOLOC_SHOWN(o->url));
	if (!s->url || !s->shown) {
		ret = -ENOMEM;
		goto fail;
	}
	s->o.url = s->url;
	if (o->ca_file) {
		s->ca_file = strdup(o->ca_file);
		if (!s->ca_file) {
			ret = -ENOMEM;
			goto fail;
		}
	}
	s->o.ca_file = s->ca_file;
	ret = seed_parse_url(s, o->url);
	if (ret)
		goto fail;
	if (s->base) {
		s->share = curl_share_init();
		if (!s->share) {
			ret = -ENOMEM;
			goto fail;
		}
		curl_share_setopt(s->share, CURLSHOPT_LOCKFUNC, seed_share_lock);
		curl_share_setopt(s->share, CURLSHOPT_UNLOCKFUNC, seed_share_unlock);
		curl_share_setopt(s->share, CURLSHOPT_USERDATA, s);
		curl_share_setopt(s->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS);
		curl_share_setopt(s->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION);
	}
	*out = s;
	return 0;
fail:
	seed_close(s);
	return ret;
}

void seed_close(struct seed *s)
{
	if (!s)
		return;
	for (unsigned i = 0; i < s->npool; i++)
		curl_easy_cleanup(s->pool[i]);
	if (s->share)
		curl_share_cleanup(s->share);
	for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
		pthread_mutex_destroy(&s->share_locks[i]);
	pthread_mutex_destroy(&s->lock);
	free(s->url);
	free(s->shown);
	free(s->base);
	free(s->dir);
	free(s->ca_file);
	free(s);
}

const char *seed_url(const struct seed *s)
{
	return s->shown;
}

void seed_cancel(struct seed *s)
{
	atomic_store(&s->cancelled, true);
}

void seed_get_stats(struct seed *s, struct seed_stats *st)
{
	pthread_mutex_lock(&s->lock);
	*st = s->stats;
	pthread_mutex_unlock(&s->lock);
}

static size_t seed_write_cb(char *data, size_t size, size_t nmemb, void *arg)
{
	struct seed_rx *rx = arg;
	size_t n = size * nmemb;

	if (n > rx->max - rx->len) {
		rx->too_big = true;
		return 0; /* aborts the transfer with CURLE_WRITE_ERROR */
	}
	memcpy(rx->buf + rx->len, data, n);
	rx->len += n;
	return n;
}

static int seed_progress_cb(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
			    curl_off_t ulnow)
{
	struct seed_rx *rx = arg;

	return atomic_load(&rx->s->cancelled) ? 1 : 0;
}

/*
 * Options every transfer shares; see the README's "Seed client" notes for the reasons.
 * Keep-alive is libcurl's default for HTTP/1.1; TCP keep-alive probes find a dead idle
 * connection (seed rebooted, NAT entry expired) before a fetch waits on it.
 */
static CURL *seed_handle_new(struct seed *s)
{
	CURL *c = curl_easy_init();

	if (!c)
		return NULL;
	curl_easy_setopt(c, CURLOPT_SHARE, s->share);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(c, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(c, CURLOPT_TCP_KEEPIDLE, 30L);
	curl_easy_setopt(c, CURLOPT_TCP_KEEPINTVL, 10L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
	curl_easy_setopt(c, CURLOPT_MAXREDIRS, 3L);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "rackdisk-seed/1");
	curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 256L * 1024);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, (long)s->o.low_speed_bytes);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, (long)s->o.low_speed_secs);
	curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, seed_progress_cb);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, seed_write_cb);
	if (s->ca_file)
		curl_easy_setopt(c, CURLOPT_CAINFO, s->ca_file);
	return c;
}

static CURL *seed_handle_get(struct seed *s)
{
	CURL *c = NULL;

	pthread_mutex_lock(&s->lock);
	if (s->npool > 0)
		c = s->pool[--s->npool];
	pthread_mutex_unlock(&s->lock);
	return c ? c : seed_handle_new(s);
}

static void seed_handle_put(struct seed *s, CURL *c)
{
	pthread_mutex_lock(&s->lock);
	if (s->npool < SEED_POOL_MAX) {
		s->pool[s->npool++] = c;
		c = NULL;
	}
	pthread_mutex_unlock(&s->lock);
	if (c)
		curl_easy_cleanup(c);
}

/* Remaining time before deadline_ns capped by cap_ms, in ms (>= 1), or 0 when past. */
static long seed_budget_ms(uint64_t deadline_ns, uint64_t cap_ms)
{
	uint64_t now, left_ms;

	if (!deadline_ns)
		return (long)cap_ms;
	now = now_ns();
	if (now >= deadline_ns)
		return 0;
	left_ms = (deadline_ns - now) / 1000000;
	return (long)MAX(1, MIN(left_ms, cap_ms));
}

/* GETs the object at rel into rx. */
static int seed_http_get(struct seed *s, const char *rel, struct seed_rx *rx, uint64_t deadline_ns)
{
	char url[4096];
	long timeout_ms, status = 0, nconn = 0;
	CURLcode rc;
	CURL *c;
	int ret;

	timeout_ms = seed_budget_ms(deadline_ns, s->o.request_timeout_ms);
	if (timeout_ms == 0)
		return -ETIMEDOUT;
	if ((size_t)snprintf(url, sizeof(url), "%s/%s", s->base, rel) >= sizeof(url))
		return -ENAMETOOLONG;
	c = seed_handle_get(s);
	if (!c)
		return -ENOMEM;
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, timeout_ms);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS,
			 (long)MIN((uint64_t)timeout_ms, s->o.connect_timeout_ms));
	curl_easy_setopt(c, CURLOPT_WRITEDATA, rx);
	curl_easy_setopt(c, CURLOPT_XFERINFODATA, rx);
	rc = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &nconn);
	if (rc == CURLE_OK)
		ret = repo_http_status_errno(status);
	else if (rc == CURLE_WRITE_ERROR && rx->too_big)
		ret = status == 200 ? -EFBIG : repo_http_status_errno(status);
	else
		ret = repo_curl_errno(rc);
	if (ret == 0 && status != 200)
		ret = -EIO;
	pthread_mutex_lock(&s->lock);
	s->stats.requests++;
	s->stats.connects += (uint64_t)MAX(nconn, 0);
	s->stats.bytes_received += rx->len;
	pthread_mutex_unlock(&s->lock);
	seed_handle_put(s, c);
	return ret;
}

/* Reads the file at path into rx (at most rx->max bytes, else -EFBIG). */
static int read_object(const char *path, struct seed_rx *rx)
{
	struct stat st;
	int fd, ret;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0)
		ret = -errno;
	else if ((uint64_t)st.st_size > rx->max)
		ret = -EFBIG;
	else
		ret = pread_full(fd, rx->buf, (size_t)st.st_size, 0);
	if (ret == 0)
		rx->len = (size_t)st.st_size;
	close(fd);
	return ret;
}

static int seed_file_get(struct seed *s, const char *rel, struct seed_rx *rx)
{
	char path[PATH_MAX];
	int ret;

	if ((size_t)snprintf(path, sizeof(path), "%s/%s", s->dir, rel) >= sizeof(path))
		return -ENAMETOOLONG;
	if (atomic_load(&s->cancelled))
		return -ECANCELED;
	ret = read_object(path, rx);
	if (ret != 0 && ret != -ENOENT && ret != -EFBIG)
		ret = -EIO;
	pthread_mutex_lock(&s->lock);
	s->stats.requests++;
	s->stats.bytes_received += rx->len;
	pthread_mutex_unlock(&s->lock);
	return ret;
}

int seed_get_chunk(struct seed *s, const struct chunk_hash *h, void *out, size_t len,
		   struct hugebuf *rxbuf, uint64_t deadline_ns)
{
	struct seed_rx rx = {.s = s};
	char rel[128];
	int ret;

	if (len == 0)
		return -EINVAL;
	if (atomic_load(&s->cancelled))
		return -ECANCELED;
	/* Room for one byte more than the bound, so an oversized object is seen as such. */
	rx.max = chunkobj_bound(len) + 1;
	ret = hugebuf_reserve(rxbuf, rx.max);
	if (ret)
		return ret;
	rx.buf = rxbuf->p;
	chunkobj_path(h, rel, sizeof(rel));
	if (s->base)
		ret = seed_http_get(s, rel, &rx, deadline_ns);
	else
		ret = seed_file_get(s, rel, &rx);
	if (ret == 0 && rx.len >= rx.max)
		ret = -EFBIG;
	if (ret == 0)
		ret = chunkobj_decode(rx.buf, rx.len, out, len, h);
	return ret;
}
