/*
 * repo.c - read access to a published repository: a local directory or an HTTP(S) server.
 *
 * Both kinds reduce to one primitive, fetching a relative path into memory with an upper
 * bound on its size (repo_fetch); everything else (tags, manifests, chunks, listings) is
 * built on it, so a directory and a web server behave identically, down to the errors.
 * An HTTP repo keeps one curl easy handle, hence one keep-alive connection, per handle.
 */
#include "images/repo.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <curl/curl.h>

#include "common/util.h"
#include "images/chunkobj.h"
#include "images/repoloc.h"

#define TAG_MAX_BYTES	4096
#define INDEX_MAX_BYTES (16u * 1024 * 1024)

/*
 * Bounds of one HTTP transfer. timeout_ms is the connect timeout and the window of the
 * low-speed rule: a transfer under REPO_LOW_SPEED_BYTES per second for that long has
 * stalled. The whole transfer may also not take longer than timeout_ms plus the time an
 * object of the largest size allowed for it takes at REPO_MIN_RATE: a bound a valid
 * object always fits (a 256 MiB manifest: 17 min), not one that fails it at a fixed
 * number of seconds however steadily it arrives.
 */
#define REPO_LOW_SPEED_BYTES 16384L /* as the seed client's default */
#define REPO_MIN_RATE	     (256u * 1024)

struct repo {
	char *dir;   /* local repository, or NULL */
	char *url;   /* base URL without a trailing '/', or NULL */
	char *shown; /* url without its user:password@, for messages (repoloc_shown) */
	CURL *curl;  /* reused for every request: keeps the connection alive */
	long timeout_ms;
	char why[CURL_ERROR_SIZE + PATH_MAX + 64]; /* the last HTTP failure, in words */
};

