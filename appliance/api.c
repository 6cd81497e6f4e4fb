/*
 * api.c - see api.h. libmicrohttpd with a thread per connection (a disk create may wait
 * for the seed), bodies bounded by [api] max_body, JSON through jansson.
 */
#include "appliance/api.h"

#include <errno.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>

#include <jansson.h>
#include <microhttpd.h>

#include "appliance/appliance.h"
#include "appliance/fetchsrv.h"
#include "cache/chunkstore.h"
#include "cluster/fetcher.h"
#include "cluster/peering.h"
#include "common/log.h"
#include "common/util.h"
#include "target/tgtmgr.h"

#define PREFIX "/api/v1"

/*
 * Connection limits. Every connection holds a thread, and one idle for the timeout is
 * closed; an address gets at most API_MAX_PER_IP of them, so a client elsewhere holding
 * idle sockets leaves the rest to others (the CLI on loopback). Local clients share one
 * address: up to 64 concurrent CLI calls.
 */
#define API_MAX_CONNECTIONS 128
#define API_MAX_PER_IP 64
#define API_IDLE_TIMEOUT_S 60

struct api {
	struct appliance *a;
	struct MHD_Daemon *d;
	struct log_limit mhd_log_limit;
};

/* Per-request state, from on_uri to completed: the body read so far. */
struct req {
	char *body;
	size_t len, cap;
	bool started; /* the handler has seen the headers */
	bool too_big;
	bool nul_in_uri;
};

unsigned api_status_for_errno(int err)
{
	switch (err) {
	case -EINVAL:
	case -ENAMETOOLONG:
	case -ERANGE:
		return 400;
	case -ENOENT:
		return 404;
	case -EEXIST:
	case -EBUSY:
	case -EUCLEAN: /* a damaged disk record: the request was fine, the disk is not */
		return 409;
	case -EFBIG:
	case -E2BIG:
		return 413;
	case -EBADMSG:
	case -ECONNREFUSED:
	case -EIO:
	case -ETIMEDOUT:
	case -EHOSTUNREACH:
		return 502;
	default:
		return 500;
	}
}

/* The methods a route takes, for the Allow header of its 405 (RFC 9110 15.5.6). */
#define ALLOW_GET "GET, HEAD"
#define ALLOW_GET_POST "GET, HEAD, POST"
#define ALLOW_DISK "GET, HEAD, PATCH, DELETE"

/* allow: the Allow header's value, or NULL for none. */
static enum MHD_Result send_text_allow(struct MHD_Connection *c, unsigned status, char *text,
				       size_t len, const char *type, const char *allow)
{
	struct MHD_Response *r;
	enum MHD_Result ret;

	r = MHD_create_response_from_buffer(len, text, MHD_RESPMEM_MUST_FREE);
	if (!r) {
		free(text);
		return MHD_NO;
	}
	MHD_add_response_header(r, "Content-Type", type);
	MHD_add_response_header(r, "Cache-Control", "no-store");
	if (allow)
		MHD_add_response_header(r, MHD_HTTP_HEADER_ALLOW, allow);
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned status, char *text,
				 size_t len, const char *type)
{
	return send_text_allow(c, status, text, len, type, NULL);
}

/*
 * A fixed JSON error when the reply itself could not be built (out of memory, a string
 * jansson refused): the client gets an answer, never a dropped connection.
 */
static enum MHD_Result send_fallback(struct MHD_Connection *c, unsigned status)
{
	static const char body[] = "{\n  \"error\": \"internal error: cannot encode the "
				   "reply\"\n}\n";
	struct MHD_Response *r;
	enum MHD_Result ret;

	log_warn("api: cannot encode a reply (HTTP %u): a fixed error was sent", status);
	r = MHD_create_response_from_buffer(sizeof(body) - 1, (void *)body,
					    MHD_RESPMEM_PERSISTENT);
	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, "Content-Type", "application/json");
	MHD_add_response_header(r, "Cache-Control", "no-store");
	ret = MHD_queue_response(c, status, r);
	MHD_destroy_response(r);
	return ret;
}

