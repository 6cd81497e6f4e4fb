/*
 * cli.c - `rackdisk image ls|pull|show`, `disk ...`, `cache stats`, `peers`: thin clients
 * of rackdiskd's REST API (appliance/api.h). The daemon validates; the CLI checks only
 * what it needs to build a request, and prints the daemon's error message as is.
 */
#include "appliance/cli.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <curl/curl.h>
#include <jansson.h>

#include "common/util.h"

#define REPLY_MAX (64 * 1024 * 1024)

struct reply {
	char *buf;
	size_t len;
};

static size_t on_data(char *p, size_t size, size_t n, void *arg)
{
	struct reply *r = arg;
	size_t add = size * n;
	char *nb;

	if (r->len + add > REPLY_MAX)
		return 0;
	nb = realloc(r->buf, r->len + add + 1);
	if (!nb)
		return 0;
	memcpy(nb + r->len, p, add);
	r->buf = nb;
	r->len += add;
	r->buf[r->len] = '\0';
	return add;
}

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void fail(const char *fmt, ...)
{
	va_list ap;

	fputs("rackdisk: ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/*
 * One request. Returns 0 with *out (the parsed JSON reply, 2xx), or 1 after printing
 * the error: the daemon's {"error"} message, or why it could not be reached.
 */
static int call(const struct cli_opts *o, const char *method, const char *path, json_t *body,
		json_t **out)
{
	struct reply r = {NULL, 0};
	struct curl_slist *hdrs = NULL;
	char url[2048], errbuf[CURL_ERROR_SIZE] = "";
	char *text = NULL;
	json_error_t jerr;
	long status = 0;
	size_t n;
	CURL *c;
	CURLcode cc;
	int ret = 1;

	*out = NULL;
	/* "http://host:port/" is the same API as without the slash */
	n = strlen(o->api);
	while (n > 0 && o->api[n - 1] == '/')
		n--;
	snprintf(url, sizeof(url), "%.*s%s", (int)n, o->api, path);
	c = curl_easy_init();
	if (!c) {
		fail("cannot initialise libcurl");
		return 1;
	}
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
	curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, 5000L);
	/* A disk create may pull an image from a slow seed. */
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 600000L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	/* rackdiskd's API, on loopback by default: never through a proxy from http_proxy
	 * (bodies may hold CHAP passwords; a proxy cannot reach 127.0.0.1 anyway). */
	curl_easy_setopt(c, CURLOPT_PROXY, "");
	if (body) {
		text = json_dumps(body, JSON_COMPACT);
		hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
		if (!text || !hdrs) {
			fail("cannot build the request to %s %s", method, path);
			goto out;
		}
		curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, text);
	}
	cc = curl_easy_perform(c);
	if (cc != CURLE_OK) {
		fail("cannot reach rackdiskd at %s: %s", o->api,
		     errbuf[0] ? errbuf : curl_easy_strerror(cc));
		goto out;
	}
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
	*out = r.buf ? json_loadb(r.buf, r.len, 0, &jerr) : NULL;
	if (status < 200 || status > 299) {
		json_t *e = json_object_get(*out, "error");

		if (json_is_string(e))
			fail("%s", json_string_value(e));
		else
			fail("rackdiskd answered HTTP %ld to %s %s", status, method, path);
		json_decref(*out);
		*out = NULL;
		goto out;
	}
	if (!*out) {
		fail("rackdiskd sent a reply that is not JSON (%s %s)", method, path);
		goto out;
	}
	ret = 0;
out:
	curl_slist_free_all(hdrs);
	curl_easy_cleanup(c);
	free(text);
	free(r.buf);
	return ret;
}

static void print_json(json_t *j)
{
	char *s = json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS);

	if (s) {
		puts(s);
		free(s);
	}
}

static const char *jstr(json_t *j, const char *key)
{
	const char *s = json_string_value(json_object_get(j, key));

	return s ? s : "";
}

