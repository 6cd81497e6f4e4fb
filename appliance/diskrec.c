/*
 * diskrec.c - see diskrec.h.
 *
 * Invariants of <state_dir>/disks/ (appliance/disks.c relies on them, fsck checks them):
 *  1. A directory named by a valid disk name (never starting with '.') is a complete
 *     disk: overlay, lun.json and disk.json all written and synced. A create builds the
 *     disk in ".new-<name>" and renames it into place last.
 *  2. A delete first renames the directory to ".trash-<name>-..." and only then removes
 *     its files, so a crash never leaves a half-deleted disk under its name.
 *  3. Leftover ".new-*" and ".trash-*" directories are garbage, removed at start.
 *  4. disk.json is replaced atomically (write_file_atomic), never edited in place.
 *  5. A directory named by a valid name whose disk.json cannot be used is still a disk,
 *     with a damaged record (diskrec_scan lists it apart): its name, its target and its
 *     target id stay its own until the record is restored or the disk deleted.
 */
#include "appliance/diskrec.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>

#include "appliance/config.h"
#include "common/log.h"
#include "common/util.h"

#define DISKREC_MAX_BYTES (64 * 1024)

bool diskrec_initiator_valid(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n < 5 || n >= DISKREC_IQN_MAX)
		return false;
	if (strncmp(s, "iqn.", 4) && strncmp(s, "eui.", 4) && strncmp(s, "naa.", 4))
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		/* RFC 3722 stringprep leaves lowercase; accept uppercase hex in eui/naa. */
		if (!(isalnum(c) || c == '.' || c == '-' || c == ':'))
			return false;
	}
	return true;
}

bool diskrec_chap_user_valid(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	if (n < 1 || n >= DISKREC_CHAP_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (!(isalnum(c) || c == '.' || c == '_' || c == '-'))
			return false;
	}
	return true;
}

bool diskrec_chap_secret_valid(const char *s)
{
	size_t n = s ? strlen(s) : 0;

	/* Many initiators (Microsoft's, open-iscsi) insist on 12..16 bytes; tgtadm's
	 * parameter syntax forbids ',' and '='. */
	if (n < 12 || n >= DISKREC_CHAP_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		unsigned char c = (unsigned char)s[i];

		if (!isgraph(c) || c == ',' || c == '=')
			return false;
	}
	return true;
}

int diskrec_new_scsi_id(char id[DISKREC_SCSI_ID_LEN + 1])
{
	uint8_t b[DISKREC_SCSI_ID_LEN / 2];

	if (getrandom(b, sizeof(b), 0) != (ssize_t)sizeof(b))
		return -EIO;
	for (size_t i = 0; i < sizeof(b); i++)
		snprintf(id + 2 * i, 3, "%02x", b[i]);
	return 0;
}

bool diskrec_scsi_id_valid(const char *id)
{
	return strlen(id) == DISKREC_SCSI_ID_LEN &&
	       strspn(id, "0123456789abcdef") == DISKREC_SCSI_ID_LEN;
}

json_t *diskrec_to_json(const struct diskrec *r, bool include_secret)
{
	char hex[HASH_HEX_LEN + 1];
	json_t *j, *ini;

	hash_to_hex(&r->image_id, hex);
	ini = json_array();
	for (unsigned i = 0; ini && i < r->ninitiators; i++)
		json_array_append_new(ini, json_string(r->initiators[i]));
	j = json_pack("{s:i, s:s, s:s, s:s, s:I, s:o, s:i, s:i, s:I}", "format", 1, "name",
		      r->name, "image", r->image_tag, "image_id", hex, "size",
		      (json_int_t)r->size, "initiators", ini, "tid", r->tid, "lun", r->lun,
		      "created", (json_int_t)r->created);
	if (j && r->scsi_id[0])
		json_object_set_new(j, "scsi_id", json_string(r->scsi_id));
	if (j && r->chap_user[0]) {
		json_object_set_new(j, "chap_user", json_string(r->chap_user));
		if (include_secret)
			json_object_set_new(j, "chap_password", json_string(r->chap_password));
	}
	return j;
}

static int get_str(json_t *j, const char *key, char *dst, size_t size, bool required,
		   char *err, size_t errlen)
{
	json_t *v = json_object_get(j, key);

	if (!v) {
		if (!required) {
			dst[0] = '\0';
			return 0;
		}
		snprintf(err, errlen, "missing \"%s\"", key);
		return -EINVAL;
	}
	if (!json_is_string(v) || json_string_length(v) >= size) {
		snprintf(err, errlen, "\"%s\" must be a string shorter than %zu", key, size);
		return -EINVAL;
	}
	memcpy(dst, json_string_value(v), json_string_length(v) + 1);
	return 0;
}

