/*
 * peering.c - see peering.h: the cluster modules created and stopped in order.
 */
#include "cluster/peering.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "common/log.h"
#include "common/util.h"

struct peering {
	struct directory *dir;
	struct peer_server *srv;
	struct peer_client *cli;
	struct peers *peers;
	struct fetcher *fetcher;      /* borrowed; unhooked by peering_stop */
	char *listen, *token, *rack;
	uint32_t lease_wait_ms, peer_timeout_ms;
	unsigned server_threads, peer_workers;
	bool stopped;
};

int peering_create(const struct peering_opts *o, struct peering **out)
{
	struct directory_opts dopts = {
		.url = o->redis_url,
		.prefix = o->prefix,
		.node_name = o->node_name,
		.rack = o->rack,
		.advertise = o->advertise,
		.heartbeat_ttl_ms = o->heartbeat_ttl_ms,
		.lease_ttl_ms = o->lease_ttl_ms,
		.command_timeout_ms = o->redis_timeout_ms,
	};
	struct peering *p;
	int rc;

	if (!o->token || !*o->token)
		return -EINVAL;
	if (dopts.heartbeat_ttl_ms && dopts.heartbeat_ttl_ms < 1000)
		return -EINVAL;
	if (dopts.heartbeat_ttl_ms) /* three heartbeats per TTL */
		dopts.heartbeat_interval_ms = dopts.heartbeat_ttl_ms / 3;
	if (dopts.lease_ttl_ms && dopts.lease_ttl_ms < 300)
		return -EINVAL;
	if (dopts.lease_ttl_ms)
		dopts.lease_renew_ms = dopts.lease_ttl_ms / 3;
	p = calloc(1, sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->listen = strdup(o->listen && *o->listen ? o->listen : "0.0.0.0:7480");
	p->token = strdup(o->token);
	p->rack = strdup(o->rack && *o->rack ? o->rack : "default");
	p->lease_wait_ms = o->lease_wait_ms;
	p->peer_timeout_ms = o->peer_timeout_ms ? o->peer_timeout_ms : 5000;
	p->server_threads = o->server_threads;
	p->peer_workers = o->peer_workers ? o->peer_workers : 8;
	rc = -ENOMEM;
	if (!p->listen || !p->token || !p->rack)
		goto fail;
	rc = directory_create(&dopts, &p->dir);
	if (rc)
		goto fail;
	*out = p;
	return 0;
fail:
	peering_destroy(p);
	return rc;
}

struct chunkstore_hooks peering_store_hooks(struct peering *p)
{
	return directory_store_hooks(p->dir);
}

struct directory *peering_directory(struct peering *p)
{
	return p->dir;
}

static void on_not_held(void *arg, const struct chunk_hash *h)
{
	directory_not_held(arg, h);
}

int peering_start(struct peering *p, struct chunkstore *store, struct fetcher *f)
{
	struct peer_server_opts so = {.listen = p->listen, .token = p->token, .store = store,
				      .threads = p->server_threads, .not_held = on_not_held,
				      .not_held_arg = p->dir,
				      /* a peer request takes at most peer_timeout_ms: a connection
				       * silent for that long is not a peer at work */
				      .idle_timeout_s = DIV_ROUND_UP(p->peer_timeout_ms, 1000),
				      /* one peer's workers and idle pool all get in (with more
				       * than 48 workers, 64 a peer refused some of its fetches) */
				      .max_per_ip = MAX(64u, p->peer_workers + PEER_CLIENT_POOL)};
	struct peer_client_opts co = {.store = store, .token = p->token,
				      .request_timeout_ms = p->peer_timeout_ms};
	struct peers_opts po = {.dir = p->dir, .rack = p->rack,
				.lease_wait_ms = p->lease_wait_ms};
	struct fetcher_peer_ops ops;
	int rc;

	directory_attach_store(p->dir, store);
	rc = peer_server_start(&so, &p->srv);
	if (rc)
		return rc;
	rc = peer_client_create(&co, &p->cli);
	if (rc)
		return rc;
	po.client = p->cli;
	rc = peers_create(&po, &p->peers);
	if (rc)
		return rc;
	if (f) {
		ops = peers_fetcher_ops(p->peers);
		fetcher_set_peer_ops(f, &ops);
		p->fetcher = f;
	}
	return 0;
}

void peering_stop(struct peering *p)
{
	if (!p || p->stopped)
		return;
	p->stopped = true;
	/* peers stop choosing us first, then we stop answering */
	directory_leave(p->dir);
	if (p->fetcher)
		fetcher_set_peer_ops(p->fetcher, NULL);
	p->fetcher = NULL;
	peer_server_stop(p->srv);
	p->srv = NULL;
}

void peering_destroy(struct peering *p)
{
	if (!p)
		return;
	peering_stop(p);
	peers_destroy(p->peers);
	peer_client_destroy(p->cli);
	directory_destroy(p->dir);
	free(p->listen);
	free(p->token);
	free(p->rack);
	free(p);
}

void peering_get_stats(struct peering *p, struct peering_stats *st)
{
	memset(st, 0, sizeof(*st));
	directory_get_stats(p->dir, &st->dir);
	if (p->srv)
		peer_server_get_stats(p->srv, &st->server);
	if (p->cli)
		peer_client_get_stats(p->cli, &st->client);
	if (p->peers)
		peers_get_stats(p->peers, &st->peers);
}

int peering_list(struct peering *p, struct peering_peer *out, int max)
{
	struct directory_node *nodes;
	struct peers_peer_stats *ps = NULL;
	int n, np = 0, i, j;
	int64_t self = directory_node_id(p->dir);

	if (max <= 0)
		return 0;
	nodes = calloc(max, sizeof(*nodes));
	if (!nodes)
		return -ENOMEM;
	n = directory_list_nodes(p->dir, nodes, max);
	/* every peer this node has asked (a listed node may be any of them: a fixed-size
	 * array here showed zeros, a counter reset to Prometheus, past its end) */
	if (p->peers)
		np = peers_list_all(p->peers, &ps);
	if (np < 0) {
		free(nodes);
		return np;
	}
	for (i = 0; i < n; i++) {
		memset(&out[i], 0, sizeof(out[i]));
		out[i].node = nodes[i];
		out[i].self = nodes[i].node_id == self;
		for (j = 0; j < np; j++) {
			if (ps[j].node_id != nodes[i].node_id)
				continue;
			out[i].ok = ps[j].ok;
			out[i].failures = ps[j].failures;
			out[i].bad_data = ps[j].bad_data;
			out[i].not_found = ps[j].not_found;
			out[i].bytes = ps[j].bytes;
		}
	}
	free(nodes);
	free(ps);
	return n;
}
