/*
 * api_req.c - see api_req.h.
 */
#include "appliance/api_req.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/hash.h"
#include "common/util.h"

static json_t *load_object(const char *body, size_t len, char *err, size_t errlen)
{
	json_error_t jerr;
	json_t *j;

	if (!body || !len) {
		snprintf(err, errlen, "request body must be a JSON object");
		return NULL;
	}
	j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!j) {
		snprintf(err, errlen, "malformed JSON: %s (line %d)", jerr.text, jerr.line);
		return NULL;
	}
	if (!json_is_object(j)) {
		snprintf(err, errlen, "request body must be a JSON object");
		json_decref(j);
		return NULL;
	}
	return j;
}

static bool only_keys(json_t *j, const char *const *allowed, char *err, size_t errlen)
{
	const char *key;
	json_t *v;

	json_object_foreach(j, key, v) {
		bool ok = false;

		for (size_t i = 0; allowed[i]; i++)
			ok = ok || !strcmp(key, allowed[i]);
		if (!ok) {
			/* at most 64 bytes of it, cut between characters: the message must stay
			 * UTF-8 for the JSON reply that carries it */
			int n = (int)utf8_valid_prefix(key, strnlen(key, 64));

			snprintf(err, errlen, "unknown field \"%.*s\"", n, key);
			return false;
		}
	}
	return true;
}

bool api_image_ref_valid(const char *s)
{
	struct chunk_hash h;

	return name_is_valid(s) || !hash_from_hex(s, strlen(s), &h);
}

json_t *api_error_json(const char *msg)
{
	size_t n = strlen(msg), i = 0, k;
	char *clean;
	json_t *j;

	if (utf8_valid_prefix(msg, n) == n)
		return json_pack("{s:s}", "error", msg);
	clean = strdup(msg);
	if (!clean)
		return NULL;
	while (i < n) {
		k = utf8_valid_prefix(clean + i, n - i);
		i += k;
		if (i < n)
			clean[i++] = '?';
	}
	j = json_pack("{s:s}", "error", clean);
	free(clean);
	return j;
}

int api_parse_size_value(const char *s, uint64_t *out)
{
	uint64_t n;

	if (parse_size(s, &n) || n == 0 || n > API_DISK_SIZE_MAX)
		return -EINVAL;
	*out = n;
	return 0;
}

static int parse_chap(json_t *chap, struct disk_request *req, char *err, size_t errlen)
{
	static const char *const keys[] = {"user", "password", NULL};
	json_t *u, *p;

	if (!json_is_object(chap)) {
		snprintf(err, errlen, "\"chap\" must be an object {\"user\", \"password\"}");
		return -EINVAL;
	}
	if (!only_keys(chap, keys, err, errlen))
		return -EINVAL;
	u = json_object_get(chap, "user");
	p = json_object_get(chap, "password");
	if (!json_is_string(u) || !diskrec_chap_user_valid(json_string_value(u))) {
		snprintf(err, errlen, "\"chap.user\" must be 1 to 64 of A-Z a-z 0-9 . _ -");
		return -EINVAL;
	}
	if (!json_is_string(p) || !diskrec_chap_secret_valid(json_string_value(p))) {
		snprintf(err, errlen, "\"chap.password\" must be 12 to 64 printable characters "
				      "without spaces, ',' or '='");
		return -EINVAL;
	}
	snprintf(req->chap_user, sizeof(req->chap_user), "%s", json_string_value(u));
	snprintf(req->chap_password, sizeof(req->chap_password), "%s", json_string_value(p));
	return 0;
}

/* A disk size: a JSON integer (bytes) or a string ("10G"), a multiple of 512, up to 64T. */
static int parse_size_json(json_t *size, uint64_t *out, char *err, size_t errlen)
{
	if (json_is_integer(size)) {
		json_int_t n = json_integer_value(size);

		if (n <= 0 || (uint64_t)n > API_DISK_SIZE_MAX) {
			snprintf(err, errlen, "\"size\" must be from 1 byte to 64T");
			return -EINVAL;
		}
		*out = (uint64_t)n;
	} else if (json_is_string(size)) {
		if (api_parse_size_value(json_string_value(size), out)) {
			snprintf(err, errlen, "\"size\" must be a size such as 10G, up to 64T");
			return -EINVAL;
		}
	} else {
		snprintf(err, errlen, "\"size\" must be a number of bytes or a string like 10G");
		return -EINVAL;
	}
	if (*out % 512) {
		snprintf(err, errlen, "\"size\" must be a multiple of 512 bytes");
		return -EINVAL;
	}
	return 0;
}