/* Sends j (reference stolen); NULL j (its construction failed) is a 500. */
static enum MHD_Result send_json_allow(struct MHD_Connection *c, unsigned status, json_t *j,
				       const char *allow)
{
	char *text = j ? json_dumps(j, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
	size_t len;

	json_decref(j);
	if (!text)
		return send_fallback(c, status < 400 ? 500 : status);
	len = strlen(text);
	/* One more byte for the newline curl users expect at the end of a reply. */
	char *nl = realloc(text, len + 2);
	if (nl) {
		text = nl;
		text[len++] = '\n';
		text[len] = '\0';
	}
	return send_text_allow(c, status, text, len, "application/json", allow);
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, json_t *j)
{
	return send_json_allow(c, status, j, NULL);
}

static enum MHD_Result send_error(struct MHD_Connection *c, unsigned status, const char *msg)
{
	return send_json(c, status, api_error_json(msg));
}

/* 405, with the methods the resource takes. */
static enum MHD_Result send_405(struct MHD_Connection *c, const char *allow)
{
	return send_json_allow(c, 405, api_error_json("method not allowed"), allow);
}

static json_t *image_json(const struct image_info *info)
{
	char hex[HASH_HEX_LEN + 1];

	hash_to_hex(&info->id, hex);
	return json_pack("{s:s, s:s, s:I, s:i, s:I, s:I}", "tag", info->tag, "id", hex, "size",
			 (json_int_t)info->size, "chunk_size", (int)info->chunk_size, "chunks",
			 (json_int_t)info->nchunks, "zero_chunks", (json_int_t)info->zero_chunks);
}

/* A disk with a readable record: "state" "ok", or "not_exported" with why in "error"
 * while its export fails (appliance/exports.c; its url is where it will be). */
static json_t *disk_json(struct appliance *a, const struct diskrec *r)
{
	char url[512], iqn[DISKREC_IQN_MAX], why[600];
	json_t *j = diskrec_to_json(r, false);
	bool down;

	if (!j)
		return NULL;
	appliance_disk_url(a, r, url, sizeof(url));
	appliance_disk_iqn(a, r->name, iqn, sizeof(iqn));
	down = appliance_disk_not_exported(a, r->name, why, sizeof(why));
	json_object_del(j, "format");
	json_object_set_new(j, "iqn", json_string(iqn));
	json_object_set_new(j, "url", json_string(url));
	json_object_set_new(j, "state", json_string(down ? "not_exported" : "ok"));
	if (down) {
		size_t n = strlen(why);
		json_t *e;

		snprintf(why + n, sizeof(why) - n, "; rackdiskd tries again (fix it and send "
			 "SIGHUP to try at once)");
		e = api_error_json(why); /* paths need not be UTF-8 */
		json_object_set(j, "error", json_object_get(e, "error"));
		json_decref(e);
	}
	return j;
}

/* A disk whose record is damaged: what is known of it, and what to do. */
static json_t *damaged_json(struct appliance *a, const struct diskrec_damaged *b)
{
	char iqn[DISKREC_IQN_MAX], msg[sizeof(b->error) + 128];
	json_t *j;

	appliance_disk_iqn(a, b->name, iqn, sizeof(iqn));
	snprintf(msg, sizeof(msg), "%s; restore it and send rackdiskd SIGHUP, or delete the "
		 "disk with force", b->error);
	j = json_pack("{s:s, s:s, s:s, s:s}", "name", b->name, "state", "damaged", "iqn", iqn,
		      "error", msg);
	if (j && b->tid)
		json_object_set_new(j, "tid", json_integer(b->tid));
	return j;
}

/* "status" is "degraded" while a disk's record is damaged (appliance_reconcile) or a
 * disk is not exported (appliance/exports.c). */
static enum MHD_Result get_health(struct api *api, struct MHD_Connection *c)
{
	struct appliance *a = api->a;
	int damaged = appliance_disks_damaged(a);
	struct appliance_export_stats xs;
	json_t *h;

	if (damaged < 0)
		log_warn("health: listing the disks: %s", strerror(-damaged));
	appliance_exports_stats(a, &xs);
	h = json_pack("{s:s, s:s, s:s, s:I, s:i, s:b, s:I, s:i, s:I}", "status",
		      damaged > 0 || xs.not_exported ? "degraded" : "ok", "node",
		      a->cfg.node_name, "rack", a->cfg.rack, "uptime_s",
		      (json_int_t)((now_ns() - a->started_ns) / 1000000000ULL), "tgtd_pid",
		      (int)tgtmgr_pid(a->tgt), "tgtd_spawned", a->cfg.tgtd_spawn, "reconciles",
		      (json_int_t)a->reconciles, "damaged_disks", damaged > 0 ? damaged : 0,
		      "not_exported_disks", (json_int_t)xs.not_exported);
	return send_json(c, 200, h);
}

static enum MHD_Result get_images(struct api *api, struct MHD_Connection *c)
{
	struct image_info *v = NULL;
	size_t n = 0;
	json_t *arr;
	int ret = appliance_image_list(api->a, &v, &n);

	if (ret)
		return send_error(c, api_status_for_errno(ret), strerror(-ret));
	arr = json_array();
	for (size_t i = 0; i < n; i++)
		json_array_append_new(arr, image_json(&v[i]));
	free(v);
	return send_json(c, 200, arr);
}

static enum MHD_Result get_image(struct api *api, struct MHD_Connection *c, const char *ref)
{
	struct image_info info;
	char err[512];
	int ret = appliance_image_get(api->a, ref, &info, err, sizeof(err));

	if (ret)
		return send_error(c, api_status_for_errno(ret), err);
	return send_json(c, 200, image_json(&info));
}

static enum MHD_Result post_image(struct api *api, struct MHD_Connection *c, struct req *rq)
{
	char tag[DISKREC_NAME_MAX], err[512];
	struct image_info info;
	int ret;

	if (api_parse_image_request(rq->body, rq->len, tag, sizeof(tag), err, sizeof(err)))
		return send_error(c, 400, err);
	/* not under a->lock: a pull waits on the seed (appliance_image_pull_serial) */
	ret = appliance_image_pull_serial(api->a, tag, &info, err, sizeof(err));
	if (ret)
		return send_error(c, api_status_for_errno(ret), err);
	return send_json(c, 200, image_json(&info));
}

/* Every disk by name, those with a damaged record too ("state": "damaged"). */
static enum MHD_Result get_disks(struct api *api, struct MHD_Connection *c)
{
	struct diskrec_damaged *bad = NULL;
	struct diskrec *v = NULL;
	size_t n = 0, nbad = 0, i = 0, k = 0;
	json_t *arr;
	int ret = appliance_disk_scan(api->a, &v, &n, &bad, &nbad);

	if (ret)
		return send_error(c, api_status_for_errno(ret), strerror(-ret));
	arr = json_array();
	while (arr && (i < n || k < nbad)) {
		if (k == nbad || (i < n && strcmp(v[i].name, bad[k].name) < 0))
			json_array_append_new(arr, disk_json(api->a, &v[i++]));
		else
			json_array_append_new(arr, damaged_json(api->a, &bad[k++]));
	}
	free(v);
	free(bad);
	return send_json(c, 200, arr);
}

static enum MHD_Result get_disk(struct api *api, struct MHD_Connection *c, const char *name)
{
	struct tgtmgr_lun_stats st;
	struct diskrec r;
	char msg[PATH_MAX + 512];
	json_t *j;
	int ret;

	if (!name_is_valid(name))
		return send_error(c, 400, "invalid disk name");
	ret = appliance_disk_get(api->a, name, &r, msg, sizeof(msg));
	if (ret) {
		if (ret == -EUCLEAN) {
			size_t n = strlen(msg);

			snprintf(msg + n, sizeof(msg) - n, "; restore the file and send rackdiskd "
				 "SIGHUP, or remove the disk with `rackdisk disk rm %s --force`",
				 name);
		}
		return send_error(c, api_status_for_errno(ret), msg);
	}
	j = disk_json(api->a, &r);
	if (j && !tgtmgr_lun_stats(api->a->tgt, r.tid, r.lun, &st))
		json_object_set_new(j, "io", json_pack("{s:I, s:I, s:I, s:I}", "read_bytes",
						       (json_int_t)st.read_bytes, "read_ops",
						       (json_int_t)st.read_ops, "write_bytes",
						       (json_int_t)st.write_bytes, "write_ops",
						       (json_int_t)st.write_ops));
	return send_json(c, 200, j);
}

static enum MHD_Result post_disk(struct api *api, struct MHD_Connection *c, struct req *rq)
{
	struct disk_request dr;
	struct diskrec r;
	char err[512];
	int ret;

	if (api_parse_disk_request(rq->body, rq->len, &dr, err, sizeof(err)))
		return send_error(c, 400, err);
	ret = appliance_disk_create(api->a, &dr, &r, err, sizeof(err));
	if (ret)
		return send_error(c, api_status_for_errno(ret), err);
	return send_json(c, 201, disk_json(api->a, &r));
}

static enum MHD_Result delete_disk(struct api *api, struct MHD_Connection *c, const char *name)
{
	const char *force = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "force");
	bool f = force && (!strcmp(force, "1") || !strcmp(force, "true"));
	char err[512];
	int ret;

	if (!name_is_valid(name))
		return send_error(c, 400, "invalid disk name");
	ret = appliance_disk_delete(api->a, name, f, err, sizeof(err));
	if (ret)
		return send_error(c, api_status_for_errno(ret), err);
	return send_json(c, 200, json_pack("{s:s}", "deleted", name));
}