static unsigned long long jnum(json_t *j, const char *key)
{
	return (unsigned long long)json_integer_value(json_object_get(j, key));
}

static const char *size_str(unsigned long long n, char *buf, size_t len)
{
	return format_size(n, buf, len);
}

static int usage_err(const char *msg)
{
	fail("%s", msg);
	return 2;
}

/* --- image --- */

static void print_image(json_t *im)
{
	char sz[32];

	printf("tag:         %s\n", jstr(im, "tag"));
	printf("id:          %s\n", jstr(im, "id"));
	printf("size:        %s (%llu bytes)\n", size_str(jnum(im, "size"), sz, sizeof(sz)),
	       jnum(im, "size"));
	printf("chunk size:  %llu\n", jnum(im, "chunk_size"));
	printf("chunks:      %llu (%llu all-zero)\n", jnum(im, "chunks"),
	       jnum(im, "zero_chunks"));
}

int cli_image_main(const struct cli_opts *o, int argc, char **argv)
{
	const char *sub = argc > 1 ? argv[1] : NULL;
	char path[512];
	json_t *j = NULL, *v;
	size_t i;
	int ret;

	if (!sub)
		return usage_err("usage: rackdisk image ls|pull TAG|show TAG");
	if (!strcmp(sub, "ls")) {
		if (argc > 2)
			return usage_err("usage: rackdisk image ls [--json]");
		ret = call(o, "GET", "/api/v1/images", NULL, &j);
		if (ret)
			return ret;
		if (o->json) {
			print_json(j);
		} else {
			printf("%-24s %-16s %12s  %s\n", "TAG", "ID", "SIZE", "CHUNKS");
			json_array_foreach(j, i, v) {
				char sz[32];

				printf("%-24s %-16.16s %12s  %llu\n", jstr(v, "tag"), jstr(v, "id"),
				       size_str(jnum(v, "size"), sz, sizeof(sz)), jnum(v, "chunks"));
			}
		}
		json_decref(j);
		return 0;
	}
	if ((!strcmp(sub, "pull") || !strcmp(sub, "show")) && argc == 3) {
		/* A 64-hex image id is a valid name too; any other 64 characters went
		 * into the URL as they were ("../", "?", bytes that are not UTF-8). */
		if (!name_is_valid(argv[2]))
			return usage_err("an image is a tag, 1 to 128 of A-Z a-z 0-9 . _ - not "
					 "starting with '.' or '-' (no '/' or '..'), or a 64-hex "
					 "image id");
		if (!strcmp(sub, "pull")) {
			json_t *body = json_pack("{s:s}", "tag", argv[2]);

			ret = call(o, "POST", "/api/v1/images", body, &j);
			json_decref(body);
		} else {
			snprintf(path, sizeof(path), "/api/v1/images/%s", argv[2]);
			ret = call(o, "GET", path, NULL, &j);
		}
		if (ret)
			return ret;
		if (o->json)
			print_json(j);
		else
			print_image(j);
		json_decref(j);
		return 0;
	}
	return usage_err("usage: rackdisk image ls|pull TAG|show TAG  (or publish|verify|ls|"
			 "show with --repo)");
}

/* --- disk --- */

