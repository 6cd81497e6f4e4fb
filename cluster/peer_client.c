/*
 * peer_client.c - the libcurl peer client (see peer_client.h).
 *
 * A request's deadline is the earlier of the caller's deadline and request_timeout_ms;
 * the body is received straight into a buffer of the expected length and the transfer
 * is aborted as soon as the peer sends more than that.
 */
#include "cluster/peer_client.h"

#include <curl/curl.h>
#include <errno.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"

struct pc_handle {
	CURL *curl;
	EVP_MD_CTX *md;	/* SHA-256 computed as the body arrives, while it is in cache */
};

struct peer_client {
	struct chunkstore *store;
	struct curl_slist *headers;   /* Authorization; read-only once built */
	uint32_t connect_ms, request_ms;
	unsigned pool_size;
	pthread_mutex_t lock;
	struct pc_handle **idle;      /* pool of idle handles */
	unsigned nidle;
	struct peer_client_stats st;  /* __atomic updates */
	atomic_bool cancelled;        /* peer_client_cancel(): every request ends */
};

struct sink {
	uint8_t *buf;
	size_t len, pos;
	bool overflow;
	EVP_MD_CTX *md;
};

#define ST_ADD(pc, field, n) __atomic_fetch_add(&(pc)->st.field, (n), __ATOMIC_RELAXED)

static size_t on_data(char *p, size_t size, size_t n, void *arg)
{
	struct sink *s = arg;
	size_t bytes = size * n;

	if (bytes > s->len - s->pos) {
		s->overflow = true;
		return 0; /* aborts the transfer */
	}
	memcpy(s->buf + s->pos, p, bytes);
	s->pos += bytes;
	EVP_DigestUpdate(s->md, p, bytes);
	return bytes;
}

/*
 * What ends a transfer under way: peer_client_cancel(), or the caller's abort flag once
 * the peer has sent nothing for ABORT_STALL_NS. A transfer that is moving finishes: a
 * reader joining a readahead fill wants that chunk, and cutting it off would fetch it again.
 */
#define ABORT_STALL_NS (200ULL * 1000000ULL)

struct stop {
	struct peer_client *pc;
	const atomic_bool *abort; /* NULL: none */
	curl_off_t seen;          /* bytes received at moved_ns */
	uint64_t moved_ns;        /* when the transfer last moved (or started) */
};

static bool stop_now(const struct stop *st)
{
	return atomic_load(&st->pc->cancelled) || (st->abort && atomic_load(st->abort));
}

static int on_progress(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
		       curl_off_t ulnow)
{
	struct stop *st = arg;
	uint64_t now = now_ns();

	if (atomic_load(&st->pc->cancelled))
		return 1;
	if (dlnow != st->seen) {
		st->seen = dlnow;
		st->moved_ns = now;
	}
	return st->abort && atomic_load(st->abort) && now - st->moved_ns >= ABORT_STALL_NS;
}

/* Why stop_now() was true; cancel (shutdown) wins over an abort. */
static int stop_reason(const struct stop *st)
{
	return atomic_load(&st->pc->cancelled) ? -ECANCELED : -EINTR;
}

static struct pc_handle *handle_get(struct peer_client *pc)
{
	struct pc_handle *hd = NULL;

	pthread_mutex_lock(&pc->lock);
	if (pc->nidle)
		hd = pc->idle[--pc->nidle];
	pthread_mutex_unlock(&pc->lock);
	if (hd)
		return hd;
	hd = calloc(1, sizeof(*hd));
	if (!hd)
		return NULL;
	hd->curl = curl_easy_init();
	hd->md = EVP_MD_CTX_new();
	if (!hd->curl || !hd->md) {
		curl_easy_cleanup(hd->curl);
		EVP_MD_CTX_free(hd->md);
		free(hd);
		return NULL;
	}
	return hd;
}

static void handle_free(struct pc_handle *hd)
{
	curl_easy_cleanup(hd->curl);
	EVP_MD_CTX_free(hd->md);
	free(hd);
}

static void handle_put(struct peer_client *pc, struct pc_handle *hd)
{
	pthread_mutex_lock(&pc->lock);
	if (pc->nidle < pc->pool_size) {
		pc->idle[pc->nidle++] = hd;
		hd = NULL;
	}
	pthread_mutex_unlock(&pc->lock);
	if (hd)
		handle_free(hd);
}

static int map_curl_error(CURLcode cc)
{
	switch (cc) {
	case CURLE_OPERATION_TIMEDOUT:
		return -ETIMEDOUT;
	case CURLE_COULDNT_CONNECT:
		return -ECONNREFUSED;
	case CURLE_COULDNT_RESOLVE_HOST:
		return -EHOSTUNREACH;
	default:
		return -EIO;
	}
}

