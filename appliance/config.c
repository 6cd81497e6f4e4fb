/*
 * config.c - see config.h. A table of keys, each with its parser; inih reads the file
 * through a line-counting reader so every message can name the line it is about.
 */
#include "appliance/config.h"

#include <ctype.h>
#include <errno.h>
#include <ini.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>

#include "cluster/directory.h"
#include "common/util.h"
#include "images/manifest.h"
#include "images/repoloc.h"

enum key_type {
	KT_NAME,   /* name_is_valid */
	KT_PATH,   /* absolute path */
	KT_STR,    /* free text, non-empty unless allow_empty */
	KT_SIZE,   /* parse_size */
	KT_CAPACITY, /* parse_size: 0 (no limit), or at least min */
	KT_UINT,   /* decimal within [min, max] */
	KT_BOOL,   /* true/false/yes/no/on/off/1/0 */
	KT_ADDR,   /* host:port */
	KT_TGTD,   /* spawn | external */
	KT_LEVEL,  /* debug | info | warn | error */
	KT_URL,    /* seed url */
	KT_REDIS,  /* redis:// url or empty */
	KT_IQN,
	KT_HOST,   /* host name or address, or empty */
	KT_PREFIX, /* Redis key prefix: printable, no spaces */
};

struct key_def {
	const char *section, *key;
	enum key_type type;
	size_t off;      /* offset in struct config */
	size_t size;     /* buffer size for strings */
	uint64_t min, max;
	bool allow_empty;
};

#define F(field) offsetof(struct config, field), sizeof(((struct config *)0)->field)

static const struct key_def keys[] = {
	{"node", "name", KT_NAME, F(node_name), 0, 0, false},
	{"node", "rack", KT_NAME, F(rack), 0, 0, false},
	{"node", "state_dir", KT_PATH, F(state_dir), 0, 0, false},
	{"node", "log_level", KT_LEVEL, F(log_level), 0, 0, false},
	{"cache", "dir", KT_PATH, F(cache_dir), 0, 0, false},
	/* Below the largest chunk some chunk could never be stored: every read of it would
	 * time out (BUSY, then EIO), e.g. "size = 64" with the unit forgotten. */
	{"cache", "size", KT_CAPACITY, F(cache_size), CHUNK_SIZE_MAX, 0, false},
	{"cache", "verify_on_open", KT_BOOL, F(cache_verify_on_open), 0, 0, false},
	{"cache", "direct_io", KT_BOOL, F(cache_direct_io), 0, 0, false},
	{"seed", "url", KT_URL, F(seed_url), 0, 0, false},
	{"seed", "workers", KT_UINT, F(seed_workers), 1, 256, false},
	{"seed", "retry_initial_ms", KT_UINT, F(seed_retry_initial_ms), 1, 600000, false},
	{"seed", "retry_max_ms", KT_UINT, F(seed_retry_max_ms), 1, 600000, false},
	{"seed", "request_timeout_ms", KT_UINT, F(seed_request_timeout_ms), 100, 3600000, false},
	{"seed", "readahead", KT_UINT, F(seed_readahead), 0, 1024, false},
	{"cluster", "redis", KT_REDIS, F(redis), 0, 0, true},
	{"cluster", "listen", KT_ADDR, F(cluster_listen), 0, 0, false},
	{"cluster", "advertise", KT_ADDR, F(cluster_advertise), 0, 0, true},
	{"cluster", "token_file", KT_PATH, F(token_file), 0, 0, true},
	{"cluster", "prefix", KT_PREFIX, F(cluster_prefix), 0, 0, false},
	/* 1, not 0: the cluster code reads 0 as "the default" (10 s), the opposite of what it
	 * looks like */
	{"cluster", "lease_wait_ms", KT_UINT, F(lease_wait_ms), 1, 600000, false},
	{"cluster", "lease_ttl_ms", KT_UINT, F(lease_ttl_ms), 300, 600000, false},
	{"cluster", "heartbeat_ttl_ms", KT_UINT, F(heartbeat_ttl_ms), 1000, 3600000, false},
	{"cluster", "peer_timeout_ms", KT_UINT, F(peer_timeout_ms), 100, 600000, false},
	{"cluster", "readahead", KT_UINT, F(cluster_readahead), 1, 1024, false},
	{"iscsi", "portal", KT_ADDR, F(portal), 0, 0, false},
	{"iscsi", "tgtd", KT_TGTD, F(tgtd_spawn), 0, 0, false},
	{"iscsi", "control_port", KT_UINT, F(control_port), 0, 32767, false},
	{"iscsi", "iqn_prefix", KT_IQN, F(iqn_prefix), 0, 0, false},
	{"iscsi", "io_timeout_ms", KT_UINT, F(io_timeout_ms), 100, 3600000, false},
	{"iscsi", "advertise", KT_HOST, F(iscsi_advertise), 0, 0, true},
	{"iscsi", "tgtd_path", KT_PATH, F(tgtd_path), 0, 0, false},
	{"iscsi", "tgtadm_path", KT_PATH, F(tgtadm_path), 0, 0, false},
	{"iscsi", "ipc_socket", KT_PATH, F(ipc_socket), 0, 0, true},
	{"iscsi", "direct_io", KT_BOOL, F(direct_io), 0, 0, false},
	{"iscsi", "trace_dir", KT_PATH, F(trace_dir), 0, 0, true},
	{"api", "listen", KT_ADDR, F(api_listen), 0, 0, false},
	{"api", "max_body", KT_SIZE, F(api_max_body), 0, 0, false},
};