static void print_disk(json_t *d)
{
	json_t *ini = json_object_get(d, "initiators"), *io = json_object_get(d, "io"), *v;
	char sz[32];
	size_t i;

	printf("name:        %s\n", jstr(d, "name"));
	printf("image:       %s (%s)\n", jstr(d, "image"), jstr(d, "image_id"));
	printf("size:        %s (%llu bytes)\n", size_str(jnum(d, "size"), sz, sizeof(sz)),
	       jnum(d, "size"));
	printf("target:      %s (tid %llu, lun %llu)\n", jstr(d, "iqn"), jnum(d, "tid"),
	       jnum(d, "lun"));
	if (json_object_get(d, "scsi_id"))
		printf("scsi id:     %s\n", jstr(d, "scsi_id"));
	printf("initiators:  ");
	if (!json_array_size(ini))
		printf("any");
	json_array_foreach(ini, i, v)
		printf("%s%s", i ? ", " : "", json_string_value(v));
	printf("\n");
	if (json_object_get(d, "chap_user"))
		printf("chap user:   %s\n", jstr(d, "chap_user"));
	if (io)
		printf("io:          %llu reads (%llu bytes), %llu writes (%llu bytes)\n",
		       jnum(io, "read_ops"), jnum(io, "read_bytes"), jnum(io, "write_ops"),
		       jnum(io, "write_bytes"));
	printf("url:         %s\n", jstr(d, "url"));
	/* an export that failed: the URL does not answer yet (rackdiskd tries again) */
	if (!strcmp(jstr(d, "state"), "not_exported"))
		printf("state:       NOT EXPORTED: %s\n", jstr(d, "error"));
}

/*
 * The CHAP password's first line from path, or from stdin for "-", into buf without its
 * line ending: a password on the command line shows in ps and in the shell's history.
 * 0, or 1 after printing why (unreadable, empty, longer than buf holds).
 */
static int read_password(const char *path, char *buf, size_t len)
{
	bool is_stdin = !strcmp(path, "-");
	FILE *f = is_stdin ? stdin : fopen(path, "re");
	size_t n;

	if (!f) {
		fail("cannot read the CHAP password from %s: %s", path, strerror(errno));
		return 1;
	}
	if (!fgets(buf, (int)len, f))
		buf[0] = '\0';
	n = strcspn(buf, "\r\n");
	if (!is_stdin)
		fclose(f);
	if (n == strlen(buf) && n == len - 1) {
		explicit_bzero(buf, len);
		fail("the CHAP password in %s is too long", is_stdin ? "stdin" : path);
		return 1;
	}
	buf[n] = '\0';
	if (!n) {
		fail("no CHAP password in %s (its first line is empty)",
		     is_stdin ? "stdin" : path);
		return 1;
	}
	return 0;
}

/* A disk name the API would accept; otherwise says why (a usage error, exit 2, as a bad
 * image tag is). */
static bool disk_name_ok(const char *name)
{
	if (disk_name_is_valid(name))
		return true;
	fail("invalid disk name '%s' (1 to 128 of A-Z a-z 0-9 . -, no '_' as iSCSI target "
	     "names cannot hold it, no '/' or '..')", name);
	return false;
}

/*
 * A JSON string of an option's value, or NULL after saying which option is not UTF-8:
 * jansson holds only UTF-8, and a value it refused must stop the command, not be left out
 * of the request (a disk created without its CHAP password or initiator list is open).
 */
static json_t *arg_json(const char *opt, const char *v)
{
	json_t *s;

	if (!utf8_is_valid(v)) {
		fail("%s is not valid UTF-8", opt);
		return NULL;
	}
	s = json_string(v);
	if (!s)
		fail("out of memory");
	return s;
}

/* obj[key] = arg_json(opt, v); 0, or 2 (a usage error) after printing why. */
static int set_arg(json_t *obj, const char *key, const char *opt, const char *v)
{
	return json_object_set_new(obj, key, arg_json(opt, v)) ? 2 : 0;
}

/* The POST /api/v1/disks body into *out (ini's reference is taken); 0, or 2 after
 * printing which value could not go into it. cp may be a password read from a file. */
static int create_body(const char *name, const char *image, const char *size, json_t *ini,
		       const char *cu, const char *cp, const char *cp_opt, json_t **out)
{
	json_t *body = json_object(), *chap = NULL;
	int ret = 2;

	if (!body || json_object_set_new(body, "initiators", ini)) {
		fail("out of memory");
		goto out;
	}
	if (set_arg(body, "name", "the disk name", name) ||
	    set_arg(body, "image", "--image", image) ||
	    (size && set_arg(body, "size", "--size", size)))
		goto out;
	if (cu) {
		chap = json_object();
		if (!chap || set_arg(chap, "user", "--chap-user", cu) ||
		    set_arg(chap, "password", cp_opt, cp) ||
		    json_object_set(body, "chap", chap))
			goto out;
	}
	*out = body;
	body = NULL;
	ret = 0;
out:
	json_decref(chap);
	json_decref(body);
	return ret;
}

