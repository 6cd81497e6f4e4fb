/*
 * mkdisk - builds a rackdisk disk directory from a raw image, for the target tests.
 *
 *   mkdisk --raw FILE --disk DIR --store DIR [--chunk-size N] [--cache all|none|even|odd]
 *          [--socket PATH] [--timeout-ms N] [--size N]
 *
 * Does what rackdiskd does when it creates a disk, without a seed: cuts FILE into chunks
 * (the manifest), puts the chunks chosen by --cache into the chunk store (owner mode),
 * writes the manifest copy to DIR/manifest.json, creates the overlay with disk_create()
 * and writes DIR/lun.json. Chunks left out are what the tests' fetch server serves.
 * Prints one JSON line: image id, chunk counts. Exit status 0, 1 on error, 2 on usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "cache/chunkstore.h"
#include "cache/disk.h"
#include "common/hash.h"
#include "common/util.h"
#include "images/manifest.h"
#include "target/fetch_proto.h"

struct args {
	const char *raw, *disk, *store, *socket, *cache;
	uint64_t chunk_size, size, timeout_ms;
};

static int want_cached(const char *mode, uint64_t idx)
{
	if (!strcmp(mode, "all"))
		return 1;
	if (!strcmp(mode, "even"))
		return idx % 2 == 0;
	if (!strcmp(mode, "odd"))
		return idx % 2 == 1;
	return 0;
}

/* Chunks the raw file into a new manifest, storing the selected chunks. */
static int build_manifest(const struct args *a, struct chunkstore *cs, struct manifest **out,
			  uint64_t *ncached, uint64_t *nzero)
{
	struct manifest *m = NULL;
	char *buf = NULL;
	uint64_t size, i;
	uint32_t len;
	int fd, ret;

	fd = open(a->raw, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	size = (uint64_t)lseek(fd, 0, SEEK_END);
	ret = manifest_new(size, (uint32_t)a->chunk_size, &m);
	if (ret)
		goto out;
	buf = malloc(a->chunk_size);
	ret = buf ? 0 : -ENOMEM;
	for (i = 0; !ret && i < m->nchunks; i++) {
		len = manifest_chunk_len(m, i);
		ret = pread_full(fd, buf, len, i * a->chunk_size);
		if (ret)
			break;
		m->zero[i] = buf_is_zero(buf, len);
		if (m->zero[i]) {
			(*nzero)++;
			continue;
		}
		hash_compute(buf, len, &m->hashes[i]);
		if (want_cached(a->cache, i)) {
			ret = chunkstore_insert(cs, &m->hashes[i], buf, len);
			(*ncached)++;
		}
	}
out:
	free(buf);
	close(fd);
	if (ret)
		manifest_free(m);
	else
		*out = m;
	return ret;
}

static int write_lun_json(const struct args *a, const struct manifest *m, const char *mpath)
{
	char hex[HASH_HEX_LEN + 1], path[PATH_MAX], *text;
	json_t *o;
	int ret;

	hash_to_hex(&m->id, hex);
	o = json_pack("{s:i, s:s, s:s, s:s, s:s, s:I, s:b}", "format", 1, "name", "testdisk",
		      "image_id", hex, "manifest", mpath, "chunk_dir", a->store,
		      "io_timeout_ms", (json_int_t)a->timeout_ms, "direct_io", 0);
	if (!o)
		return -ENOMEM;
	if (a->socket)
		json_object_set_new(o, "socket", json_string(a->socket));
	text = json_dumps(o, JSON_INDENT(1));
	json_decref(o);
	if (!text)
		return -ENOMEM;
	snprintf(path, sizeof(path), "%s/%s", a->disk, LUN_CONFIG_FILE);
	ret = write_file_atomic(path, text, strlen(text));
	free(text);
	return ret;
}

static int run(const struct args *a)
{
	struct chunkstore_opts so = {.dir = a->store};
	struct chunkstore *cs = NULL;
	struct manifest *m = NULL;
	char mpath[PATH_MAX], hex[HASH_HEX_LEN + 1], *mtext = NULL;
	uint64_t ncached = 0, nzero = 0;
	size_t mlen;
	int ret;

	ret = mkdir_p(a->disk, 0755);
	if (!ret)
		ret = chunkstore_open(&so, &cs);
	if (!ret)
		ret = build_manifest(a, cs, &m, &ncached, &nzero);
	if (!ret)
		ret = manifest_serialize(m, &mtext, &mlen);
	if (ret)
		goto out;
	snprintf(mpath, sizeof(mpath), "%s/manifest.json", a->disk);
	ret = write_file_atomic(mpath, mtext, mlen);
	if (!ret)
		ret = disk_create(a->disk, &m->id, a->size ? a->size : (m->size + 511) / 512 * 512);
	if (!ret)
		ret = write_lun_json(a, m, mpath);
	if (!ret) {
		hash_to_hex(&m->id, hex);
		printf("{\"image_id\": \"%s\", \"nchunks\": %llu, \"cached\": %llu, \"zero\": %llu}\n",
		       hex, (unsigned long long)m->nchunks, (unsigned long long)ncached,
		       (unsigned long long)nzero);
	}
out:
	free(mtext);
	if (m)
		manifest_free(m);
	if (cs)
		chunkstore_close(cs);
	return ret;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"raw", required_argument, NULL, 'r'},    {"disk", required_argument, NULL, 'd'},
		{"store", required_argument, NULL, 's'},  {"chunk-size", required_argument, NULL, 'c'},
		{"cache", required_argument, NULL, 'C'},  {"socket", required_argument, NULL, 'S'},
		{"timeout-ms", required_argument, NULL, 't'}, {"size", required_argument, NULL, 'z'},
		{NULL, 0, NULL, 0}};
	struct args a = {.cache = "all", .chunk_size = CHUNK_SIZE_DEFAULT, .timeout_ms = 30000};
	char abs_disk[PATH_MAX], abs_store[PATH_MAX];
	int c, ret;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (c) {
		case 'r': a.raw = optarg; break;
		case 'd': a.disk = optarg; break;
		case 's': a.store = optarg; break;
		case 'C': a.cache = optarg; break;
		case 'S': a.socket = optarg; break;
		case 'c': if (parse_size(optarg, &a.chunk_size)) goto usage; break;
		case 'z': if (parse_size(optarg, &a.size)) goto usage; break;
		case 't': if (parse_size(optarg, &a.timeout_ms)) goto usage; break;
		default: goto usage;
		}
	}
	if (!a.raw || !a.disk || !a.store || optind != argc)
		goto usage;
	if (mkdir_p(a.disk, 0755) || mkdir_p(a.store, 0755) || !realpath(a.disk, abs_disk) ||
	    !realpath(a.store, abs_store)) {
		fprintf(stderr, "mkdisk: %s / %s: %s\n", a.disk, a.store, strerror(errno));
		return 1;
	}
	a.disk = abs_disk;
	a.store = abs_store;
	ret = run(&a);
	if (ret) {
		fprintf(stderr, "mkdisk: %s\n", strerror(-ret));
		return 1;
	}
	return 0;
usage:
	fprintf(stderr, "usage: mkdisk --raw FILE --disk DIR --store DIR [--chunk-size N] "
			"[--cache all|none|even|odd] [--socket PATH] [--timeout-ms N] [--size N]\n");
	return 2;
}