#undef F

void config_defaults(struct config *c)
{
	memset(c, 0, sizeof(*c));
	snprintf(c->rack, sizeof(c->rack), "default");
	snprintf(c->state_dir, sizeof(c->state_dir), "/var/lib/rackdisk");
	c->log_level = LOG_LVL_INFO;
	c->cache_size = 64 * GiB;
	c->seed_workers = 8;
	c->seed_retry_initial_ms = 100;
	c->seed_retry_max_ms = 2000;
	c->seed_request_timeout_ms = 10000;
	c->seed_readahead = 4;
	snprintf(c->cluster_listen.host, sizeof(c->cluster_listen.host), "0.0.0.0");
	c->cluster_listen.port = 7480;
	snprintf(c->cluster_prefix, sizeof(c->cluster_prefix), "rackdisk:");
	c->lease_wait_ms = 10000;
	c->lease_ttl_ms = 3000;
	c->heartbeat_ttl_ms = 10000;
	c->peer_timeout_ms = 5000;
	c->cluster_readahead = 16;
	snprintf(c->portal.host, sizeof(c->portal.host), "0.0.0.0");
	c->portal.port = 3260;
	c->tgtd_spawn = true;
	snprintf(c->iqn_prefix, sizeof(c->iqn_prefix), "iqn.2026-11.io.rackdisk");
	c->io_timeout_ms = 30000;
	snprintf(c->tgtd_path, sizeof(c->tgtd_path), "/usr/sbin/tgtd");
	snprintf(c->tgtadm_path, sizeof(c->tgtadm_path), "/usr/sbin/tgtadm");
	snprintf(c->api_listen.host, sizeof(c->api_listen.host), "127.0.0.1");
	c->api_listen.port = 7470;
	c->api_max_body = 64 * KiB;
}

int config_parse_addr(const char *s, struct config_addr *out)
{
	const char *colon, *host = s;
	size_t hlen;
	char *end;
	long port;

	if (!s || !*s)
		return -EINVAL;
	if (s[0] == '[') {
		const char *close = strchr(s, ']');

		if (!close || close[1] != ':')
			return -EINVAL;
		host = s + 1;
		hlen = (size_t)(close - host);
		colon = close + 1;
		for (size_t i = 0; i < hlen; i++)
			if (!isxdigit((unsigned char)host[i]) && host[i] != ':' && host[i] != '.')
				return -EINVAL;
	} else {
		colon = strrchr(s, ':');
		if (!colon)
			return -EINVAL;
		hlen = (size_t)(colon - s);
		for (size_t i = 0; i < hlen; i++) {
			unsigned char ch = (unsigned char)s[i];

			if (!isalnum(ch) && ch != '.' && ch != '-' && ch != '_')
				return -EINVAL;
		}
	}
	if (hlen == 0 || hlen >= sizeof(out->host))
		return -EINVAL;
	if (!isdigit((unsigned char)colon[1]))
		return -EINVAL;
	errno = 0;
	port = strtol(colon + 1, &end, 10);
	if (errno || *end || port < 1 || port > 65535)
		return -EINVAL;
	memcpy(out->host, host, hlen);
	out->host[hlen] = '\0';
	out->port = (uint16_t)port;
	return 0;
}