#define DISK_CREATE_USAGE                                                                  \
	"usage: rackdisk disk create NAME --image TAG [--size S] [--initiator IQN]... "     \
	"[--chap-user U --chap-password P|--chap-password-file FILE|--chap-password -]"

static int disk_create(const struct cli_opts *o, int argc, char **argv)
{
	const char *name = NULL, *image = NULL, *size = NULL, *cu = NULL, *cp = NULL;
	const char *cp_file = NULL, *cp_opt;
	json_t *body = NULL, *ini = json_array(), *j = NULL;
	char pw[256]; /* the API takes 12 to 64 characters */
	int ret;

	if (!ini)
		return usage_err("out of memory");
	for (int i = 2; i < argc; i++) {
		bool has = i + 1 < argc;

		if (!strcmp(argv[i], "--image") && has)
			image = argv[++i];
		else if (!strcmp(argv[i], "--size") && has)
			size = argv[++i];
		else if (!strcmp(argv[i], "--initiator") && has) {
			if (json_array_append_new(ini, arg_json("--initiator", argv[++i]))) {
				json_decref(ini);
				return 2;
			}
		} else if (!strcmp(argv[i], "--chap-user") && has)
			cu = argv[++i];
		else if (!strcmp(argv[i], "--chap-password") && has && !cp && !cp_file)
			cp = argv[++i];
		else if (!strcmp(argv[i], "--chap-password-file") && has && !cp && !cp_file)
			cp_file = argv[++i];
		else if (argv[i][0] != '-' && !name)
			name = argv[i];
		else {
			json_decref(ini);
			fail("unexpected argument '%s'", argv[i]);
			return usage_err(DISK_CREATE_USAGE);
		}
	}
	/* "--chap-password -": one line from stdin, as --chap-password-file - */
	if (cp && !strcmp(cp, "-"))
		cp_file = cp, cp = NULL;
	if (!name || !image || (!cu != !(cp || cp_file))) {
		json_decref(ini);
		return usage_err(DISK_CREATE_USAGE);
	}
	if (!disk_name_ok(name)) {
		json_decref(ini);
		return 2;
	}
	if (cp_file) {
		if (read_password(cp_file, pw, sizeof(pw))) {
			json_decref(ini);
			return 1;
		}
		cp = pw;
	}
	cp_opt = !cp_file	       ? "--chap-password"
		 : strcmp(cp_file, "-") ? "the CHAP password in --chap-password-file"
					: "the CHAP password on stdin";
	ret = create_body(name, image, size, ini, cu, cp, cp_opt, &body);
	if (!ret)
		ret = call(o, "POST", "/api/v1/disks", body, &j);
	json_decref(body);
	explicit_bzero(pw, sizeof(pw));
	if (ret)
		return ret;
	if (o->json) {
		print_json(j);
	} else {
		char sz[32];

		printf("created disk %s: image %s, %s, target %s\n", jstr(j, "name"),
		       jstr(j, "image")[0] ? jstr(j, "image") : jstr(j, "image_id"),
		       size_str(jnum(j, "size"), sz, sizeof(sz)), jstr(j, "iqn"));
		printf("%s\n", jstr(j, "url"));
	}
	json_decref(j);
	return 0;
}

