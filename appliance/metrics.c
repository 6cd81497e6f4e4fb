/*
 * metrics.c - GET /metrics: Prometheus text format 0.0.4.
 *
 * Fetch counters come from the fetcher, cache counters from the chunk store, per-disk
 * IO from tgtd itself (`tgtadm --op stat`): the data path runs inside tgtd, and tgt
 * already counts every LUN's reads and writes per session. Those per-session counters
 * vanish when a session logs out, so the per-disk series can go down; Prometheus treats
 * that as a counter reset, which rate() handles.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "appliance/api.h"
#include "appliance/appliance.h"
#include "appliance/fetchsrv.h"
#include "cache/chunkstore.h"
#include "cluster/fetcher.h"
#include "cluster/peering.h"
#include "common/util.h"
#include "target/tgtmgr.h"

static const char *const src_names[FETCH_SRC_COUNT] = {"local", "peer", "seed"};

static void head(FILE *f, const char *name, const char *type, const char *help)
{
	fprintf(f, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static void by_source(FILE *f, const char *name, const char *help, const uint64_t *v)
{
	head(f, name, "counter", help);
	for (int s = 0; s < FETCH_SRC_COUNT; s++)
		fprintf(f, "%s{source=\"%s\"} %llu\n", name, src_names[s],
			(unsigned long long)v[s]);
}

static void one(FILE *f, const char *name, const char *type, const char *help, uint64_t v)
{
	head(f, name, type, help);
	fprintf(f, "%s %llu\n", name, (unsigned long long)v);
}

void appliance_fetch_stats(struct appliance *a, struct fetcher_stats *st)
{
	struct peering_stats ps;

	fetcher_get_stats(a->fetcher, st);
	if (!a->peering)
		return;
	/* The peer hook tries holders until one serves, and tells the fetcher only
	 * whether one did: the failed requests are in its own counters. */
	peering_get_stats(a->peering, &ps);
	st->failures[FETCH_SRC_PEER] += ps.peers.peer_failures + ps.peers.bad_data;
	st->bad_hash[FETCH_SRC_PEER] += ps.peers.bad_data;
}

int appliance_peer_list(struct peering *p, struct peering_peer **out)
{
	struct peering_peer *v = NULL, *nv;
	int cap = 256, n;

	/* peering_list fills at most cap entries without saying whether there were more:
	 * a full array is asked again with twice the room. */
	for (;;) {
		nv = realloc(v, (size_t)cap * sizeof(*v));
		if (!nv) {
			n = -ENOMEM;
			break;
		}
		v = nv;
		n = peering_list(p, v, cap);
		if (n < cap || cap > INT_MAX / 2)
			break;
		cap *= 2;
	}
	if (n < 0) {
		free(v);
		v = NULL;
	}
	*out = v;
	return n;
}

static void fetch_metrics(FILE *f, struct appliance *a)
{
	struct fetcher_stats st;
	const char *h = "rackdisk_chunk_fetch_duration_seconds";

	appliance_fetch_stats(a, &st);
	by_source(f, "rackdisk_chunk_fetches_total", "Chunks obtained, by source.", st.fetches);
	by_source(f, "rackdisk_chunk_fetch_bytes_total", "Chunk bytes obtained, by source.",
		  st.bytes);
	by_source(f, "rackdisk_chunk_fetch_failures_total",
		  "Fetch attempts that failed (including bad hashes), by source.", st.failures);
	by_source(f, "rackdisk_chunk_fetch_bad_hash_total",
		  "Chunks refused because they did not match their hash, by source.",
		  st.bad_hash);
	head(f, h, "histogram", "Time to obtain a chunk, by source.");
	for (int s = 0; s < FETCH_SRC_COUNT; s++) {
		uint64_t cum = 0;

		/* The fetcher counts per bucket; Prometheus buckets are cumulative. */
		for (int b = 0; b < 16; b++) {
			cum += st.latency_count[s][b];
			if (b == 15)
				fprintf(f, "%s_bucket{source=\"%s\",le=\"+Inf\"} %llu\n", h,
					src_names[s], (unsigned long long)cum);
			else
				fprintf(f, "%s_bucket{source=\"%s\",le=\"%g\"} %llu\n", h,
					src_names[s], fetcher_latency_bounds[b],
					(unsigned long long)cum);
		}
		fprintf(f, "%s_sum{source=\"%s\"} %.6f\n", h, src_names[s], st.latency_sum[s]);
		fprintf(f, "%s_count{source=\"%s\"} %llu\n", h, src_names[s],
			(unsigned long long)cum);
	}
	one(f, "rackdisk_fetch_retries_total", "counter", "Seed fetch retries.", st.retries);
	one(f, "rackdisk_fetch_timeouts_total", "counter", "Fetches that passed their deadline.",
	    st.timeouts);
	one(f, "rackdisk_fetch_coalesced_total", "counter",
	    "Requests that joined a fill already in flight.", st.coalesced);
	one(f, "rackdisk_fetch_readahead_total", "counter", "Chunks fetched by readahead.",
	    st.readahead);
	one(f, "rackdisk_fetch_readahead_no_peer_total", "counter",
	    "Cluster readahead fills dropped: no peer held the chunk (the seed is not asked).",
	    st.readahead_no_peer);
	one(f, "rackdisk_fetch_not_found_total", "counter",
	    "Chunks the seed did not have (HTTP 404).", st.not_found);
	one(f, "rackdisk_fetch_prefetch_dropped_total", "counter",
	    "Background fills dropped because the queue was full.", st.prefetch_dropped);
	one(f, "rackdisk_seed_requests_total", "counter", "HTTP requests to the seed.",
	    st.seed_requests);
	one(f, "rackdisk_seed_connections_total", "counter", "New connections to the seed.",
	    st.seed_connects);
	one(f, "rackdisk_fetch_inflight", "gauge", "Fills queued or running.", st.inflight);
}