const char *config_addr_str(const struct config_addr *a, char *buf, size_t len)
{
	if (strchr(a->host, ':'))
		snprintf(buf, len, "[%s]:%u", a->host, a->port);
	else
		snprintf(buf, len, "%s:%u", a->host, a->port);
	return buf;
}

bool config_iqn_valid(const char *iqn)
{
	size_t n = strlen(iqn);

	/* iqn.yyyy-mm.reversed.domain[:...] */
	if (n < 13 || n > 200 || strncmp(iqn, "iqn.", 4))
		return false;
	for (int i = 4; i < 11; i++)
		if (i == 8 ? iqn[i] != '-' : !isdigit((unsigned char)iqn[i]))
			return false;
	if (iqn[11] != '.')
		return false;
	for (size_t i = 12; i < n; i++) {
		unsigned char ch = (unsigned char)iqn[i];

		if (!(islower(ch) || isdigit(ch) || ch == '.' || ch == '-' || ch == ':'))
			return false;
	}
	return iqn[n - 1] != '.' && iqn[n - 1] != ':';
}

static bool host_valid(const char *s)
{
	if (!*s || strlen(s) >= CONFIG_HOST)
		return false;
	for (; *s; s++) {
		unsigned char ch = (unsigned char)*s;

		if (!isalnum(ch) && ch != '.' && ch != '-' && ch != ':' && ch != '_')
			return false;
	}
	return true;
}

/* An http(s) URL whose host libcurl, which fetches it, can find, written after "//"
 * (libcurl would take "https:///repo" for host "repo"). */
static bool url_has_host(const char *v)
{
	const char *auth = strstr(v, "://");
	CURLU *u;
	char *host = NULL;
	bool ok;

	if (!auth || auth[3] == '/' || !auth[3])
		return false;
	u = curl_url();
	if (!u)
		return false; /* out of memory: the daemon could not start anyway */
	ok = !curl_url_set(u, CURLUPART_URL, v, 0) &&
	     !curl_url_get(u, CURLUPART_HOST, &host, 0) && host && *host;
	curl_free(host);
	curl_url_cleanup(u);
	return ok;
}

static int parse_bool(const char *v, bool *out)
{
	static const char *yes[] = {"true", "yes", "on", "1"};
	static const char *no[] = {"false", "no", "off", "0"};

	for (size_t i = 0; i < ARRAY_SIZE(yes); i++) {
		if (!strcasecmp(v, yes[i])) {
			*out = true;
			return 0;
		}
		if (!strcasecmp(v, no[i])) {
			*out = false;
			return 0;
		}
	}
	return -EINVAL;
}

static int parse_uint(const char *v, uint64_t min, uint64_t max, uint64_t *out)
{
	char *end;
	unsigned long long n;

	if (!isdigit((unsigned char)*v))
		return -EINVAL;
	errno = 0;
	n = strtoull(v, &end, 10);
	if (errno || *end || n < min || n > max)
		return -EINVAL;
	*out = n;
	return 0;
}

static int set_str(char *dst, size_t size, const char *v)
{
	if (strlen(v) >= size)
		return -ENAMETOOLONG;
	memcpy(dst, v, strlen(v) + 1);
	return 0;
}

