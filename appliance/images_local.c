/*
 * images_local.c - the images an appliance has pulled: manifest copies under
 * <state_dir>/images/ (see appliance.h).
 *
 * Invariants:
 *  1. images/<id>.json holds bytes whose SHA-256 is <id> and that parse as a manifest;
 *     it is written (atomically) before any tag or disk refers to it.
 *  2. images/tags/<tag> is written after the manifest it names, so a tag never points
 *     at a missing manifest.
 *  3. A manifest copy is never removed while a disk record names its id (nothing here
 *     removes manifests yet).
 */
#include "appliance/appliance.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"
#include "images/manifest.h"
#include "images/repo.h"
#include "images/repoloc.h"

void appliance_manifest_path(const struct appliance *a, const struct chunk_hash *id,
			     char *buf, size_t len)
{
	char hex[HASH_HEX_LEN + 1];

	hash_to_hex(id, hex);
	snprintf(buf, len, "%s/%s.json", a->images_dir, hex);
}

static void fill_info(struct image_info *info, const char *tag, const struct manifest *m)
{
	memset(info, 0, sizeof(*info));
	snprintf(info->tag, sizeof(info->tag), "%s", tag ? tag : "");
	info->id = m->id;
	info->size = m->size;
	info->chunk_size = m->chunk_size;
	info->nchunks = m->nchunks;
	for (uint64_t i = 0; i < m->nchunks; i++)
		info->zero_chunks += m->zero[i] ? 1 : 0;
}

/* Loads and checks the local copy of id (invariant 1). */
static int load_manifest(struct appliance *a, const struct chunk_hash *id,
			 struct manifest **out, char *err, size_t errlen)
{
	char path[PATH_MAX], perr[200] = "", *buf = NULL;
	size_t len;
	int ret;

	appliance_manifest_path(a, id, path, sizeof(path));
	ret = read_file(path, MANIFEST_MAX_BYTES, &buf, &len);
	if (ret) {
		snprintf(err, errlen, "manifest copy %s: %s", path, strerror(-ret));
		return ret;
	}
	ret = manifest_parse(buf, len, out, perr, sizeof(perr));
	free(buf);
	if (ret) {
		snprintf(err, errlen, "manifest copy %s: %s", path, perr);
		return ret;
	}
	if (!hash_equal(&(*out)->id, id)) {
		snprintf(err, errlen, "manifest copy %s does not hash to its name", path);
		manifest_free(*out);
		*out = NULL;
		return -EBADMSG;
	}
	return 0;
}

