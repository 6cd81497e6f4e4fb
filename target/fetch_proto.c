/*
 * fetch_proto.c - reading and writing the fetch socket's request lines (fetch_proto.h).
 *
 * Both sides use these two functions, so the module can never write a line the daemon
 * reads differently, and the parser can be tested without a socket or a daemon.
 */
#include "target/fetch_proto.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/util.h"
#include "images/manifest.h"

static int parse_hash(const char *tok, struct chunk_hash *h)
{
	return tok && strlen(tok) == HASH_HEX_LEN ? hash_from_hex(tok, HASH_HEX_LEN, h) : -EPROTO;
}

/* A decimal number without sign or spaces, at most max. */
static int parse_u64(const char *tok, uint64_t max, uint64_t *out)
{
	unsigned long long v;
	char *end;

	if (!tok || *tok < '0' || *tok > '9')
		return -EPROTO;
	errno = 0;
	v = strtoull(tok, &end, 10);
	if (errno || *end || v > max)
		return -EPROTO;
	*out = v;
	return 0;
}

static int parse_len(const char *tok, uint32_t *len)
{
	uint64_t v;

	if (parse_u64(tok, CHUNK_SIZE_MAX, &v) || v == 0)
		return -EPROTO;
	*len = (uint32_t)v;
	return 0;
}

/* FETCH <hash> <len> <timeout_ms> [<image_id> <idx>] */
static int parse_fetch(char **save, struct fetch_req *r)
{
	const char *img, *idx;
	uint64_t tmo;

	if (parse_hash(strtok_r(NULL, " ", save), &r->h) ||
	    parse_len(strtok_r(NULL, " ", save), &r->len) ||
	    parse_u64(strtok_r(NULL, " ", save), FETCH_PROTO_TIMEOUT_MAX_MS, &tmo))
		return -EPROTO;
	r->timeout_ms = (uint32_t)tmo;
	img = strtok_r(NULL, " ", save);
	if (!img)
		return 0;
	idx = strtok_r(NULL, " ", save);
	if (parse_hash(img, &r->image) || parse_u64(idx, UINT64_MAX, &r->idx) ||
	    strtok_r(NULL, " ", save))
		return -EPROTO;
	r->has_pos = true;
	return 0;
}

/* HIT <image_id> <idx> <hash> */
static int parse_hit(char **save, struct fetch_req *r)
{
	if (parse_hash(strtok_r(NULL, " ", save), &r->image) ||
	    parse_u64(strtok_r(NULL, " ", save), UINT64_MAX, &r->idx) ||
	    parse_hash(strtok_r(NULL, " ", save), &r->h) || strtok_r(NULL, " ", save))
		return -EPROTO;
	r->has_pos = true;
	return 0;
}

int fetch_proto_parse(const char *line, size_t len, struct fetch_req *r)
{
	char buf[FETCH_PROTO_LINE_MAX + 1], *save = NULL, *cmd, *tok;

	memset(r, 0, offsetof(struct fetch_req, touch));
	if (len && line[len - 1] == '\n')
		len--;
	if (len > FETCH_PROTO_LINE_MAX || memchr(line, '\0', len) || memchr(line, '\n', len))
		return -EPROTO;
	memcpy(buf, line, len);
	buf[len] = '\0';
	cmd = strtok_r(buf, " ", &save);
	if (!cmd)
		return -EPROTO;
	if (!strcmp(cmd, "FETCH")) {
		r->cmd = FETCH_CMD_FETCH;
		return parse_fetch(&save, r);
	}
	if (!strcmp(cmd, "PREFETCH") || !strcmp(cmd, "CHECK")) {
		r->cmd = cmd[0] == 'P' ? FETCH_CMD_PREFETCH : FETCH_CMD_CHECK;
		if (parse_hash(strtok_r(NULL, " ", &save), &r->h) ||
		    parse_len(strtok_r(NULL, " ", &save), &r->len) || strtok_r(NULL, " ", &save))
			return -EPROTO;
		return 0;
	}
	if (!strcmp(cmd, "HIT")) {
		r->cmd = FETCH_CMD_HIT;
		return parse_hit(&save, r);
	}
	if (!strcmp(cmd, "TOUCH")) {
		r->cmd = FETCH_CMD_TOUCH;
		while ((tok = strtok_r(NULL, " ", &save))) {
			if (r->ntouch == FETCH_PROTO_TOUCH_MAX || parse_hash(tok, &r->touch[r->ntouch]))
				return -EPROTO;
			r->ntouch++;
		}
		return r->ntouch ? 0 : -EPROTO;
	}
	return -EPROTO;
}

size_t fetch_proto_format_fetch(char *buf, size_t size, const struct chunk_hash *h, uint32_t len,
				uint32_t timeout_ms, const struct chunk_hash *image, uint64_t idx)
{
	char hex[HASH_HEX_LEN + 1], ihex[HASH_HEX_LEN + 1];
	int n;

	hash_to_hex(h, hex);
	if (image) {
		hash_to_hex(image, ihex);
		n = snprintf(buf, size, "FETCH %s %u %u %s %llu\n", hex, len, timeout_ms, ihex,
			     (unsigned long long)idx);
	} else {
		n = snprintf(buf, size, "FETCH %s %u %u\n", hex, len, timeout_ms);
	}
	return n < 0 ? 0 : MIN((size_t)n, size ? size - 1 : 0);
}

size_t fetch_proto_format_hit(char *buf, size_t size, const struct chunk_hash *image,
			      uint64_t idx, const struct chunk_hash *h)
{
	char hex[HASH_HEX_LEN + 1], ihex[HASH_HEX_LEN + 1];
	int n;

	hash_to_hex(h, hex);
	hash_to_hex(image, ihex);
	n = snprintf(buf, size, "HIT %s %llu %s\n", ihex, (unsigned long long)idx, hex);
	return n < 0 ? 0 : MIN((size_t)n, size ? size - 1 : 0);
}