/* Parses value v for key k into c; on error writes what is wrong into why. */
static int set_key(struct config *c, const struct key_def *k, const char *v, char *why,
		   size_t whylen)
{
	void *p = (char *)c + k->off;
	uint64_t n;

	if (!*v && k->allow_empty) {
		if (k->type == KT_ADDR)
			memset(p, 0, sizeof(struct config_addr));
		else
			((char *)p)[0] = '\0';
		return 0;
	}
	switch (k->type) {
	case KT_NAME:
		if (!name_is_valid(v))
			goto bad_fmt;
		return set_str(p, k->size, v);
	case KT_PATH:
		if (v[0] != '/' || strlen(v) >= k->size) {
			snprintf(why, whylen, "must be an absolute path");
			return -EINVAL;
		}
		return set_str(p, k->size, v);
	case KT_STR:
		return set_str(p, k->size, v);
	case KT_SIZE:
		if (parse_size(v, &n)) {
			snprintf(why, whylen, "is not a size (e.g. 4096, 64K, 1M, 64G)");
			return -EINVAL;
		}
		*(uint64_t *)p = n;
		return 0;
	case KT_CAPACITY:
		if (parse_size(v, &n)) {
			snprintf(why, whylen, "is not a size (e.g. 4096, 64K, 1M, 64G)");
			return -EINVAL;
		}
		if (n && n < k->min) {
			snprintf(why, whylen, "is smaller than the largest chunk (%lluM), so chunks "
					      "could not be stored: give 0 (no limit) or a size "
					      "with its unit (e.g. 64G)",
				 (unsigned long long)(k->min / MiB));
			return -EINVAL;
		}
		*(uint64_t *)p = n;
		return 0;
	case KT_UINT:
		if (parse_uint(v, k->min, k->max, &n)) {
			snprintf(why, whylen, "must be an integer from %llu to %llu",
				 (unsigned long long)k->min, (unsigned long long)k->max);
			return -EINVAL;
		}
		if (k->size == sizeof(uint64_t))
			*(uint64_t *)p = n;
		else if (k->size == sizeof(unsigned))
			*(unsigned *)p = (unsigned)n;
		return 0;
	case KT_BOOL:
		if (parse_bool(v, p)) {
			snprintf(why, whylen, "must be true or false");
			return -EINVAL;
		}
		return 0;
	case KT_ADDR:
		if (config_parse_addr(v, p)) {
			snprintf(why, whylen, "must be HOST:PORT with a port from 1 to 65535");
			return -EINVAL;
		}
		return 0;
	case KT_TGTD:
		if (strcmp(v, "spawn") && strcmp(v, "external")) {
			snprintf(why, whylen, "must be spawn or external");
			return -EINVAL;
		}
		*(bool *)p = !strcmp(v, "spawn");
		return 0;
	case KT_LEVEL: {
		static const char *names[] = {"debug", "info", "warn", "error"};

		for (size_t i = 0; i < ARRAY_SIZE(names); i++) {
			if (!strcmp(v, names[i])) {
				*(enum log_level *)p = (enum log_level)i;
				return 0;
			}
		}
		snprintf(why, whylen, "must be debug, info, warn or error");
		return -EINVAL;
	}
	case KT_URL: {
		/* The reading the seed client opens it with (repoloc.h): what passes here is
		 * the place it fetches from. A daemon's directory must not depend on its cwd. */
		struct repoloc l;
		bool ok, http = !strncasecmp(v, "http://", 7) || !strncasecmp(v, "https://", 8);

		if (http && !url_has_host(v)) { /* repoloc_parse refuses it too: say why */
			snprintf(why, whylen, "names no host (http://HOST[:PORT]/PATH)");
			return -EINVAL;
		}
		ok = !repoloc_parse(v, &l, NULL, 0) && (l.http || l.where[0] == '/');
		repoloc_free(&l);
		if (!ok) {
			snprintf(why, whylen, "must be an http://, https:// or file:/// URL "
					      "(file://localhost/ too), or an absolute directory");
			return -EINVAL;
		}
		if (strchr(v, ' ') || strlen(v) >= k->size)
			goto bad_fmt;
		return set_str(p, k->size, v);
	}
	case KT_REDIS: {
		/* The parser the directory connects with: what passes here connects. */
		struct directory_url u;

		if (strchr(v, ' ') || directory_parse_url(v, &u)) {
			snprintf(why, whylen, "must be redis://[[USER]:PASSWORD@]HOST[:PORT][/DB] "
					      "(port 1-65535; an IPv6 HOST in brackets: [::1]) or "
					      "unix:///PATH");
			return -EINVAL;
		}
		return set_str(p, k->size, v);
	}
	case KT_IQN:
		if (!config_iqn_valid(v)) {
			snprintf(why, whylen, "must look like iqn.YYYY-MM.reversed.domain "
					      "(lowercase)");
			return -EINVAL;
		}
		return set_str(p, k->size, v);
	case KT_HOST:
		if (!host_valid(v))
			goto bad_fmt;
		return set_str(p, k->size, v);
	case KT_PREFIX:
		/* Keys are built by concatenation: a space or a control byte in them would
		 * only confuse an operator reading redis-cli's output. */
		for (const char *q = v; *q; q++)
			if (!isgraph((unsigned char)*q))
				goto bad_fmt;
		if (!*v || strlen(v) > 64) {
			snprintf(why, whylen, "must be 1 to 64 printable characters");
			return -EINVAL;
		}
		return set_str(p, k->size, v);
	}
bad_fmt:
	snprintf(why, whylen, "is not valid");
	return -EINVAL;
}