static int read_tag(struct appliance *a, const char *tag, struct chunk_hash *id)
{
	char path[PATH_MAX], *buf = NULL;
	size_t len;
	int ret;

	if (snprintf(path, sizeof(path), "%s/tags/%s", a->images_dir, tag) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	ret = read_file(path, 4096, &buf, &len);
	if (ret)
		return ret;
	while (len && isspace((unsigned char)buf[len - 1]))
		len--;
	ret = hash_from_hex(buf, len, id) ? -EBADMSG : 0;
	free(buf);
	return ret;
}

/* The error of a failed request to the seed r, in words (repo_strerror: the HTTP status,
 * or what the transfer ran into, and the URL). The seed's URL is named without its
 * user:password@: this message is an API reply and a log line. */
static int errno_msg(struct repo *r, int ret, char *err, size_t errlen, const char *what,
		     const char *tag, const char *seed)
{
	const char *url = REPOLOC_SHOWN(seed);

	if (ret == -ENOENT)
		snprintf(err, errlen, "image '%s' not found on the seed %s", tag, url);
	else if (ret == -EFBIG)
		snprintf(err, errlen, "%s of image '%s' from the seed %s: over the %u-byte limit "
			 "of a manifest", what, tag, url, MANIFEST_MAX_BYTES);
	else
		snprintf(err, errlen, "%s of image '%s' from the seed %s: %s", what, tag, url,
			 repo_strerror(r, ret));
	return ret;
}

int appliance_image_pull(struct appliance *a, const char *tag, struct image_info *out,
			 char *err, size_t errlen)
{
	char rel[128], hex[HASH_HEX_LEN + 1], path[PATH_MAX], perr[200] = "";
	struct manifest *m = NULL;
	struct repo *r = NULL;
	struct chunk_hash id;
	char *buf = NULL;
	size_t len;
	int ret;

	if (!repo_tag_name_valid(tag)) {
		snprintf(err, errlen, "invalid image tag '%s'", tag);
		return -EINVAL;
	}
	if (repo_name_is_id(tag)) {
		/* publish refuses such tags: this is an image id, which is pulled by a tag */
		snprintf(err, errlen, "'%s' is an image id, not a tag: pull the image by a tag "
			 "that names it", tag);
		return -EINVAL;
	}
	ret = repo_open(a->cfg.seed_url, &r);
	if (ret) {
		snprintf(err, errlen, "cannot open the seed %s: %s",
			 REPOLOC_SHOWN(a->cfg.seed_url), strerror(-ret));
		return ret;
	}
	/* The connect timeout and stall window, not a cap on the whole transfer: a manifest
	 * may be up to MANIFEST_MAX_BYTES (repo_set_timeout_ms). */
	repo_set_timeout_ms(r, (long)a->cfg.seed_request_timeout_ms);
	ret = repo_resolve_tag(r, tag, &id);
	if (ret) {
		errno_msg(r, ret, err, errlen, "tag lookup", tag, a->cfg.seed_url);
		goto out;
	}
	hash_to_hex(&id, hex);
	snprintf(rel, sizeof(rel), "manifests/%s.json", hex);
	ret = repo_fetch(r, rel, MANIFEST_MAX_BYTES, &buf, &len);
	if (ret) {
		errno_msg(r, ret, err, errlen, "manifest download", tag, a->cfg.seed_url);
		/* The tag exists: a missing manifest is an inconsistent repository, an oversized
		 * one a bad seed (502), not a request of the client's that is too large (413). */
		if (ret == -ENOENT || ret == -EFBIG)
			ret = -EBADMSG;
		goto out;
	}
	ret = manifest_parse(buf, len, &m, perr, sizeof(perr));
	if (ret) {
		snprintf(err, errlen, "manifest of image '%s' on the seed is invalid: %s", tag,
			 perr);
		ret = -EBADMSG;
		goto out;
	}
	if (!hash_equal(&m->id, &id)) {
		snprintf(err, errlen, "manifest of image '%s' on the seed does not match its id",
			 tag);
		ret = -EBADMSG;
		goto out;
	}
	/* Invariants 1 and 2: manifest first, then the tag. */
	appliance_manifest_path(a, &id, path, sizeof(path));
	ret = write_file_atomic(path, buf, len);
	if (!ret) {
		char line[HASH_HEX_LEN + 2];

		snprintf(line, sizeof(line), "%s\n", hex);
		if (snprintf(path, sizeof(path), "%s/tags/%s", a->images_dir, tag) >=
		    (int)sizeof(path))
			ret = -ENAMETOOLONG;
		else
			ret = write_file_atomic(path, line, strlen(line));
	}
	if (ret) {
		snprintf(err, errlen, "storing the manifest of '%s': %s", tag, strerror(-ret));
		goto out;
	}
	fill_info(out, tag, m);
	log_info("pulled image %s (%s, %llu bytes)", tag, hex, (unsigned long long)m->size);
out:
	manifest_free(m);
	free(buf);
	repo_close(r);
	return ret;
}

int appliance_image_get(struct appliance *a, const char *ref, struct image_info *out,
			char *err, size_t errlen)
{
	struct manifest *m = NULL;
	struct chunk_hash id;
	bool by_id = !hash_from_hex(ref, strlen(ref), &id);
	int ret;

	if (!by_id) {
		if (!name_is_valid(ref)) {
			snprintf(err, errlen, "invalid image tag '%s'", ref);
			return -EINVAL;
		}
		ret = read_tag(a, ref, &id);
		if (ret) {
			snprintf(err, errlen, "image '%s' has not been pulled", ref);
			return ret == -ENOENT ? -ENOENT : ret;
		}
	}
	ret = load_manifest(a, &id, &m, err, errlen);
	if (ret) {
		if (ret == -ENOENT)
			snprintf(err, errlen, "image '%s' has not been pulled", ref);
		return ret;
	}
	fill_info(out, by_id ? "" : ref, m);
	manifest_free(m);
	return 0;
}

static int cmp_info(const void *x, const void *y)
{
	return strcmp(((const struct image_info *)x)->tag, ((const struct image_info *)y)->tag);
}

int appliance_image_list(struct appliance *a, struct image_info **out, size_t *n)
{
	struct image_info *v = NULL;
	size_t cnt = 0, cap = 0;
	char path[PATH_MAX], err[256];
	struct dirent *de;
	DIR *d;

	*out = NULL;
	*n = 0;
	if (snprintf(path, sizeof(path), "%s/tags", a->images_dir) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	d = opendir(path);
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	while ((de = readdir(d))) {
		if (!name_is_valid(de->d_name)) /* also skips write_file_atomic's temp files */
			continue;
		if (cnt == cap) {
			size_t nc = cap ? cap * 2 : 16;
			struct image_info *nv = realloc(v, nc * sizeof(*v));

			if (!nv) {
				closedir(d);
				free(v);
				return -ENOMEM;
			}
			v = nv;
			cap = nc;
		}
		if (appliance_image_get(a, de->d_name, &v[cnt], err, sizeof(err))) {
			log_warn("skipping image '%s': %s", de->d_name, err);
			continue;
		}
		cnt++;
	}
	closedir(d);
	if (cnt) /* v is NULL while empty, and qsort's base must not be */
		qsort(v, cnt, sizeof(*v), cmp_info);
	*out = v;
	*n = cnt;
	return 0;
}