int diskrec_from_json(json_t *j, struct diskrec *r, char *err, size_t errlen)
{
	char hex[HASH_HEX_LEN + 1];
	json_t *ini, *v;
	size_t i;

	memset(r, 0, sizeof(*r));
	if (!json_is_object(j)) {
		snprintf(err, errlen, "not a JSON object");
		return -EINVAL;
	}
	if (get_str(j, "name", r->name, sizeof(r->name), true, err, errlen) ||
	    get_str(j, "image", r->image_tag, sizeof(r->image_tag), false, err, errlen) ||
	    get_str(j, "image_id", hex, sizeof(hex), true, err, errlen) ||
	    get_str(j, "chap_user", r->chap_user, sizeof(r->chap_user), false, err, errlen) ||
	    get_str(j, "chap_password", r->chap_password, sizeof(r->chap_password), false, err,
		    errlen) ||
	    get_str(j, "scsi_id", r->scsi_id, sizeof(r->scsi_id), false, err, errlen))
		return -EINVAL;
	if (r->scsi_id[0] && !diskrec_scsi_id_valid(r->scsi_id)) {
		snprintf(err, errlen, "\"scsi_id\" is not %d lowercase hex digits",
			 DISKREC_SCSI_ID_LEN);
		return -EINVAL;
	}
	if (!name_is_valid(r->name) || (r->image_tag[0] && !name_is_valid(r->image_tag))) {
		snprintf(err, errlen, "invalid name");
		return -EINVAL;
	}
	if (hash_from_hex(hex, strlen(hex), &r->image_id)) {
		snprintf(err, errlen, "\"image_id\" is not 64 hex digits");
		return -EINVAL;
	}
	v = json_object_get(j, "size");
	if (!json_is_integer(v) || json_integer_value(v) <= 0) {
		snprintf(err, errlen, "\"size\" must be a positive integer");
		return -EINVAL;
	}
	r->size = (uint64_t)json_integer_value(v);
	v = json_object_get(j, "tid");
	if (!json_is_integer(v) || json_integer_value(v) < 1 || json_integer_value(v) > 65535) {
		snprintf(err, errlen, "\"tid\" must be an integer from 1 to 65535");
		return -EINVAL;
	}
	r->tid = (int)json_integer_value(v);
	v = json_object_get(j, "lun");
	r->lun = json_is_integer(v) ? (int)json_integer_value(v) : 1;
	v = json_object_get(j, "created");
	r->created = json_is_integer(v) ? (int64_t)json_integer_value(v) : 0;
	ini = json_object_get(j, "initiators");
	if (ini && (!json_is_array(ini) || json_array_size(ini) > DISKREC_MAX_INITIATORS)) {
		snprintf(err, errlen, "\"initiators\" must be an array of at most %d names",
			 DISKREC_MAX_INITIATORS);
		return -EINVAL;
	}
	json_array_foreach(ini, i, v) {
		if (!json_is_string(v) || !diskrec_initiator_valid(json_string_value(v))) {
			snprintf(err, errlen, "invalid initiator name in \"initiators\"");
			return -EINVAL;
		}
		memcpy(r->initiators[i], json_string_value(v), json_string_length(v) + 1);
		r->ninitiators++;
	}
	if (r->chap_user[0] && (!diskrec_chap_user_valid(r->chap_user) ||
				!diskrec_chap_secret_valid(r->chap_password))) {
		snprintf(err, errlen, "invalid CHAP user or password");
		return -EINVAL;
	}
	return 0;
}

int diskrec_save(const char *dir, const struct diskrec *r)
{
	char path[PATH_MAX];
	json_t *j;
	char *text;
	int ret;

	if (snprintf(path, sizeof(path), "%s/%s", dir, DISKREC_FILE) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	j = diskrec_to_json(r, true);
	if (!j)
		return -ENOMEM;
	text = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);
	json_decref(j);
	if (!text)
		return -ENOMEM;
	ret = write_file_atomic(path, text, strlen(text));
	free(text);
	return ret;
}