struct parse_state {
	struct config *c;
	const char *name;
	char *err;
	size_t errlen;
	int line;        /* line being parsed (counted by the reader) */
	int err_line;    /* first line with an error from the handler, 0 = none */
	bool seen[ARRAY_SIZE(keys)];
	/* reader state */
	const char *text;
	size_t pos;
	FILE *file;
};

static int handler(void *user, const char *section, const char *key, const char *value)
{
	struct parse_state *ps = user;
	char why[160] = "";

	if (ps->err_line)
		return 1; /* report the first error only */
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
		if (strcmp(keys[i].section, section) || strcmp(keys[i].key, key))
			continue;
		if (ps->seen[i]) {
			snprintf(ps->err, ps->errlen, "%s:%d: [%s] %s is given twice", ps->name,
				 ps->line, section, key);
			goto fail;
		}
		ps->seen[i] = true;
		if (set_key(ps->c, &keys[i], value, why, sizeof(why))) {
			snprintf(ps->err, ps->errlen, "%s:%d: [%s] %s = '%s' %s", ps->name,
				 ps->line, section, key, value, why[0] ? why : "is not valid");
			goto fail;
		}
		return 1;
	}
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++) {
		if (!strcmp(keys[i].section, section)) {
			snprintf(ps->err, ps->errlen, "%s:%d: unknown key '%s' in [%s]", ps->name,
				 ps->line, key, section);
			goto fail;
		}
	}
	if (!*section)
		snprintf(ps->err, ps->errlen, "%s:%d: key '%s' outside any [section]", ps->name,
			 ps->line, key);
	else
		snprintf(ps->err, ps->errlen, "%s:%d: unknown section [%s]", ps->name, ps->line,
			 section);
fail:
	ps->err_line = ps->line;
	return 0;
}

/* Records the first error found by the reader (the handler sees only keys). */
static void reader_error(struct parse_state *ps, const char *what)
{
	if (ps->err_line)
		return;
	snprintf(ps->err, ps->errlen, "%s:%d: %s", ps->name, ps->line, what);
	ps->err_line = ps->line;
}

/* A [section] header line names a section some key belongs to: inih calls the handler
 * for keys only, so an empty unknown section would pass unnoticed. */
static void check_section_line(struct parse_state *ps, const char *line)
{
	const char *end;
	char name[64], what[96];

	while (isspace((unsigned char)*line))
		line++;
	if (*line != '[' || !(end = strchr(line, ']')) || (size_t)(end - line - 1) >= sizeof(name))
		return; /* not a header, or a malformed one: inih reports it */
	snprintf(name, sizeof(name), "%.*s", (int)(end - line - 1), line + 1);
	for (size_t i = 0; i < ARRAY_SIZE(keys); i++)
		if (!strcmp(keys[i].section, name))
			return;
	snprintf(what, sizeof(what), "unknown section [%s]", name);
	reader_error(ps, what);
}