static enum MHD_Result patch_disk(struct api *api, struct MHD_Connection *c, const char *name,
				  struct req *rq)
{
	struct diskrec r;
	uint64_t size;
	char err[512];
	int ret;

	if (!name_is_valid(name))
		return send_error(c, 400, "invalid disk name");
	if (api_parse_resize_request(rq->body, rq->len, &size, err, sizeof(err)))
		return send_error(c, 400, err);
	ret = appliance_disk_resize(api->a, name, size, &r, err, sizeof(err));
	if (ret)
		return send_error(c, api_status_for_errno(ret), err);
	return send_json(c, 200, disk_json(api->a, &r));
}

static enum MHD_Result get_cache(struct api *api, struct MHD_Connection *c)
{
	static const char *src[FETCH_SRC_COUNT] = {"local", "peer", "seed"};
	struct chunkstore_stats cs;
	struct fetcher_stats fs;
	json_t *j, *fetch;

	chunkstore_get_stats(api->a->store, &cs);
	appliance_fetch_stats(api->a, &fs);
	fetch = json_pack("{s:I, s:I, s:I, s:I, s:I}", "retries", (json_int_t)fs.retries,
			  "timeouts", (json_int_t)fs.timeouts, "coalesced",
			  (json_int_t)fs.coalesced, "readahead", (json_int_t)fs.readahead,
			  "inflight", (json_int_t)fs.inflight);
	for (int s = 0; fetch && s < FETCH_SRC_COUNT; s++)
		json_object_set_new(fetch, src[s],
				    json_pack("{s:I, s:I, s:I, s:I}", "fetches",
					      (json_int_t)fs.fetches[s], "bytes",
					      (json_int_t)fs.bytes[s], "failures",
					      (json_int_t)fs.failures[s], "bad_hash",
					      (json_int_t)fs.bad_hash[s]));
	j = json_pack("{s:s, s:{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I}, s:o}", "dir",
		      api->a->cfg.cache_dir, "store", "chunks", (json_int_t)cs.nchunks,
		      "used_bytes", (json_int_t)cs.bytes_used, "capacity_bytes",
		      (json_int_t)cs.capacity, "hits", (json_int_t)cs.hits, "misses",
		      (json_int_t)cs.misses, "inserts", (json_int_t)cs.inserts,
		      "insert_failures", (json_int_t)cs.insert_failures, "evictions",
		      (json_int_t)cs.evictions, "pinned", (json_int_t)cs.pinned,
		      "dropped_corrupt", (json_int_t)cs.dropped_corrupt, "fetch", fetch);
	return send_json(c, 200, j);
}