int diskrec_load(const char *dir, struct diskrec *r, char *err, size_t errlen)
{
	char path[PATH_MAX], *text = NULL;
	json_error_t jerr;
	size_t len;
	json_t *j;
	int ret;

	if (snprintf(path, sizeof(path), "%s/%s", dir, DISKREC_FILE) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	ret = read_file(path, DISKREC_MAX_BYTES, &text, &len);
	if (ret) {
		snprintf(err, errlen, "%s: %s", path, strerror(-ret));
		return ret;
	}
	/* a record that does not parse is damaged on this side: -EUCLEAN, not -EINVAL (the
	 * API answers 409, not 400: the request was fine, the disk is not) */
	j = json_loadb(text, len, 0, &jerr);
	free(text);
	if (!j) {
		snprintf(err, errlen, "%s is damaged: %s", path, jerr.text);
		return -EUCLEAN;
	}
	ret = diskrec_from_json(j, r, err, errlen);
	json_decref(j);
	if (ret == -EINVAL) {
		char why[192];

		snprintf(why, sizeof(why), "%s", err);
		snprintf(err, errlen, "%s is damaged: %s", path, why);
		ret = -EUCLEAN;
	}
	return ret;
}

static int cmp_rec(const void *a, const void *b)
{
	return strcmp(((const struct diskrec *)a)->name, ((const struct diskrec *)b)->name);
}

static int cmp_damaged(const void *a, const void *b)
{
	return strcmp(((const struct diskrec_damaged *)a)->name,
		      ((const struct diskrec_damaged *)b)->name);
}

/* Grows *v (of *cap elements of size) to hold one more than n; -ENOMEM. */
static int grow(void **v, size_t *cap, size_t n, size_t size)
{
	size_t nc = *cap ? *cap * 2 : 16;
	void *nv;

	if (n < *cap)
		return 0;
	nv = realloc(*v, nc * size);
	if (!nv)
		return -ENOMEM;
	*v = nv;
	*cap = nc;
	return 0;
}

int diskrec_load_disk(const char *disks_dir, const char *name, struct diskrec *r, char *err,
		      size_t errlen)
{
	char path[PATH_MAX];
	struct stat st;
	int ret;

	ret = config_path_fmt(path, sizeof(path), "%s/%s", disks_dir, name);
	if (ret) {
		snprintf(err, errlen, "path of disk '%s' too long", name);
		return ret;
	}
	ret = diskrec_load(path, r, err, errlen);
	if (ret == -ENOENT && stat(path, &st) && errno == ENOENT) {
		snprintf(err, errlen, "no disk named '%s'", name);
	} else if (ret == -ENOENT) { /* the disk is there, its record is not */
		snprintf(err, errlen, "%s/%s is damaged: it is missing", path, DISKREC_FILE);
		ret = -EUCLEAN;
	} else if (!ret && strcmp(r->name, name)) {
		snprintf(err, errlen, "%s/%s is damaged: it names disk '%s'", path, DISKREC_FILE,
			 r->name);
		ret = -EUCLEAN;
	}
	return ret;
}

int diskrec_scan(const char *disks_dir, struct diskrec **out, size_t *n,
		 struct diskrec_damaged **damaged, size_t *ndamaged)
{
	struct diskrec_damaged *bad = NULL;
	struct diskrec *v = NULL;
	size_t cnt = 0, cap = 0, nbad = 0, capbad = 0;
	struct dirent *de;
	DIR *d;
	int ret = 0;

	*out = NULL;
	*n = 0;
	*damaged = NULL;
	*ndamaged = 0;
	d = opendir(disks_dir);
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	while ((de = readdir(d))) {
		if (!name_is_valid(de->d_name))
			continue; /* invariant 1: only complete disks have a plain name */
		ret = grow((void **)&v, &cap, cnt, sizeof(*v));
		if (!ret)
			ret = grow((void **)&bad, &capbad, nbad, sizeof(*bad));
		if (ret)
			goto out;
		memset(&bad[nbad], 0, sizeof(bad[nbad]));
		if (diskrec_load_disk(disks_dir, de->d_name, &v[cnt], bad[nbad].error,
				      sizeof(bad[nbad].error))) {
			/* a valid name has at most DISKREC_NAME_MAX - 1 bytes */
			memcpy(bad[nbad].name, de->d_name, strlen(de->d_name) + 1);
			nbad++;
		} else {
			cnt++;
		}
	}
	if (cnt) /* v and bad are NULL while empty, and qsort's base must not be */
		qsort(v, cnt, sizeof(*v), cmp_rec);
	if (nbad)
		qsort(bad, nbad, sizeof(*bad), cmp_damaged);
out:
	closedir(d);
	if (ret) {
		free(v);
		free(bad);
		return ret;
	}
	*out = v;
	*n = cnt;
	*damaged = bad;
	*ndamaged = nbad;
	return 0;
}

int diskrec_list(const char *disks_dir, struct diskrec **out, size_t *n)
{
	struct diskrec_damaged *bad;
	size_t nbad;
	int ret;

	ret = diskrec_scan(disks_dir, out, n, &bad, &nbad);
	for (size_t i = 0; !ret && i < nbad; i++)
		log_warn("skipping disk '%s': %s", bad[i].name, bad[i].error);
	if (!ret)
		free(bad);
	return ret;
}