/*
 * inih reader: one line per call, so ps->line is the line the handler is looking at.
 * inih reads lines into a buffer of INI_MAX_LINE bytes and would parse the rest of a
 * longer one as a line of its own: such a line is an error here, and parsing stops.
 */
static char *reader(char *buf, int size, void *stream)
{
	struct parse_state *ps = stream;
	bool more;
	char *ret;

	if (ps->file) {
		ret = fgets(buf, size, ps->file);
	} else {
		size_t i = 0;

		if (!ps->text[ps->pos])
			return NULL;
		while (ps->text[ps->pos] && i + 1 < (size_t)size) {
			char ch = ps->text[ps->pos++];

			buf[i++] = ch;
			if (ch == '\n')
				break;
		}
		buf[i] = '\0';
		ret = buf;
	}
	if (!ret)
		return NULL;
	ps->line++;
	if (!strchr(ret, '\n')) {
		if (ps->file) {
			int ch = getc(ps->file);

			more = ch != EOF;
			if (more)
				ungetc(ch, ps->file);
		} else {
			more = ps->text[ps->pos] != '\0';
		}
		if (more) {
			char what[64];

			snprintf(what, sizeof(what), "line too long (at most %d characters)",
				 size - 2);
			reader_error(ps, what);
			return NULL;
		}
	}
	check_section_line(ps, ret);
	return ret;
}

static bool host_is_wildcard(const char *h)
{
	return !strcmp(h, "0.0.0.0") || !strcmp(h, "::") || !strcmp(h, "*");
}

/* [cluster] with redis set: peers must be able to dial the address this node announces,
 * and a wildcard is no address to dial. */
static int finish_cluster(struct parse_state *ps)
{
	struct config *c = ps->c;

	if (c->cluster_advertise.host[0]) {
		if (!host_is_wildcard(c->cluster_advertise.host))
			return 0;
		snprintf(ps->err, ps->errlen,
			 "%s: [cluster] advertise must be an address peers can reach, not "
			 "the wildcard %s", ps->name, c->cluster_advertise.host);
		return -EINVAL;
	}
	if (host_is_wildcard(c->cluster_listen.host)) {
		snprintf(ps->err, ps->errlen,
			 "%s: [cluster] advertise is required when listen (%s) is a wildcard "
			 "address: set it to the HOST:PORT peers use to reach this node",
			 ps->name, c->cluster_listen.host);
		return -EINVAL;
	}
	c->cluster_advertise = c->cluster_listen;
	return 0;
}

/* Cross-key checks and derived defaults once the whole file is read. */
static int finish(struct parse_state *ps)
{
	struct config *c = ps->c;

	if (!c->node_name[0]) {
		snprintf(ps->err, ps->errlen, "%s: [node] name is required", ps->name);
		return -EINVAL;
	}
	if (!c->seed_url[0]) {
		snprintf(ps->err, ps->errlen, "%s: [seed] url is required", ps->name);
		return -EINVAL;
	}
	if (c->redis[0] && !c->token_file[0]) {
		snprintf(ps->err, ps->errlen,
			 "%s: [cluster] token_file is required when redis is set", ps->name);
		return -EINVAL;
	}
	if (c->redis[0] && finish_cluster(ps))
		return -EINVAL;
	if (c->seed_retry_max_ms < c->seed_retry_initial_ms) {
		snprintf(ps->err, ps->errlen,
			 "%s: [seed] retry_max_ms is smaller than retry_initial_ms", ps->name);
		return -EINVAL;
	}
	if (c->api_max_body < 1024 || c->api_max_body > 16 * MiB) {
		snprintf(ps->err, ps->errlen, "%s: [api] max_body must be from 1K to 16M",
			 ps->name);
		return -EINVAL;
	}
	/* state_dir first: the cache dir and tgtd's socket below derive from it, and a
	 * state_dir that is too long must be named, not the socket path made from it.
	 * A disk's directory is a tgtadm parameter, and tgtadm splits parameters at ','. */
	if (strchr(c->state_dir, ',')) {
		snprintf(ps->err, ps->errlen, "%s: [node] state_dir '%s' must not contain ',' "
					      "(disk directories under it are passed to tgtadm, "
					      "which cannot hold one)", ps->name, c->state_dir);
		return -EINVAL;
	}
	if (strlen(c->state_dir) + 20 > 107) {
		snprintf(ps->err, ps->errlen, "%s: [node] state_dir '%s' is too long (its "
					      "fetch socket must fit a unix socket path)",
			 ps->name, c->state_dir);
		return -EINVAL;
	}
	if (!c->cache_dir[0] &&
	    snprintf(c->cache_dir, sizeof(c->cache_dir), "%s/cache", c->state_dir) >=
		    (int)sizeof(c->cache_dir))
		return -ENAMETOOLONG;
	/* A private tgtd gets a private management socket, so that several appliances
	 * (tests, the demo) can share a machine without touching the system's tgtd. */
	if (c->tgtd_spawn && !c->ipc_socket[0] &&
	    snprintf(c->ipc_socket, sizeof(c->ipc_socket), "%s/tgtd.ipc", c->state_dir) >=
		    (int)sizeof(c->ipc_socket))
		return -ENAMETOOLONG;
	/* tgtd appends ".<control_port>" to the socket name; a unix socket path is short. */
	if (strlen(c->ipc_socket) + 7 > 107) {
		snprintf(ps->err, ps->errlen, "%s: [iscsi] ipc_socket path '%s' is too long "
					      "for a unix socket", ps->name, c->ipc_socket);
		return -EINVAL;
	}
	return 0;
}