static json_t *peer_json(const struct peering_peer *p)
{
	return json_pack("{s:s, s:I, s:s, s:s, s:b, s:b, s:s, s:I, s:I, s:I, s:I, s:I, s:I}",
			 "name", p->node.name, "id", (json_int_t)p->node.node_id, "address",
			 p->node.addr, "rack", p->node.rack, "alive", p->node.alive, "self",
			 p->self, "state", p->node.alive ? "up" : "down", "heartbeat_ttl_ms",
			 (json_int_t)p->node.ttl_ms, "bytes", (json_int_t)p->bytes, "ok",
			 (json_int_t)p->ok, "failures", (json_int_t)p->failures, "bad_data",
			 (json_int_t)p->bad_data, "not_found", (json_int_t)p->not_found);
}

/* Standalone: this node alone, with the fields a cluster's entries have (a client reads
 * one shape): no directory id or heartbeat (null), nothing fetched from peers (0). */
static json_t *standalone_peers_json(const struct appliance *a)
{
	static const struct peering_peer me = {.self = true, .node = {.alive = true}};
	char addr[300] = "";
	json_t *j = peer_json(&me);

	/* name and rack from the config as they are (peering_peer's fields are shorter) */
	if (a->cfg.cluster_advertise.host[0])
		config_addr_str(&a->cfg.cluster_advertise, addr, sizeof(addr));
	if (!j || json_object_set_new(j, "name", json_string(a->cfg.node_name)) ||
	    json_object_set_new(j, "rack", json_string(a->cfg.rack)) ||
	    json_object_set_new(j, "address", json_string(addr)) ||
	    json_object_set_new(j, "id", json_null()) ||
	    json_object_set_new(j, "heartbeat_ttl_ms", json_null())) {
		json_decref(j);
		return NULL;
	}
	return json_pack("[o]", j);
}