static void cache_metrics(FILE *f, struct chunkstore *cs)
{
	struct chunkstore_stats st;

	chunkstore_get_stats(cs, &st);
	one(f, "rackdisk_cache_hits_total", "counter", "Chunk store lookups that hit.", st.hits);
	one(f, "rackdisk_cache_misses_total", "counter", "Chunk store lookups that missed.",
	    st.misses);
	one(f, "rackdisk_cache_inserts_total", "counter", "Chunks stored.", st.inserts);
	one(f, "rackdisk_cache_insert_failures_total", "counter",
	    "Chunks fetched and verified that the store could not keep (no room: all pinned; "
	    "I/O error); the reads waiting for them fail.",
	    st.insert_failures);
	one(f, "rackdisk_cache_evictions_total", "counter", "Chunks evicted.", st.evictions);
	one(f, "rackdisk_cache_evicted_bytes_total", "counter", "Bytes evicted.",
	    st.bytes_evicted);
	one(f, "rackdisk_cache_inserted_bytes_total", "counter", "Bytes stored.",
	    st.bytes_inserted);
	one(f, "rackdisk_cache_used_bytes", "gauge", "Bytes of chunk data in the store.",
	    st.bytes_used);
	one(f, "rackdisk_cache_capacity_bytes", "gauge", "Configured store capacity (0: none).",
	    st.capacity);
	one(f, "rackdisk_cache_chunks", "gauge", "Chunks in the store.", st.nchunks);
	one(f, "rackdisk_cache_pinned_chunks", "gauge", "Chunks pinned by reads or fills.",
	    st.pinned);
	one(f, "rackdisk_cache_dropped_corrupt_total", "counter",
	    "Torn or corrupt chunk files found and removed.", st.dropped_corrupt);
}

/* A label value as the text format wants it: backslash, double quote and line feed
 * escaped (the directory lists only valid node names; this holds even if one slips by). */
void metrics_label_escape(const char *s, char *buf, size_t len)
{
	size_t k = 0;

	for (; *s && k + 3 <= len; s++) {
		if (*s == '\\' || *s == '"' || *s == '\n') {
			buf[k++] = '\\';
			buf[k++] = *s == '\n' ? 'n' : *s;
		} else {
			buf[k++] = *s;
		}
	}
	buf[k] = '\0';
}

/* Per-peer series, labelled by node name. The list comes from the directory: while Redis
 * is down these series are absent. */
static void peer_metrics(FILE *f, struct peering *p)
{
	struct peering_peer *v;
	int n = appliance_peer_list(p, &v);
	char (*name)[2 * sizeof(v->node.name)] = NULL;

	if (n > 0)
		name = calloc(n, sizeof(*name));
	if (!name)
		n = 0;
	for (int i = 0; i < n; i++)
		metrics_label_escape(v[i].node.name, name[i], sizeof(name[i]));
	head(f, "rackdisk_peer_bytes_total", "counter", "Chunk bytes fetched from each peer.");
	for (int i = 0; i < n; i++)
		if (!v[i].self)
			fprintf(f, "rackdisk_peer_bytes_total{peer=\"%s\"} %llu\n", name[i],
				(unsigned long long)v[i].bytes);
	head(f, "rackdisk_peer_failures_total", "counter",
	     "Failed chunk requests to each peer (transport, timeout, refused, wrong bytes).");
	for (int i = 0; i < n; i++)
		if (!v[i].self)
			fprintf(f, "rackdisk_peer_failures_total{peer=\"%s\"} %llu\n", name[i],
				(unsigned long long)v[i].failures); /* bad_data included */
	head(f, "rackdisk_peer_up", "gauge", "1 when the peer's heartbeat is alive.");
	for (int i = 0; i < n; i++)
		if (!v[i].self)
			fprintf(f, "rackdisk_peer_up{peer=\"%s\"} %d\n", name[i],
				v[i].node.alive ? 1 : 0);
	free(name);
	free(v);
}