static int parse(struct parse_state *ps)
{
	int ret;

	/* Debian's libinih reads an indented line as the continuation of the previous
	 * value: "  rack = r1" under "name = a" became a second value of name ("given
	 * twice"). Without it an indented line is an ordinary line. */
	ini_allow_multiline = false;
	ret = ini_parse_stream(reader, ps, handler, ps);
	if (ret < 0) {
		snprintf(ps->err, ps->errlen, "%s: cannot read the file", ps->name);
		return -EIO;
	}
	if (ps->err_line && (ret == 0 || ret >= ps->err_line))
		return -EINVAL;
	if (ret > 0) {
		snprintf(ps->err, ps->errlen,
			 "%s:%d: syntax error (expected [section] or key = value)", ps->name, ret);
		return -EINVAL;
	}
	return finish(ps);
}

int config_load_string(const char *name, const char *text, struct config *c, char *err,
		       size_t errlen)
{
	struct parse_state ps = {.c = c, .name = name, .err = err, .errlen = errlen,
				 .text = text};

	config_defaults(c);
	return parse(&ps);
}

int config_load(const char *path, struct config *c, char *err, size_t errlen)
{
	struct parse_state ps = {.c = c, .name = path, .err = err, .errlen = errlen};
	int ret;

	config_defaults(c);
	ps.file = fopen(path, "re");
	if (!ps.file) {
		ret = -errno;
		snprintf(err, errlen, "%s: cannot open: %s", path, strerror(errno));
		return ret;
	}
	ret = parse(&ps);
	fclose(ps.file);
	return ret;
}

static int check_program(const char *key, const char *path, char *err, size_t errlen)
{
	struct stat st;
	int e;

	if (stat(path, &st) < 0)
		e = errno;
	else if (!S_ISREG(st.st_mode))
		e = S_ISDIR(st.st_mode) ? EISDIR : EACCES;
	else if (access(path, X_OK) < 0)
		e = errno;
	else
		return 0;
	snprintf(err, errlen, "[iscsi] %s '%s' cannot be executed: %s", key, path, strerror(e));
	return -e;
}

int config_check_programs(const struct config *c, char *err, size_t errlen)
{
	int ret = 0;

	if (c->tgtd_spawn)
		ret = check_program("tgtd_path", c->tgtd_path, err, errlen);
	if (!ret)
		ret = check_program("tgtadm_path", c->tgtadm_path, err, errlen);
	return ret;
}

int config_path_fmt(char *buf, size_t len, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, len, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= len) {
		if (len)
			buf[0] = '\0';
		return -ENAMETOOLONG;
	}
	return 0;
}