/* disk resize NAME --size S: grows the disk (offline: no initiator logged in). */
static int disk_resize(const struct cli_opts *o, int argc, char **argv)
{
	const char *name = NULL, *size = NULL;
	char path[512], sz[32];
	json_t *body, *j = NULL;
	int ret;

	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--size") && i + 1 < argc)
			size = argv[++i];
		else if (argv[i][0] != '-' && !name)
			name = argv[i];
		else
			return usage_err("usage: rackdisk disk resize NAME --size S");
	}
	if (!name || !size)
		return usage_err("usage: rackdisk disk resize NAME --size S");
	if (!disk_name_ok(name))
		return 2;
	snprintf(path, sizeof(path), "/api/v1/disks/%s", name);
	body = json_object();
	if (!body || set_arg(body, "size", "--size", size)) {
		json_decref(body);
		return 2;
	}
	ret = call(o, "PATCH", path, body, &j);
	json_decref(body);
	if (ret)
		return ret;
	if (o->json)
		print_json(j);
	else
		printf("disk %s is now %s\n", jstr(j, "name"), size_str(jnum(j, "size"), sz, sizeof(sz)));
	json_decref(j);
	return 0;
}

int cli_disk_main(const struct cli_opts *o, int argc, char **argv)
{
	const char *sub = argc > 1 ? argv[1] : NULL;
	char path[512];
	json_t *j = NULL, *v;
	size_t i;
	int ret;

	if (!sub)
		return usage_err("usage: rackdisk disk create|ls|show|resize|rm ...");
	if (!strcmp(sub, "create"))
		return disk_create(o, argc, argv);
	if (!strcmp(sub, "resize"))
		return disk_resize(o, argc, argv);
	if (!strcmp(sub, "ls")) {
		if (argc > 2)
			return usage_err("usage: rackdisk disk ls [--json]");
		ret = call(o, "GET", "/api/v1/disks", NULL, &j);
		if (ret)
			return ret;
		if (o->json) {
			print_json(j);
		} else {
			printf("%-20s %-20s %10s %5s  %s\n", "NAME", "IMAGE", "SIZE", "TID", "URL");
			json_array_foreach(j, i, v) {
				bool down = !strcmp(jstr(v, "state"), "not_exported");
				char sz[32];

				if (!strcmp(jstr(v, "state"), "damaged")) {
					/* no record to show: say so, and why */
					printf("%-20s %-20s %10s %5llu  DAMAGED: %s\n",
					       jstr(v, "name"), "-", "-", jnum(v, "tid"),
					       jstr(v, "error"));
					continue;
				}
				/* not exported: its URL does not answer; say why */
				printf("%-20s %-20s %10s %5llu  %s%s\n", jstr(v, "name"),
				       jstr(v, "image"), size_str(jnum(v, "size"), sz, sizeof(sz)),
				       jnum(v, "tid"), down ? "NOT EXPORTED: " : "",
				       jstr(v, down ? "error" : "url"));
			}
		}
		json_decref(j);
		return 0;
	}
	if (!strcmp(sub, "show") || !strcmp(sub, "rm")) {
		bool force = false;
		const char *name = NULL;

		for (int k = 2; k < argc; k++) {
			if (!strcmp(sub, "rm") && !strcmp(argv[k], "--force"))
				force = true;
			else if (!name)
				name = argv[k];
			else
				name = NULL, k = argc;
		}
		if (!name)
			return usage_err(!strcmp(sub, "rm") ? "usage: rackdisk disk rm NAME [--force]"
							    : "usage: rackdisk disk show NAME "
							      "[--json]");
		if (!disk_name_ok(name))
			return 2;
		snprintf(path, sizeof(path), "/api/v1/disks/%s%s", name, force ? "?force=1" : "");
		ret = call(o, !strcmp(sub, "rm") ? "DELETE" : "GET", path, NULL, &j);
		if (ret)
			return ret;
		if (o->json)
			print_json(j);
		else if (!strcmp(sub, "rm"))
			printf("deleted disk %s\n", name);
		else
			print_disk(j);
		json_decref(j);
		return 0;
	}
	return usage_err("usage: rackdisk disk create|ls|show|resize|rm ...");
}