static int request(struct peer_client *pc, struct pc_handle *hd, const char *addr,
		   const struct chunk_hash *h, void *buf, uint32_t len, uint64_t deadline_ns,
		   const atomic_bool *abort)
{
	struct stop stop = {.pc = pc, .abort = abort};
	char url[512], hex[HASH_HEX_LEN + 1];
	struct sink s = {.buf = buf, .len = len, .md = hd->md};
	struct chunk_hash got;
	unsigned mdlen = 0;
	uint64_t now = now_ns(), left_ms;
	long status = 0, connects = 0;
	CURL *c = hd->curl;
	CURLcode cc;
	int rc;

	if (stop_now(&stop))
		return stop_reason(&stop);
	stop.moved_ns = now;
	if (now >= deadline_ns)
		return -ETIMEDOUT;
	left_ms = MIN((deadline_ns - now) / 1000000ULL, (uint64_t)pc->request_ms);
	if (left_ms == 0)
		left_ms = 1;
	hash_to_hex(h, hex);
	if (snprintf(url, sizeof(url), "http://%s/v1/chunks/%s", addr, hex) >= (int)sizeof(url))
		return -ENAMETOOLONG;
	if (!EVP_DigestInit_ex(hd->md, EVP_sha256(), NULL))
		return -ENOMEM;
	ST_ADD(pc, requests, 1);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, pc->headers);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &s);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, (long)left_ms);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)MIN(left_ms, pc->connect_ms));
	curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 64L * 1024);
	curl_easy_setopt(c, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http");
	/* Straight to the peer, whatever http_proxy/all_proxy say: the request carries the
	 * cluster token, and a proxy meant for the seed has no business seeing it. */
	curl_easy_setopt(c, CURLOPT_PROXY, "");
	curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
	curl_easy_setopt(c, CURLOPT_XFERINFODATA, &stop);
	cc = curl_easy_perform(c);
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	if (curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &connects) == CURLE_OK)
		ST_ADD(pc, connects, (uint64_t)connects);
	if (cc == CURLE_ABORTED_BY_CALLBACK)
		return stop_reason(&stop);
	if (cc != CURLE_OK && !(cc == CURLE_WRITE_ERROR && s.overflow)) {
		rc = map_curl_error(cc);
		ST_ADD(pc, errors, rc != -ETIMEDOUT);
		ST_ADD(pc, timeouts, rc == -ETIMEDOUT);
		return rc;
	}
	if (status == 404) {
		ST_ADD(pc, not_found, 1);
		return -ENOENT;
	}
	if (status != 200) {
		ST_ADD(pc, errors, 1);
		return status == 401 || status == 403 ? -EACCES : -EIO;
	}
	if (!s.overflow && s.pos == len && !EVP_DigestFinal_ex(hd->md, got.b, &mdlen))
		mdlen = 0;
	if (s.overflow || s.pos != len || mdlen != HASH_LEN ||
	    CRYPTO_memcmp(got.b, h->b, HASH_LEN) != 0) {
		char hx[HASH_HEX_LEN + 1];

		hash_to_hex(h, hx);
		log_warn("peer client: %s sent wrong data for chunk %s (%zu bytes%s)", addr, hx,
			 s.pos, s.overflow ? ", too many" : "");
		ST_ADD(pc, bad_data, 1);
		return -EBADMSG;
	}
	ST_ADD(pc, ok, 1);
	ST_ADD(pc, bytes, len);
	return 0;
}

int peer_client_get_abortable(struct peer_client *pc, const char *addr,
			      const struct chunk_hash *h, void *buf, uint32_t len,
			      uint64_t deadline_ns, const atomic_bool *abort)
{
	struct pc_handle *hd = handle_get(pc);
	int rc;

	if (!hd)
		return -ENOMEM;
	rc = request(pc, hd, addr, h, buf, len, deadline_ns, abort);
	handle_put(pc, hd);
	return rc;
}

int peer_client_get(struct peer_client *pc, const char *addr, const struct chunk_hash *h,
		    void *buf, uint32_t len, uint64_t deadline_ns)
{
	return peer_client_get_abortable(pc, addr, h, buf, len, deadline_ns, NULL);
}

int peer_client_fetch(struct peer_client *pc, const char *addr, const struct chunk_hash *h,
		      void *buf, uint32_t len, uint64_t deadline_ns)
{
	int rc;

	if (!pc->store)
		return -EINVAL;
	rc = peer_client_get(pc, addr, h, buf, len, deadline_ns);
	if (!rc)
		rc = peer_client_keep(pc, h, buf, len);
	return rc;
}

int peer_client_keep(struct peer_client *pc, const struct chunk_hash *h, const void *buf,
		     uint32_t len)
{
	return pc->store ? chunkstore_insert(pc->store, h, buf, len) : -EINVAL;
}

int peer_client_create(const struct peer_client_opts *o, struct peer_client **out)
{
	struct peer_client *pc;
	char auth[600];
	int rc = -EINVAL;

	if (!o->token || !*o->token || strlen(o->token) > 512 || strpbrk(o->token, "\r\n"))
		return -EINVAL;
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return -EIO;
	pc = calloc(1, sizeof(*pc));
	if (!pc)
		return -ENOMEM;
	pthread_mutex_init(&pc->lock, NULL);
	pc->store = o->store;
	pc->connect_ms = o->connect_timeout_ms ? o->connect_timeout_ms : 500;
	pc->request_ms = o->request_timeout_ms ? o->request_timeout_ms : 10000;
	pc->pool_size = o->pool_size ? o->pool_size : PEER_CLIENT_POOL;
	rc = -ENOMEM;
	pc->idle = calloc(pc->pool_size, sizeof(*pc->idle));
	snprintf(auth, sizeof(auth), "Authorization: Bearer %s", o->token);
	pc->headers = curl_slist_append(NULL, auth);
	if (!pc->idle || !pc->headers)
		goto fail;
	*out = pc;
	return 0;
fail:
	peer_client_destroy(pc);
	return rc;
}

void peer_client_cancel(struct peer_client *pc)
{
	atomic_store(&pc->cancelled, true);
}

void peer_client_destroy(struct peer_client *pc)
{
	unsigned i;

	if (!pc)
		return;
	for (i = 0; i < pc->nidle; i++)
		handle_free(pc->idle[i]);
	free(pc->idle);
	curl_slist_free_all(pc->headers);
	pthread_mutex_destroy(&pc->lock);
	free(pc);
}

void peer_client_get_stats(struct peer_client *pc, struct peer_client_stats *st)
{
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	*st = pc->st;
}