static void cluster_metrics(FILE *f, struct peering *p)
{
	const char *req = "rackdisk_peer_server_requests_total";
	struct peering_stats st;

	peering_get_stats(p, &st);
	one(f, "rackdisk_directory_connected", "gauge", "1 while Redis is reachable.",
	    st.dir.connected);
	one(f, "rackdisk_directory_errors_total", "counter",
	    "Directory (Redis) calls that failed, including those refused while it is down.",
	    st.dir.errors);
	one(f, "rackdisk_directory_name_conflict", "gauge",
	    "1 while this appliance stays out of the cluster: another live one has its node name.",
	    st.dir.name_conflict);
	one(f, "rackdisk_directory_bad_nodes_total", "counter",
	    "Malformed node entries in Redis met while listing the nodes (a bad name: left "
	    "out; a bad address or rack: shown empty) or the holders of a chunk (a heartbeat "
	    "that cannot be read: not asked).", st.dir.bad_nodes);
	one(f, "rackdisk_directory_busy_total", "counter",
	    "Directory calls that gave up waiting for the busy Redis connection (then the seed).",
	    st.dir.busy_fails);
	one(f, "rackdisk_directory_reconnects_total", "counter", "Connections made to Redis.",
	    st.dir.reconnects);
	one(f, "rackdisk_directory_announces_total", "counter", "Chunks announced one by one.",
	    st.dir.announces);
	one(f, "rackdisk_directory_bulk_announced_total", "counter",
	    "Chunks announced in bulk: the whole store at start, and again after a reconnect "
	    "that found Redis had lost this appliance's entries.", st.dir.bulk_announced);
	one(f, "rackdisk_directory_replayed_total", "counter",
	    "Chunks whose failed announce or withdraw was sent again (after a reconnect that "
	    "kept Redis's entries, or a busy spell).", st.dir.replayed);
	one(f, "rackdisk_directory_down_fetches_total", "counter",
	    "Misses that went straight to the seed because Redis was down or busy.",
	    st.peers.directory_down);
	one(f, "rackdisk_leases_won_total", "counter",
	    "Seed fetches this node made for the cluster under a lease.", st.peers.leases_won);
	one(f, "rackdisk_lease_waits_total", "counter",
	    "Waits for another node's seed fetch of a chunk.", st.peers.lease_waits);
	one(f, "rackdisk_lease_wait_hits_total", "counter",
	    "Lease waits that ended with the chunk from that node.", st.peers.lease_wait_hits);
	one(f, "rackdisk_lease_wait_timeouts_total", "counter",
	    "Lease waits that reached the bound (then the seed).", st.peers.lease_wait_timeouts);
	one(f, "rackdisk_lease_takeovers_total", "counter",
	    "Leases taken over after a wait: the holder died, stalled or gave up.", st.peers.lease_takeovers);
	one(f, "rackdisk_leases_abandoned_total", "counter",
	    "Leases released early because this node's seed fetch failed.",
	    st.peers.leases_abandoned);
	head(f, req, "counter", "Requests to this node's peer chunk server, by status.");
	for (int i = 0; i < PEER_ST_COUNT; i++)
		fprintf(f, "%s{status=\"%d\"} %llu\n", req, peer_status_code[i],
			(unsigned long long)st.server.responses[i]);
	one(f, "rackdisk_peer_server_bytes_total", "counter", "Chunk bytes served to peers.",
	    st.server.bytes);
	one(f, "rackdisk_peer_client_connections_total", "counter",
	    "New connections to peers (keep-alive keeps this low).", st.client.connects);
	peer_metrics(f, p);
}