/* The nodes of the directory, all of them, with what this node fetched from each;
 * standalone, this node alone. */
static enum MHD_Result get_peers(struct api *api, struct MHD_Connection *c)
{
	struct appliance *a = api->a;
	struct peering_peer *v;
	json_t *arr;
	int n;

	if (!a->peering)
		return send_json(c, 200, standalone_peers_json(a));
	n = appliance_peer_list(a->peering, &v);
	if (n < 0)
		return send_error(c, n == -ENOMEM ? 500 : 503,
				  n == -ENOTCONN ? "the cluster directory (Redis) is unreachable"
						 : strerror(-n));
	arr = json_array();
	for (int i = 0; arr && i < n; i++)
		json_array_append_new(arr, peer_json(&v[i]));
	free(v);
	return send_json(c, 200, arr);
}

static enum MHD_Result get_metrics(struct api *api, struct MHD_Connection *c)
{
	char *text = NULL;
	size_t len = 0;

	if (metrics_render(api->a, &text, &len))
		return send_error(c, 500, "cannot render metrics");
	return send_text(c, 200, text, len, "text/plain; version=0.0.4");
}

/*
 * A request with a body must say it is JSON: "application/json", parameters (charset)
 * allowed. A browser page may send a cross-site POST without asking first (no CORS
 * preflight) only as text/plain, form data or multipart: refusing those keeps any web
 * page the operator visits from creating or deleting disks through this API.
 */