/* --- cache, peers --- */

int cli_cache_main(const struct cli_opts *o, int argc, char **argv)
{
	static const char *src[] = {"local", "peer", "seed"};
	json_t *j = NULL, *st, *fe;
	char a[32], b[32];
	int ret;

	if (argc != 2 || strcmp(argv[1], "stats"))
		return usage_err("usage: rackdisk cache stats [--json]");
	ret = call(o, "GET", "/api/v1/cache", NULL, &j);
	if (ret)
		return ret;
	if (o->json) {
		print_json(j);
		json_decref(j);
		return 0;
	}
	st = json_object_get(j, "store");
	fe = json_object_get(j, "fetch");
	printf("cache dir:   %s\n", jstr(j, "dir"));
	printf("used:        %s of %s (%llu chunks, %llu pinned)\n",
	       size_str(jnum(st, "used_bytes"), a, sizeof(a)),
	       jnum(st, "capacity_bytes") ? size_str(jnum(st, "capacity_bytes"), b, sizeof(b))
					  : "unlimited",
	       jnum(st, "chunks"), jnum(st, "pinned"));
	printf("lookups:     %llu hits, %llu misses\n", jnum(st, "hits"), jnum(st, "misses"));
	printf("evictions:   %llu; corrupt files dropped: %llu\n", jnum(st, "evictions"),
	       jnum(st, "dropped_corrupt"));
	/* fetched and verified but not kept: the reads that wanted them failed */
	printf("inserts:     %llu; failed: %llu\n", jnum(st, "inserts"),
	       jnum(st, "insert_failures"));
	for (int s = 0; s < 3; s++) {
		json_t *x = json_object_get(fe, src[s]);

		printf("from %-6s  %llu chunks, %s, %llu failures, %llu bad hashes\n", src[s],
		       jnum(x, "fetches"), size_str(jnum(x, "bytes"), a, sizeof(a)),
		       jnum(x, "failures"), jnum(x, "bad_hash"));
	}
	printf("fetches:     %llu retries, %llu timeouts, %llu coalesced, %llu readahead\n",
	       jnum(fe, "retries"), jnum(fe, "timeouts"), jnum(fe, "coalesced"),
	       jnum(fe, "readahead"));
	json_decref(j);
	return 0;
}

int cli_peers_main(const struct cli_opts *o, int argc, char **argv)
{
	json_t *j = NULL, *v;
	size_t i;
	int ret;

	if (argc != 1)
		return usage_err("usage: rackdisk peers [--json]");
	ret = call(o, "GET", "/api/v1/peers", NULL, &j);
	if (ret)
		return ret;
	if (o->json) {
		print_json(j);
	} else {
		char b[32];

		/* FROM/FAILURES: what this node fetched from each peer, and how often it
		 * failed (transport, refusal or wrong bytes: "failures" counts them all,
		 * "bad_data" is the wrong bytes among them). */
		printf("%-20s %-4s %-12s %-24s %-5s %10s %8s\n", "NODE", "ID", "RACK", "ADDRESS",
		       "STATE", "FROM", "FAILURES");
		json_array_foreach(j, i, v) {
			bool self = json_is_true(json_object_get(v, "self"));
			char id[24] = "-"; /* null standalone: no directory */

			if (json_is_integer(json_object_get(v, "id")))
				snprintf(id, sizeof(id), "%llu", jnum(v, "id"));
			printf("%-20s %-4s %-12s %-24s %-5s %10s %8llu%s\n", jstr(v, "name"), id,
			       jstr(v, "rack"),
			       jstr(v, "address")[0] ? jstr(v, "address") : "-", jstr(v, "state"),
			       self ? "-" : size_str(jnum(v, "bytes"), b, sizeof(b)),
			       jnum(v, "failures"),
			       self ? "  (this node)" : "");
		}
	}
	json_decref(j);
	return 0;
}
