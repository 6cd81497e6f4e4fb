/*
 * lunconf.c - parsing and validation of lun.json (see lunconf.h and fetch_proto.h).
 */
#include "target/lunconf.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "common/util.h"
#include "target/fetch_proto.h"

#define fail set_err

/* An absolute path without NUL bytes or "/../" tricks is all the module needs: the
 * daemon chose it, and the module opens it with its own privileges. */
static int get_path(json_t *root, const char *key, bool required, char **out, char *err,
		    size_t errlen)
{
	json_t *v = json_object_get(root, key);
	const char *s;

	*out = NULL;
	if (!v || json_is_null(v)) {
		if (required)
			return fail(err, errlen, -EINVAL, "lun.json: missing \"%s\"", key);
		return 0;
	}
	if (!json_is_string(v))
		return fail(err, errlen, -EINVAL, "lun.json: \"%s\" is not a string", key);
	s = json_string_value(v);
	if (strlen(s) != json_string_length(v) || s[0] != '/' || strlen(s) >= 4096)
		return fail(err, errlen, -EINVAL, "lun.json: \"%s\" is not an absolute path", key);
	*out = strdup(s);
	return *out ? 0 : -ENOMEM;
}

static int parse_fields(json_t *root, struct lun_config *c, char *err, size_t errlen)
{
	json_t *v;
	int ret;

	v = json_object_get(root, "format");
	if (!json_is_integer(v))
		return fail(err, errlen, -EINVAL, "lun.json: missing integer \"format\"");
	if (json_integer_value(v) != LUN_CONFIG_FORMAT)
		return fail(err, errlen, -EPROTONOSUPPORT, "lun.json: format %lld not supported",
			    (long long)json_integer_value(v));

	v = json_object_get(root, "name");
	if (!json_is_string(v) || !name_is_valid(json_string_value(v)))
		return fail(err, errlen, -EINVAL, "lun.json: missing or invalid \"name\"");
	c->name = strdup(json_string_value(v));
	if (!c->name)
		return -ENOMEM;

	v = json_object_get(root, "image_id");
	if (!json_is_string(v) ||
	    hash_from_hex(json_string_value(v), json_string_length(v), &c->image_id) < 0)
		return fail(err, errlen, -EINVAL, "lun.json: \"image_id\" is not 64 hex digits");

	ret = get_path(root, "manifest", true, &c->manifest, err, errlen);
	if (!ret)
		ret = get_path(root, "chunk_dir", true, &c->chunk_dir, err, errlen);
	if (!ret)
		ret = get_path(root, "socket", false, &c->socket, err, errlen);
	if (ret)
		return ret;

	c->io_timeout_ms = LUN_IO_TIMEOUT_DEFAULT_MS;
	v = json_object_get(root, "io_timeout_ms");
	if (v && !json_is_null(v)) {
		if (!json_is_integer(v) || json_integer_value(v) < 1 ||
		    json_integer_value(v) > LUN_IO_TIMEOUT_MAX_MS)
			return fail(err, errlen, -EINVAL,
				    "lun.json: \"io_timeout_ms\" must be 1..%u", LUN_IO_TIMEOUT_MAX_MS);
		c->io_timeout_ms = (uint32_t)json_integer_value(v);
	}

	c->direct_io = false;
	v = json_object_get(root, "direct_io");
	if (v && !json_is_null(v)) {
		if (!json_is_boolean(v))
			return fail(err, errlen, -EINVAL, "lun.json: \"direct_io\" is not a boolean");
		c->direct_io = json_is_true(v);
	}

	/* The module creates the file itself: a directory path would fail there, later and
	 * less clearly, so it is refused here. */
	ret = get_path(root, "trace", false, &c->trace, err, errlen);
	if (ret)
		return ret;
	if (c->trace && c->trace[strlen(c->trace) - 1] == '/')
		return fail(err, errlen, -EINVAL, "lun.json: \"trace\" must name a file, not a "
			    "directory");
	return 0;
}

int lun_config_parse(const char *buf, size_t len, struct lun_config *c, char *err,
		     size_t errlen)
{
	json_error_t jerr;
	json_t *root;
	int ret;

	memset(c, 0, sizeof(*c));
	if (len > LUN_CONFIG_MAX_BYTES)
		return fail(err, errlen, -EINVAL, "lun.json: larger than %u bytes",
			    LUN_CONFIG_MAX_BYTES);
	root = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root)
		return fail(err, errlen, -EINVAL, "lun.json: line %d: %s", jerr.line, jerr.text);
	if (!json_is_object(root)) {
		ret = fail(err, errlen, -EINVAL, "lun.json: not a JSON object");
		goto out;
	}
	ret = parse_fields(root, c, err, errlen);
out:
	json_decref(root);
	if (ret)
		lun_config_free(c);
	return ret;
}

int lun_config_load(const char *dir, struct lun_config *c, char *err, size_t errlen)
{
	char path[4096];
	char *buf = NULL;
	size_t len;
	int n, ret;

	memset(c, 0, sizeof(*c));
	n = snprintf(path, sizeof(path), "%s/%s", dir, LUN_CONFIG_FILE);
	if (n < 0 || (size_t)n >= sizeof(path))
		return fail(err, errlen, -ENAMETOOLONG, "%s: path too long", dir);
	ret = read_file(path, LUN_CONFIG_MAX_BYTES, &buf, &len);
	if (ret)
		return fail(err, errlen, ret, "%s: %s", path, strerror(-ret));
	ret = lun_config_parse(buf, len, c, err, errlen);
	free(buf);
	return ret;
}

void lun_config_free(struct lun_config *c)
{
	free(c->name);
	free(c->manifest);
	free(c->chunk_dir);
	free(c->socket);
	free(c->trace);
	memset(c, 0, sizeof(*c));
}
