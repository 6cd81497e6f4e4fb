/*
 * cluster_node - one cluster node (chunk store + fetcher with the real seed client +
 * peering: Redis directory, peer server, peer client, leases) for the cluster
 * integration tests, wired exactly as rackdiskd wires them (see cluster/peering.h).
 *
 *   cluster_node --store DIR --seed URL --redis URL --name NAME --listen HOST:PORT
 *                --advertise HOST:PORT --token-file FILE [--rack R] [--lease-wait-ms N]
 *                [--lease-ttl-ms N] [--heartbeat-ttl-ms N] [--peer-timeout-ms N]
 *                [--workers N]
 *
 * Prints one JSON object per line on stdout: first {"event":"ready",...}, then one
 * answer per command read from stdin:
 *   fetch FILE THREADS DEADLINE_MS   fetch every "HEX LEN" line of FILE, THREADS threads
 *                                    splitting the list, in the background (other
 *                                    commands are answered meanwhile);
 *                                    -> {"event":"fetched",...} when done
 *   stats                            -> {"event":"stats",...} (fetcher and cluster counters)
 *   peers                            -> {"event":"peers","nodes":[...]}
 *   quit                             stops in rackdiskd's order and exits 0
 */
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cache/chunkstore.h"
#include "cluster/fetcher.h"
#include "cluster/peering.h"
#include "common/log.h"
#include "common/util.h"

struct job {
	struct chunk_hash h;
	uint32_t len;
};

struct run {
	struct fetcher *f;
	struct job *jobs;
	size_t n;
	unsigned nthreads;
	uint64_t deadline_ms;
	int *rc;
};

struct targ {
	struct run *r;
	unsigned t;
};

static void *fetch_main(void *arg)
{
	struct targ *ta = arg;
	struct run *r = ta->r;

	for (size_t i = ta->t; i < r->n; i += r->nthreads)
		r->rc[i] = fetcher_fetch(r->f, &r->jobs[i].h, r->jobs[i].len,
					 now_ns() + r->deadline_ms * 1000000ULL);
	return NULL;
}

static int load_jobs(const char *path, struct job **out, size_t *n)
{
	FILE *f = fopen(path, "r");
	char hex[128];
	unsigned len;
	size_t cap = 0;
	struct job *v = NULL;

	*n = 0;
	if (!f)
		return -errno;
	while (fscanf(f, "%127s %u", hex, &len) == 2) {
		if (*n == cap) {
			cap = cap ? cap * 2 : 64;
			v = realloc(v, cap * sizeof(*v));
			if (!v) {
				fclose(f);
				return -ENOMEM;
			}
		}
		if (hash_from_hex(hex, strlen(hex), &v[*n].h)) {
			fclose(f);
			free(v);
			return -EINVAL;
		}
		v[(*n)++].len = len;
	}
	fclose(f);
	*out = v;
	return 0;
}

static void emit(json_t *o)
{
	char *s = json_dumps(o, JSON_COMPACT);

	printf("%s\n", s ? s : "{}");
	fflush(stdout);
	free(s);
	json_decref(o);
}

static void cmd_fetch(struct fetcher *f, const char *file, unsigned threads, uint64_t dl_ms)
{
	struct run r = {.f = f, .nthreads = threads ? threads : 1, .deadline_ms = dl_ms};
	struct targ ta[32];
	pthread_t t[32];
	size_t ok = 0, i;
	int first_err = 0, rc;
	uint64_t t0 = now_ns();

	if (r.nthreads > 32)
		r.nthreads = 32;
	rc = load_jobs(file, &r.jobs, &r.n);
	if (rc) {
		emit(json_pack("{s:s,s:i}", "event", "error", "errno", -rc));
		return;
	}
	r.rc = calloc(r.n + 1, sizeof(int));
	for (i = 0; i < r.nthreads; i++) {
		ta[i] = (struct targ){.r = &r, .t = (unsigned)i};
		pthread_create(&t[i], NULL, fetch_main, &ta[i]);
	}
	for (i = 0; i < r.nthreads; i++)
		pthread_join(t[i], NULL);
	for (i = 0; i < r.n; i++) {
		if (r.rc[i] == 0)
			ok++;
		else if (!first_err)
			first_err = r.rc[i];
	}
	emit(json_pack("{s:s,s:I,s:I,s:i,s:f}", "event", "fetched", "ok", (json_int_t)ok,
		       "failed", (json_int_t)(r.n - ok), "first_error", first_err, "ms",
		       (double)(now_ns() - t0) / 1e6));
	free(r.rc);
	free(r.jobs);
}