static void disk_metrics(FILE *f, struct appliance *a)
{
	static const char *names[] = {"rackdisk_disk_read_bytes_total",
				      "rackdisk_disk_read_ops_total",
				      "rackdisk_disk_write_bytes_total",
				      "rackdisk_disk_write_ops_total",
				      "rackdisk_disk_errors_total"};
	static const char *helps[] = {"Bytes read by initiators (tgtd, current sessions).",
				      "Read commands completed (tgtd, current sessions).",
				      "Bytes written by initiators (tgtd, current sessions).",
				      "Write commands completed (tgtd, current sessions).",
				      "Commands that failed (tgtd, current sessions)."};
	struct appliance_export_stats xs;
	struct tgtmgr_lun_stats *st = NULL;
	struct diskrec_damaged *bad = NULL;
	struct diskrec *recs = NULL;
	char *text = NULL;
	size_t n = 0, nbad = 0;

	/* One scan of the records gives both the disks and the damaged ones. */
	if (appliance_disk_scan(a, &recs, &n, &bad, &nbad))
		n = nbad = 0;
	free(bad);
	one(f, "rackdisk_disks", "gauge", "Disks defined on this appliance.", n);
	one(f, "rackdisk_disks_damaged", "gauge",
	    "Disks whose record (disk.json) cannot be read; kept exported as they were.", nbad);
	appliance_exports_stats(a, &xs);
	one(f, "rackdisk_disks_not_exported", "gauge",
	    "Disks whose export to tgtd failed (GET disks says why); tried again with a backoff.",
	    xs.not_exported);
	one(f, "rackdisk_export_failures_total", "counter",
	    "Exports of a disk to tgtd that failed (at start, after a tgtd restart or a resize, "
	    "and each retry).", xs.failures);
	st = calloc(n ? n : 1, sizeof(*st));
	/* One tgtadm run for every disk: a scrape must stay cheap with many disks. */
	if (n && tgtmgr_stat_all(a->tgt, &text))
		text = NULL;
	for (size_t i = 0; st && i < n; i++)
		if (!text || tgtmgr_parse_stat(text, recs[i].tid, recs[i].lun, &st[i]))
			memset(&st[i], 0, sizeof(st[i]));
	free(text);
	for (int m = 0; st && m < 5; m++) {
		head(f, names[m], "counter", helps[m]);
		for (size_t i = 0; i < n; i++) {
			uint64_t v[5] = {st[i].read_bytes, st[i].read_ops, st[i].write_bytes,
					 st[i].write_ops, st[i].errors};

			fprintf(f, "%s{disk=\"%s\"} %llu\n", names[m], recs[i].name,
				(unsigned long long)v[m]);
		}
	}
	free(st);
	free(recs);
}

int metrics_render(struct appliance *a, char **out, size_t *len)
{
	struct fetchsrv_stats fs;
	char *buf = NULL;
	size_t blen = 0;
	FILE *f = open_memstream(&buf, &blen);

	if (!f)
		return -ENOMEM;
	one(f, "rackdisk_up", "gauge", "1 while rackdiskd runs.", 1);
	one(f, "rackdisk_uptime_seconds", "gauge", "Seconds since rackdiskd started.",
	    (now_ns() - a->started_ns) / 1000000000ULL);
	fetch_metrics(f, a);
	cache_metrics(f, a->store);
	fetchsrv_get_stats(a->fsrv, &fs);
	one(f, "rackdisk_fetch_socket_requests_total", "counter",
	    "Requests from the tgt module on the fetch socket.", fs.requests);
	one(f, "rackdisk_fetch_socket_errors_total", "counter",
	    "FETCH requests answered with an error.", fs.fetch_err);
	one(f, "rackdisk_fetch_socket_refused_total", "counter",
	    "Fetch socket connections refused: every slot was in use.", fs.refused);
	one(f, "rackdisk_fetch_socket_idle_closed_total", "counter",
	    "Fetch socket connections closed after waiting idle for a request.",
	    fs.idle_closed);
	one(f, "rackdisk_chunk_corrupt_reports_total", "counter",
	    "Chunk files the tgt module found torn or corrupt (not served; re-checked here).",
	    fs.checks);
	one(f, "rackdisk_chunk_touches_total", "counter",
	    "Chunk reads the tgt module served from the store (hits it reported).", fs.touches);
	one(f, "rackdisk_readahead_hints_total", "counter",
	    "Read places (FETCH and HIT) the tgt module reported to the readahead.", fs.hints);
	one(f, "rackdisk_readahead_hints_ignored_total", "counter",
	    "Reported places ignored: unknown image, index out of range, hash mismatch.",
	    fs.hints_ignored);
	one(f, "rackdisk_tgtd_restarts_total", "counter", "Times the spawned tgtd was restarted.",
	    tgtmgr_restarts(a->tgt));
	one(f, "rackdisk_cluster_enabled", "gauge", "1 when [cluster] redis is set.",
	    a->peering != NULL);
	if (a->peering)
		cluster_metrics(f, a->peering);
	disk_metrics(f, a);
	if (fclose(f)) {
		free(buf);
		return -ENOMEM;
	}
	*out = buf;
	*len = blen;
	return 0;
}