static bool is_json_type(const char *ct)
{
	static const char json[] = "application/json";
	size_t n = sizeof(json) - 1;

	if (!ct)
		return false;
	while (*ct == ' ' || *ct == '\t')
		ct++;
	return !strncasecmp(ct, json, n) &&
	       (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ' || ct[n] == '\t');
}

/* true after answering 415 (*ret: the queueing's result) when the body is not declared
 * JSON; checked once the route is known, so a method the route lacks is still a 405. */
static bool body_not_json(struct MHD_Connection *c, enum MHD_Result *ret)
{
	if (is_json_type(MHD_lookup_connection_value(c, MHD_HEADER_KIND,
						     MHD_HTTP_HEADER_CONTENT_TYPE)))
		return false;
	*ret = send_error(c, 415, "the request body must be JSON, sent with Content-Type: "
			  "application/json");
	return true;
}

/* Routes a complete request. */
static enum MHD_Result route(struct api *api, struct MHD_Connection *c, const char *url,
			     const char *method, struct req *rq)
{
	bool get = !strcmp(method, "GET") || !strcmp(method, "HEAD");
	bool post = !strcmp(method, "POST"), del = !strcmp(method, "DELETE");
	bool patch = !strcmp(method, "PATCH");
	enum MHD_Result ret;

	if (!strcmp(url, "/metrics"))
		return get ? get_metrics(api, c) : send_405(c, ALLOW_GET);
	if (strncmp(url, PREFIX "/", strlen(PREFIX) + 1))
		return send_error(c, 404, "no such endpoint");
	url += strlen(PREFIX);
	if (!strcmp(url, "/health"))
		return get ? get_health(api, c) : send_405(c, ALLOW_GET);
	if (!strcmp(url, "/cache"))
		return get ? get_cache(api, c) : send_405(c, ALLOW_GET);
	if (!strcmp(url, "/peers"))
		return get ? get_peers(api, c) : send_405(c, ALLOW_GET);
	if (!strcmp(url, "/images") || !strcmp(url, "/images/")) {
		if (get)
			return get_images(api, c);
		if (!post)
			return send_405(c, ALLOW_GET_POST);
		return body_not_json(c, &ret) ? ret : post_image(api, c, rq);
	}
	if (!strncmp(url, "/images/", 8)) {
		if (!get)
			return send_405(c, ALLOW_GET);
		if (!api_image_ref_valid(url + 8))
			return send_error(c, 400, "invalid image tag or id");
		return get_image(api, c, url + 8);
	}
	if (!strcmp(url, "/disks") || !strcmp(url, "/disks/")) {
		if (get)
			return get_disks(api, c);
		if (!post)
			return send_405(c, ALLOW_GET_POST);
		return body_not_json(c, &ret) ? ret : post_disk(api, c, rq);
	}
	if (!strncmp(url, "/disks/", 7)) {
		if (get)
			return get_disk(api, c, url + 7);
		if (patch)
			return body_not_json(c, &ret) ? ret : patch_disk(api, c, url + 7, rq);
		return del ? delete_disk(api, c, url + 7) : send_405(c, ALLOW_DISK);
	}
	return send_error(c, 404, "no such endpoint");
}

static enum MHD_Result handler(void *cls, struct MHD_Connection *c, const char *url,
			       const char *method, const char *version, const char *upload,
			       size_t *upload_size, void **con_cls)
{
	struct api *api = cls;
	struct req *rq = *con_cls;
	size_t max = api->a->cfg.api_max_body;

	if (!rq)
		return MHD_NO; /* on_uri could not allocate it */
	if (!rq->started) {
		const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");

		rq->started = true;
		/* MHD hands over the path unescaped, as a C string: "d4%00-keep-me" would
		 * name disk d4. Nothing in the API has a NUL in it. */
		if (rq->nul_in_uri)
			return send_error(c, 400, "the request URI holds an escaped NUL (%00)");
		/* Refuse an announced oversize body before reading any of it. */
		if (cl && strtoull(cl, NULL, 10) > max) {
			rq->too_big = true;
			return send_error(c, 413, "request body too large");
		}
		return MHD_YES;
	}
	if (*upload_size) {
		if (!rq->too_big && rq->len + *upload_size > max) {
			rq->too_big = true;
			free(rq->body);
			rq->body = NULL;
			rq->len = 0;
		}
		if (!rq->too_big) {
			if (rq->len + *upload_size + 1 > rq->cap) {
				size_t cap = MAX(rq->cap * 2, rq->len + *upload_size + 1);
				char *nb = realloc(rq->body, cap);

				if (!nb)
					return MHD_NO;
				rq->body = nb;
				rq->cap = cap;
			}
			memcpy(rq->body + rq->len, upload, *upload_size);
			rq->len += *upload_size;
			rq->body[rq->len] = '\0';
		}
		*upload_size = 0;
		return MHD_YES;
	}
	if (rq->too_big)
		return send_error(c, 413, "request body too large");
	return route(api, c, url, method, rq);
}

/* The request's state, made before MHD unescapes the URI: whether the raw URI (path or
 * query) holds %00 is known only here. Freed by completed(). */
static void *on_uri(void *cls, const char *uri, struct MHD_Connection *c)
{
	struct req *rq = calloc(1, sizeof(*rq));

	if (rq)
		rq->nul_in_uri = strstr(uri, "%00") != NULL;
	return rq;
}

static void completed(void *cls, struct MHD_Connection *c, void **con_cls,
		      enum MHD_RequestTerminationCode toe)
{
	struct req *rq = *con_cls;

	if (rq) {
		free(rq->body);
		free(rq);
		*con_cls = NULL;
	}
}

/* MHD's own messages: log_server_message() (one warning per 5 s, the rest debug). */
static void mhd_log(void *cls, const char *fmt, va_list ap)
{
	struct api *api = cls;

	log_server_message(&api->mhd_log_limit, "api", fmt, ap);
}

int api_start(struct appliance *a, struct api **out)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV};
	struct addrinfo *ai = NULL;
	char port[8];
	struct api *api;
	unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD |
			 MHD_USE_ERROR_LOG;
	int ret;

	snprintf(port, sizeof(port), "%u", a->cfg.api_listen.port);
	ret = getaddrinfo(a->cfg.api_listen.host, port, &hints, &ai);
	if (ret || !ai) {
		log_error("[api] listen %s: %s", a->cfg.api_listen.host, gai_strerror(ret));
		return -EINVAL;
	}
	api = calloc(1, sizeof(*api));
	if (!api) {
		freeaddrinfo(ai);
		return -ENOMEM;
	}
	api->a = a;
	if (ai->ai_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	api->d = MHD_start_daemon(flags, a->cfg.api_listen.port, NULL, NULL, handler, api,
				  MHD_OPTION_EXTERNAL_LOGGER, mhd_log, api,
				  MHD_OPTION_SOCK_ADDR, ai->ai_addr, MHD_OPTION_CONNECTION_LIMIT,
				  (unsigned)API_MAX_CONNECTIONS, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
				  (unsigned)API_MAX_PER_IP, MHD_OPTION_CONNECTION_TIMEOUT,
				  (unsigned)API_IDLE_TIMEOUT_S,
				  MHD_OPTION_URI_LOG_CALLBACK, on_uri, api,
				  MHD_OPTION_NOTIFY_COMPLETED, completed, api, MHD_OPTION_END);
	freeaddrinfo(ai);
	if (!api->d) {
		char buf[300];

		log_error("cannot listen on %s for the API (in use?)",
			  config_addr_str(&a->cfg.api_listen, buf, sizeof(buf)));
		free(api);
		return -EADDRINUSE;
	}
	*out = api;
	return 0;
}

void api_stop(struct api *api)
{
	if (!api)
		return;
	MHD_stop_daemon(api->d);
	free(api);
}