struct membuf {
	CURL *curl;
	char *p;
	size_t len, cap, max;
	int too_big;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;

static void curl_init_once(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

int repo_open(const char *loc, struct repo **out)
{
	struct repoloc l;
	struct repo *r;
	int ret;

	ret = repoloc_parse(loc, &l, NULL, 0);
	if (ret)
		return ret;
	r = calloc(1, sizeof(*r));
	if (!r) {
		repoloc_free(&l);
		return -ENOMEM;
	}
	r->timeout_ms = 30000;
	if (l.http) {
		pthread_once(&curl_once, curl_init_once);
		r->url = l.where;
		r->shown = strdup(REPOLOC_SHOWN(l.where));
		r->curl = curl_easy_init();
		if (!r->shown || !r->curl) {
			repo_close(r);
			return -ENOMEM;
		}
	} else {
		r->dir = l.where;
	}
	*out = r;
	return 0;
}

void repo_close(struct repo *r)
{
	if (!r)
		return;
	if (r->curl)
		curl_easy_cleanup(r->curl);
	free(r->dir);
	free(r->url);
	free(r->shown);
	free(r);
}

void repo_set_timeout_ms(struct repo *r, long ms)
{
	r->timeout_ms = ms;
}

const char *repo_dir(const struct repo *r)
{
	return r->dir;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
	struct membuf *b = arg;
	size_t n = size * nmemb;
	long status = 0;

	/* An error page is not the object: read past it, so that its size (a big 404 page)
	 * cannot turn "not there" into "too big"; http_fetch maps the status. */
	curl_easy_getinfo(b->curl, CURLINFO_RESPONSE_CODE, &status);
	if (status < 200 || status > 299)
		return n;
	if (!b->len) {
		/* A Content-Length over the bound fails at once, not after max bytes. Not
		 * CURLOPT_MAXFILESIZE: it also applies to a redirect's body, which is never
		 * the object (a 301 with a big page would not be followed). */
		curl_off_t announced = -1;

		curl_easy_getinfo(b->curl, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &announced);
		if (announced > (curl_off_t)b->max) {
			b->too_big = 1;
			return 0;
		}
	}
	if (b->len + n > b->max) {
		b->too_big = 1;
		return 0; /* makes curl fail the transfer with CURLE_WRITE_ERROR */
	}
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 64 * 1024;
		char *p;

		while (cap < b->len + n + 1)
			cap *= 2;
		p = realloc(b->p, cap);
		if (!p)
			return 0;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, data, n);
	b->len += n;
	b->p[b->len] = '\0';
	return n;
}

int repo_curl_errno(int curl_code)
{
	switch ((CURLcode)curl_code) {
	case CURLE_OK:
		return 0;
	case CURLE_OPERATION_TIMEDOUT:
		return -ETIMEDOUT;
	case CURLE_COULDNT_CONNECT:
		return -ECONNREFUSED;
	case CURLE_ABORTED_BY_CALLBACK:
		return -ECANCELED;
	case CURLE_OUT_OF_MEMORY:
		return -ENOMEM;
	case CURLE_FILESIZE_EXCEEDED:
		return -EFBIG;
	case CURLE_PEER_FAILED_VERIFICATION:
	case CURLE_SSL_CONNECT_ERROR:
	case CURLE_SSL_CACERT_BADFILE:
	case CURLE_SSL_CERTPROBLEM:
		return -EKEYREJECTED;
	default:
		return -EIO;
	}
}

int repo_http_status_errno(long status)
{
	if (status == 200)
		return 0;
	if (status == 404 || status == 410)
		return -ENOENT;
	if (status == 401 || status == 403)
		return -EACCES;
	return -EIO;
}

/* The longest a transfer of at most max bytes may take in all (see REPO_MIN_RATE). */
static long total_ms(const struct repo *r, size_t max)
{
	uint64_t ms = (uint64_t)r->timeout_ms + (uint64_t)max / (REPO_MIN_RATE / 1000);

	return (long)MIN(ms, (uint64_t)LONG_MAX);
}

/* Sets the options of one GET of url into b; the same for every request. */
static void http_setup(struct repo *r, const char *url, struct membuf *b, char *errbuf)
{
	curl_easy_reset(r->curl);
	curl_easy_setopt(r->curl, CURLOPT_URL, url);
	curl_easy_setopt(r->curl, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(r->curl, CURLOPT_WRITEDATA, b);
	curl_easy_setopt(r->curl, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(r->curl, CURLOPT_CONNECTTIMEOUT_MS, r->timeout_ms);
	curl_easy_setopt(r->curl, CURLOPT_LOW_SPEED_LIMIT, REPO_LOW_SPEED_BYTES);
	curl_easy_setopt(r->curl, CURLOPT_LOW_SPEED_TIME, MAX(1L, (r->timeout_ms + 999) / 1000));
	curl_easy_setopt(r->curl, CURLOPT_TIMEOUT_MS, total_ms(r, b->max));
	curl_easy_setopt(r->curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(r->curl, CURLOPT_TCP_KEEPALIVE, 1L);
	/* As the seed client (seed.c): a repository moved behind a redirect is followed,
	 * a few hops, never to another protocol than http(s). */
	curl_easy_setopt(r->curl, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(r->curl, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(r->curl, CURLOPT_FOLLOWLOCATION, 1L);
	curl_easy_setopt(r->curl, CURLOPT_MAXREDIRS, 3L);
}

static int http_fetch(struct repo *r, const char *rel, size_t max, char **out, size_t *len)
{
	struct membuf b = {.curl = r->curl, .max = max};
	char url[PATH_MAX + 256], errbuf[CURL_ERROR_SIZE] = "";
	long status = 0;
	CURLcode rc;
	int ret;

	if (snprintf(url, sizeof(url), "%s/%s", r->url, rel) >= (int)sizeof(url))
		return -ENAMETOOLONG;
	http_setup(r, url, &b, errbuf);
	rc = curl_easy_perform(r->curl);
	curl_easy_getinfo(r->curl, CURLINFO_RESPONSE_CODE, &status);
	/* Only the object can be too big (on_body ignores an error page or a redirect's). */
	if (rc == CURLE_WRITE_ERROR && b.too_big)
		rc = CURLE_FILESIZE_EXCEEDED;
	/* Messages name the URL without its credentials: they reach logs and API replies. */
	if (rc != CURLE_OK) {
		ret = repo_curl_errno(rc);
		if (ret == -EFBIG)
			snprintf(r->why, sizeof(r->why),
				 "GET %s/%s: larger than the %zu bytes allowed", r->shown, rel,
				 max);
		else
			snprintf(r->why, sizeof(r->why), "GET %s/%s: %s", r->shown, rel,
				 errbuf[0] ? errbuf : curl_easy_strerror(rc));
		goto out;
	}
	ret = repo_http_status_errno(status);
	if (ret) {
		snprintf(r->why, sizeof(r->why), "GET %s/%s: HTTP %ld", r->shown, rel, status);
		goto out;
	}
	if (!b.p) { /* an empty body */
		b.p = calloc(1, 1);
		if (!b.p) {
			ret = -ENOMEM;
			goto out;
		}
	}
	*out = b.p;
	*len = b.len;
	b.p = NULL;
	ret = 0;
out:
	free(b.p);
	return ret;
}

const char *repo_strerror(const struct repo *r, int err)
{
	if (r && r->url && r->why[0] && err != -ENOENT && err != -ENOMEM)
		return r->why;
	return strerror(-err);
}

/* Fetches <repo>/<rel> (at most max bytes) into a malloc'd NUL-terminated buffer. */
int repo_fetch(struct repo *r, const char *rel, size_t max, char **out, size_t *len)
{
	char path[PATH_MAX];

	if (r->url) {
		r->why[0] = '\0';
		return http_fetch(r, rel, max, out, len);
	}
	if (snprintf(path, sizeof(path), "%s/%s", r->dir, rel) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	return read_file(path, max, out, len);
}

bool repo_tag_name_valid(const char *name)
{
	return name_is_valid(name) && strcmp(name, REPO_TAGS_INDEX) != 0;
}

int repo_resolve_tag(struct repo *r, const char *name, struct chunk_hash *id)
{
	char rel[PATH_MAX], *buf = NULL;
	size_t len, n;
	int ret;

	if (!repo_tag_name_valid(name))
		return -EINVAL;
	snprintf(rel, sizeof(rel), "tags/%s", name);
	ret = repo_fetch(r, rel, TAG_MAX_BYTES, &buf, &len);
	if (ret)
		return ret == -EFBIG ? -EBADMSG : ret;
	n = len;
	while (n && isspace((unsigned char)buf[n - 1]))
		n--;
	ret = hash_from_hex(buf, n, id) ? -EBADMSG : 0;
	free(buf);
	return ret;
}

int repo_get_manifest(struct repo *r, const struct chunk_hash *id, struct manifest **out, char *err,
		      size_t errlen)
{
	char hex[HASH_HEX_LEN + 1], rel[128], *buf = NULL;
	struct manifest *m = NULL;
	size_t len;
	int ret;

	hash_to_hex(id, hex);
	snprintf(rel, sizeof(rel), "manifests/%s.json", hex);
	ret = repo_fetch(r, rel, MANIFEST_MAX_BYTES, &buf, &len);
	if (ret) {
		if (err)
			snprintf(err, errlen, "manifest %s: %s", hex,
				 ret == -EFBIG ? "over the size limit" : repo_strerror(r, ret));
		return ret;
	}
	ret = manifest_parse(buf, len, &m, err, errlen);
	if (ret)
		goto out;
	if (!hash_equal(&m->id, id)) {
		/* The name of a manifest is its hash: anything else is damage or substitution. */
		if (err)
			snprintf(err, errlen, "manifest %s: contents do not match its id", hex);
		ret = -EILSEQ;
		goto out;
	}
	*out = m;
	m = NULL;
out:
	manifest_free(m);
	free(buf);
	return ret;
}

bool repo_name_is_id(const char *s)
{
	struct chunk_hash h;

	return strlen(s) == HASH_HEX_LEN && hash_from_hex(s, HASH_HEX_LEN, &h) == 0;
}

int repo_load_image(struct repo *r, const char *name_or_id, struct manifest **out, char *err,
		    size_t errlen)
{
	struct chunk_hash id;
	int ret;

	if (!repo_tag_name_valid(name_or_id)) {
		if (err)
			snprintf(err, errlen,
				 "invalid image name (use letters, digits, '.', '_', "
				 "'-'; no '/', '..', spaces or control characters; "
				 "not \"index\")");
		return -EINVAL;
	}
	ret = repo_resolve_tag(r, name_or_id, &id);
	if (ret == -ENOENT && repo_name_is_id(name_or_id))
		ret = hash_from_hex(name_or_id, HASH_HEX_LEN, &id);
	if (ret) {
		if (err)
			snprintf(err, errlen, "tag %s: %s", name_or_id,
				 ret == -ENOENT	   ? "no such image"
				 : ret == -EBADMSG ? "tag file does not hold an image id"
						   : repo_strerror(r, ret));
		return ret;
	}
	return repo_get_manifest(r, &id, out, err, errlen);
}

int repo_get_chunk_object(struct repo *r, const struct chunk_hash *h, void **obj, size_t *len)
{
	char rel[128], *buf = NULL;
	int ret;

	chunkobj_path(h, rel, sizeof(rel));
	ret = repo_fetch(r, rel, chunkobj_bound(CHUNK_SIZE_MAX), &buf, len);
	if (ret)
		return ret == -EFBIG ? -EBADMSG : ret;
	*obj = buf;
	return 0;
}

int repo_get_chunk(struct repo *r, const struct chunk_hash *h, void *out, size_t len)
{
	void *obj = NULL;
	size_t olen;
	int ret;

	ret = repo_get_chunk_object(r, h, &obj, &olen);
	if (ret)
		return ret;
	ret = chunkobj_decode(obj, olen, out, len, h);
	free(obj);
	return ret;
}

/* Tag listing ------------------------------------------------------------------------- */

struct names {
	char **v;
	size_t n, cap;
};

static int names_add(struct names *ns, const char *s, size_t len)
{
	char *copy;

	if (ns->n == ns->cap) {
		size_t cap = ns->cap ? ns->cap * 2 : 32;
		char **v = realloc(ns->v, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		ns->v = v;
		ns->cap = cap;
	}
	copy = strndup(s, len);
	if (!copy)
		return -ENOMEM;
	/* Anything that is not a valid tag name (index file, temp files, "../") is skipped. */
	if (!repo_tag_name_valid(copy)) {
		free(copy);
		return 0;
	}
	ns->v[ns->n++] = copy;
	return 0;
}

static void names_free(struct names *ns)
{
	for (size_t i = 0; i < ns->n; i++)
		free(ns->v[i]);
	free(ns->v);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int list_dir(struct repo *r, struct names *ns)
{
	char path[PATH_MAX];
	struct dirent *de;
	DIR *d;
	int ret = 0;

	snprintf(path, sizeof(path), "%s/tags", r->dir);
	d = opendir(path);
	if (!d && errno == ENOENT) {
		struct stat st;

		/* an empty repository has no tags/ yet; a mistyped path is no repository */
		return stat(r->dir, &st) < 0 ? -errno : S_ISDIR(st.st_mode) ? 0 : -ENOTDIR;
	}
	if (!d)
		return -errno;
	while (!ret && (de = readdir(d)) != NULL)
		if (de->d_type == DT_REG || de->d_type == DT_UNKNOWN)
			ret = names_add(ns, de->d_name, strlen(de->d_name));
	closedir(d);
	return ret;
}

/* tags/index: one name per line, written by publish after each tag. */
static int parse_index(const char *buf, struct names *ns)
{
	int ret = 0;

	while (!ret && *buf) {
		size_t n = strcspn(buf, "\r\n");

		if (n)
			ret = names_add(ns, buf, n);
		buf += n;
		buf += strspn(buf, "\r\n");
	}
	return ret;
}

/* Fallback for a server without tags/index: the links of an autoindex page. */
static int parse_autoindex(const char *buf, struct names *ns)
{
	const char *p = buf;
	int ret = 0;

	while (!ret && (p = strstr(p, "href=\"")) != NULL) {
		p += 6;
		ret = names_add(ns, p, strcspn(p, "\""));
	}
	return ret;
}

int repo_list_tags(struct repo *r, int (*fn)(void *arg, const char *name), void *arg)
{
	struct names ns = {0};
	char *buf = NULL;
	size_t len;
	int ret;

	if (r->dir) {
		ret = list_dir(r, &ns);
	} else {
		ret = repo_fetch(r, "tags/" REPO_TAGS_INDEX, INDEX_MAX_BYTES, &buf, &len);
		if (!ret) {
			ret = parse_index(buf, &ns);
		} else if (ret == -ENOENT) {
			ret = repo_fetch(r, "tags/", INDEX_MAX_BYTES, &buf, &len);
			if (ret == -ENOENT)
				ret = 0; /* no tags at all */
			else if (!ret)
				ret = parse_autoindex(buf, &ns);
		}
	}
	if (ret)
		goto out;
	if (ns.n) /* ns.v is NULL while empty, and qsort's base must not be */
		qsort(ns.v, ns.n, sizeof(*ns.v), cmp_str);
	for (size_t i = 0; i < ns.n && !ret; i++)
		if (i == 0 || strcmp(ns.v[i], ns.v[i - 1]))
			ret = fn(arg, ns.v[i]);
out:
	free(buf);
	names_free(&ns);
	return ret;
}