static json_t *by_src(const uint64_t *v)
{
	return json_pack("{s:I,s:I,s:I}", "local", (json_int_t)v[FETCH_SRC_LOCAL], "peer",
			 (json_int_t)v[FETCH_SRC_PEER], "seed", (json_int_t)v[FETCH_SRC_SEED]);
}

struct bg_fetch {
	struct fetcher *f;
	char file[4000];
	unsigned threads;
	uint64_t dl_ms;
	pthread_t tid;
};

static void *bg_main(void *arg)
{
	struct bg_fetch *b = arg;

	cmd_fetch(b->f, b->file, b->threads, b->dl_ms);
	return NULL;
}

static void cmd_stats(struct fetcher *f, struct peering *p)
{
	struct fetcher_stats fs;
	struct peering_stats ps;
	json_t *o;

	fetcher_get_stats(f, &fs);
	peering_get_stats(p, &ps);
	o = json_pack("{s:s,s:o,s:o,s:o,s:o}", "event", "stats", "fetches", by_src(fs.fetches),
		      "bytes", by_src(fs.bytes), "failures", by_src(fs.failures), "bad_hash",
		      by_src(fs.bad_hash));
	json_object_set_new(o, "peers", json_pack(
		"{s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}",
		"calls", (json_int_t)ps.peers.calls, "peer_hits", (json_int_t)ps.peers.peer_hits,
		"peer_bytes", (json_int_t)ps.peers.peer_bytes,
		"peer_failures", (json_int_t)ps.peers.peer_failures,
		"bad_data", (json_int_t)ps.peers.bad_data, "stale", (json_int_t)ps.peers.stale,
		"directory_down", (json_int_t)ps.peers.directory_down,
		"leases_won", (json_int_t)ps.peers.leases_won,
		"lease_waits", (json_int_t)ps.peers.lease_waits,
		"lease_wait_hits", (json_int_t)ps.peers.lease_wait_hits,
		"lease_wait_timeouts", (json_int_t)ps.peers.lease_wait_timeouts,
		"lease_takeovers", (json_int_t)ps.peers.lease_takeovers,
		"lease_recheck_hits", (json_int_t)ps.peers.lease_recheck_hits));
	json_object_set_new(o, "server", json_pack(
		"{s:I,s:I,s:I,s:I}", "requests", (json_int_t)ps.server.requests, "bytes",
		(json_int_t)ps.server.bytes, "ok", (json_int_t)ps.server.responses[PEER_ST_200],
		"not_found", (json_int_t)ps.server.responses[PEER_ST_404]));
	json_object_set_new(o, "client", json_pack(
		"{s:I,s:I,s:I,s:I}", "requests", (json_int_t)ps.client.requests, "connects",
		(json_int_t)ps.client.connects, "bad_data", (json_int_t)ps.client.bad_data,
		"errors", (json_int_t)ps.client.errors));
	json_object_set_new(o, "directory", json_pack(
		"{s:b,s:b,s:I,s:I,s:I,s:I,s:I,s:I,s:I}", "connected", ps.dir.connected,
		"name_conflict", ps.dir.name_conflict, "node_id",
		(json_int_t)ps.dir.node_id, "errors", (json_int_t)ps.dir.errors, "fast_fails",
		(json_int_t)ps.dir.fast_fails, "busy_fails", (json_int_t)ps.dir.busy_fails,
		"reconnects", (json_int_t)ps.dir.reconnects, "bulk_announced",
		(json_int_t)ps.dir.bulk_announced, "replayed", (json_int_t)ps.dir.replayed));
	emit(o);
}