static int parse_fields(json_t *j, struct disk_request *req, char *err, size_t errlen)
{
	json_t *name = json_object_get(j, "name"), *image = json_object_get(j, "image");
	json_t *size = json_object_get(j, "size"), *ini = json_object_get(j, "initiators");
	json_t *chap = json_object_get(j, "chap"), *v;
	size_t i;

	if (!json_is_string(name) || !disk_name_is_valid(json_string_value(name))) {
		snprintf(err, errlen, "\"name\" must be 1 to 128 of A-Z a-z 0-9 . - not "
				      "starting with '.' or '-' (no '_': iSCSI target names "
				      "cannot hold it; no '/' or '..')");
		return -EINVAL;
	}
	snprintf(req->name, sizeof(req->name), "%s", json_string_value(name));
	if (!json_is_string(image) || !api_image_ref_valid(json_string_value(image))) {
		snprintf(err, errlen, "\"image\" must be an image tag or a 64-hex image id");
		return -EINVAL;
	}
	snprintf(req->image, sizeof(req->image), "%s", json_string_value(image));
	if (size && !json_is_null(size) && parse_size_json(size, &req->size, err, errlen))
		return -EINVAL;
	if (ini && !json_is_null(ini)) {
		if (!json_is_array(ini) || json_array_size(ini) > DISKREC_MAX_INITIATORS) {
			snprintf(err, errlen, "\"initiators\" must be an array of at most %d names",
				 DISKREC_MAX_INITIATORS);
			return -EINVAL;
		}
		json_array_foreach(ini, i, v) {
			if (!json_is_string(v) || !diskrec_initiator_valid(json_string_value(v))) {
				snprintf(err, errlen, "\"initiators\"[%zu] is not an iSCSI name "
						      "(iqn., eui. or naa.)", i);
				return -EINVAL;
			}
			for (size_t k = 0; k < i; k++) {
				if (!strcmp(req->initiators[k], json_string_value(v))) {
					snprintf(err, errlen, "\"initiators\"[%zu] repeats [%zu]",
						 i, k);
					return -EINVAL;
				}
			}
			snprintf(req->initiators[i], sizeof(req->initiators[i]), "%s",
				 json_string_value(v));
			req->ninitiators++;
		}
	}
	if (chap && !json_is_null(chap))
		return parse_chap(chap, req, err, errlen);
	return 0;
}

int api_parse_disk_request(const char *body, size_t len, struct disk_request *req, char *err,
			   size_t errlen)
{
	static const char *const keys[] = {"name", "image", "size", "initiators", "chap", NULL};
	json_t *j;
	int ret;

	memset(req, 0, sizeof(*req));
	j = load_object(body, len, err, errlen);
	if (!j)
		return -EINVAL;
	ret = only_keys(j, keys, err, errlen) ? parse_fields(j, req, err, errlen) : -EINVAL;
	json_decref(j);
	return ret;
}

int api_parse_resize_request(const char *body, size_t len, uint64_t *size, char *err,
			     size_t errlen)
{
	static const char *const keys[] = {"size", NULL};
	json_t *j, *s;
	int ret = -EINVAL;

	j = load_object(body, len, err, errlen);
	if (!j)
		return -EINVAL;
	if (only_keys(j, keys, err, errlen)) {
		s = json_object_get(j, "size");
		if (!s)
			snprintf(err, errlen, "\"size\" is required");
		else
			ret = parse_size_json(s, size, err, errlen);
	}
	json_decref(j);
	return ret;
}

int api_parse_image_request(const char *body, size_t len, char *tag, size_t taglen, char *err,
			    size_t errlen)
{
	static const char *const keys[] = {"tag", "name", NULL};
	json_t *j, *t;
	int ret = -EINVAL;

	j = load_object(body, len, err, errlen);
	if (!j)
		return -EINVAL;
	if (!only_keys(j, keys, err, errlen))
		goto out;
	t = json_object_get(j, "tag");
	if (!t)
		t = json_object_get(j, "name");
	if (!json_is_string(t) || !name_is_valid(json_string_value(t)) ||
	    json_string_length(t) >= taglen) {
		snprintf(err, errlen, "\"tag\" must be an image tag: 1 to 128 of A-Z a-z 0-9 . _ "
				      "- not starting with '.' or '-'");
		goto out;
	}
	snprintf(tag, taglen, "%s", json_string_value(t));
	ret = 0;
out:
	json_decref(j);
	return ret;
}