static void cmd_peers(struct peering *p)
{
	struct peering_peer v[64];
	int n = peering_list(p, v, 64), i;
	json_t *arr = json_array();

	for (i = 0; i < n; i++)
		json_array_append_new(arr, json_pack(
			"{s:I,s:s,s:s,s:s,s:b,s:b,s:I,s:I,s:I,s:I}", "id",
			(json_int_t)v[i].node.node_id, "name", v[i].node.name, "addr",
			v[i].node.addr, "rack", v[i].node.rack, "alive", v[i].node.alive, "self",
			v[i].self, "ok", (json_int_t)v[i].ok, "failures",
			(json_int_t)v[i].failures, "bad_data", (json_int_t)v[i].bad_data, "bytes",
			(json_int_t)v[i].bytes));
	emit(json_pack("{s:s,s:i,s:o}", "event", "peers", "rc", n < 0 ? n : 0, "nodes", arr));
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{"store", 1, 0, 's'}, {"seed", 1, 0, 'S'}, {"redis", 1, 0, 'r'},
		{"name", 1, 0, 'n'}, {"rack", 1, 0, 'R'}, {"listen", 1, 0, 'l'},
		{"advertise", 1, 0, 'a'}, {"token-file", 1, 0, 't'},
		{"lease-wait-ms", 1, 0, 'w'}, {"lease-ttl-ms", 1, 0, 'L'},
		{"heartbeat-ttl-ms", 1, 0, 'H'}, {"peer-timeout-ms", 1, 0, 'P'},
		{"workers", 1, 0, 'W'}, {0, 0, 0, 0}};
	struct chunkstore_opts so = {0};
	struct fetcher_opts fo = {0};
	struct peering_opts po = {0};
	struct chunkstore *cs = NULL;
	struct fetcher *f = NULL;
	struct peering *p = NULL;
	const char *token_file = NULL;
	char token[600], line[4096];
	static struct bg_fetch bg[64];
	unsigned bg_n = 0;
	int c, rc = 2;

	while ((c = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (c) {
		case 's': so.dir = optarg; break;
		case 'S': fo.seed_url = optarg; break;
		case 'r': po.redis_url = optarg; break;
		case 'n': po.node_name = optarg; break;
		case 'R': po.rack = optarg; break;
		case 'l': po.listen = optarg; break;
		case 'a': po.advertise = optarg; break;
		case 't': token_file = optarg; break;
		case 'w': po.lease_wait_ms = (uint32_t)atoi(optarg); break;
		case 'L': po.lease_ttl_ms = (uint32_t)atoi(optarg); break;
		case 'H': po.heartbeat_ttl_ms = (uint32_t)atoi(optarg); break;
		case 'P': po.peer_timeout_ms = (uint32_t)atoi(optarg); break;
		case 'W': fo.workers = (unsigned)atoi(optarg); break;
		default: return 2;
		}
	}
	log_init("cluster_node", LOG_LVL_INFO, 1);
	if (!so.dir || !fo.seed_url || !po.redis_url || !token_file ||
	    peer_token_load(token_file, token, sizeof(token)) || mkdir_p(so.dir, 0755)) {
		fprintf(stderr, "cluster_node: bad arguments\n");
		return 2;
	}
	po.token = token;
	rc = 1;
	/* rackdiskd's order (cluster/peering.h) */
	if (peering_create(&po, &p))
		goto out;
	so.hooks = peering_store_hooks(p);
	if (chunkstore_open(&so, &cs))
		goto out;
	fo.store = cs;
	if (fetcher_create(&fo, &f))
		goto out;
	if (peering_start(p, cs, f))
		goto out;
	directory_wait_ready(peering_directory(p), 5000);
	cmd_stats(f, p); /* the "ready" line: a stats object */
	while (fgets(line, sizeof(line), stdin)) {
		struct bg_fetch *b = bg_n < 64 ? &bg[bg_n] : NULL;
		unsigned long long dl;

		if (b && sscanf(line, "fetch %3999s %u %llu", b->file, &b->threads, &dl) == 3) {
			b->f = f;
			b->dl_ms = dl;
			if (pthread_create(&b->tid, NULL, bg_main, b) == 0)
				bg_n++;
		} else if (!strncmp(line, "stats", 5))
			cmd_stats(f, p);
		else if (!strncmp(line, "peers", 5))
			cmd_peers(p);
		else if (!strncmp(line, "quit", 4))
			break;
		else
			emit(json_pack("{s:s,s:s}", "event", "error", "line", line));
	}
	rc = 0;
out:
	for (unsigned i = 0; i < bg_n; i++)
		pthread_join(bg[i].tid, NULL);
	if (rc)
		fprintf(stderr, "cluster_node: start failed\n");
	peering_stop(p);
	if (f)
		fetcher_destroy(f);
	if (cs)
		chunkstore_close(cs);
	peering_destroy(p);
	return rc;
}
