/*
 * rackdiskd.c - the appliance daemon: `rackdiskd --config FILE`.
 *
 * Start order (each step needs the ones before it; stop runs it backwards):
 *   config -> state dirs -> [cluster: token, peering (directory client)] -> chunk store
 *   (owner; its hooks announce to the directory) -> fetcher -> [peering_start: bulk
 *   announce, peer server, fetcher peer hook] -> fetch socket -> tgtd
 *   (spawned or external) -> export retries (appliance/exports.c) -> reconcile tgtd with
 *   the disk records -> API.
 * The fetch socket is up before tgtd so that LUNs re-exported by reconcile can fetch at
 * once. Signals are blocked in every thread and taken by main() with sigwait():
 * SIGTERM/SIGINT stop, SIGHUP reconciles again.
 *
 * Exit status: 0 after a clean stop, 1 when start fails, 2 for usage or config errors.
 */
#include <errno.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "appliance/api.h"
#include "appliance/appliance.h"
#include "appliance/config.h"
#include "appliance/fetchsrv.h"
#include "cache/chunkstore.h"
#include "cluster/fetcher.h"
#include "cluster/peering.h"
#include "common/log.h"
#include "common/util.h"
#include "images/repoloc.h"
#include "target/tgtmgr.h"

#ifndef RACKDISK_VERSION
#define RACKDISK_VERSION "0.1"
#endif

static void usage(FILE *f)
{
	fprintf(f, "usage: rackdiskd --config FILE\n"
		   "       rackdiskd --check-config --config FILE   (validate and exit)\n"
		   "       rackdiskd --version\n");
}

static void on_tgtd_restart(void *arg)
{
	struct appliance *a = arg;

	int ret;

	log_info("tgtd restarted; re-exporting disks");
	ret = appliance_reconcile(a);
	if (ret && ret != -ECANCELED) /* -ECANCELED: a stop began meanwhile */
		log_error("re-exporting disks after the tgtd restart failed for some disks");
}

static int make_dirs(struct appliance *a)
{
	char tags[PATH_MAX];
	const char *dirs[] = {a->cfg.state_dir, a->disks_dir, a->images_dir, tags,
			      a->cfg.cache_dir};
	int ret;

	config_path_fmt(tags, sizeof(tags), "%s/tags", a->images_dir);
	for (size_t i = 0; i < ARRAY_SIZE(dirs); i++) {
		/* disks/ may hold CHAP secrets (diskrec.h). */
		ret = mkdir_p(dirs[i], dirs[i] == a->disks_dir ? 0700 : 0755);
		if (ret) {
			log_error("cannot create %s: %s", dirs[i], strerror(-ret));
			return ret;
		}
	}
	return 0;
}

/* Host in iSCSI URLs: [iscsi] advertise, else the portal host unless it is a wildcard,
 * else this machine's name. */
static void pick_iscsi_host(struct appliance *a)
{
	const char *h = a->cfg.portal.host;

	if (a->cfg.iscsi_advertise[0])
		h = a->cfg.iscsi_advertise;
	else if (!strcmp(h, "0.0.0.0") || !strcmp(h, "::")) {
		char name[256] = "";

		if (gethostname(name, sizeof(name) - 1) == 0 && name[0]) {
			snprintf(a->iscsi_host, sizeof(a->iscsi_host), "%s", name);
			return;
		}
		h = "127.0.0.1";
	}
	snprintf(a->iscsi_host, sizeof(a->iscsi_host), "%s", h);
}

/* Reads [cluster] token_file into token; on failure err says why, naming the file. */
static int load_token(const struct config *c, char *token, size_t len, char *err,
		      size_t errlen)
{
	int ret = peer_token_load(c->token_file, token, len);

	if (ret)
		snprintf(err, errlen, "[cluster] token_file %.*s: %s", 400, c->token_file,
			 ret == -EINVAL ? "empty, or its first line is too long" : strerror(-ret));
	return ret;
}

/*
 * [cluster] redis set: the directory client, before the store (whose hooks announce to
 * it). Redis being down is not an error here: the directory connects in the background
 * and reads go to the seed until it does. token: the cluster token main() read from
 * [cluster] token_file (a missing or empty one stopped the start there).
 */
static int create_peering(struct appliance *a, const char *token)
{
	const struct config *c = &a->cfg;
	char listen[300], advertise[300];
	struct peering_opts po = {
		.redis_url = c->redis,
		.prefix = c->cluster_prefix,
		.node_name = c->node_name,
		.rack = c->rack,
		.listen = config_addr_str(&c->cluster_listen, listen, sizeof(listen)),
		.advertise = config_addr_str(&c->cluster_advertise, advertise, sizeof(advertise)),
		.token = token,
		.lease_wait_ms = c->lease_wait_ms,
		.lease_ttl_ms = c->lease_ttl_ms,
		.heartbeat_ttl_ms = c->heartbeat_ttl_ms,
		.peer_timeout_ms = c->peer_timeout_ms,
		.peer_workers = c->seed_workers,
	};
	int ret;

	if (!c->redis[0])
		return 0;
	ret = peering_create(&po, &a->peering);
	if (ret) {
		log_error("[cluster] cannot set up the directory client (redis URL or "
			  "options): %s", strerror(-ret));
		return ret;
	}
	log_info("cluster: node %s, rack %s, peer server %s advertised as %s, key prefix %s",
		 c->node_name, c->rack, listen, advertise, c->cluster_prefix);
	return 0;
}

static int open_store_and_fetcher(struct appliance *a, const char *token)
{
	struct chunkstore_opts so = {
		.dir = a->cfg.cache_dir,
		.capacity = a->cfg.cache_size,
		.direct_io = a->cfg.cache_direct_io,
		.verify_on_open = a->cfg.cache_verify_on_open,
	};
	struct fetcher_opts fo = {
		.seed_url = a->cfg.seed_url,
		.workers = a->cfg.seed_workers,
		.retry_initial_ms = a->cfg.seed_retry_initial_ms,
		.retry_max_ms = a->cfg.seed_retry_max_ms,
		.request_timeout_ms = a->cfg.seed_request_timeout_ms,
		.readahead_chunks = a->cfg.seed_readahead,
		/* At least one: 0 in fetcher_opts means "default", and readahead = 0 below
		 * turns every readahead off anyway. */
		.peer_readahead_chunks = a->cfg.cluster_readahead ? a->cfg.cluster_readahead : 1,
		.no_readahead = a->cfg.seed_readahead == 0,
	};
	int ret;

	ret = create_peering(a, token);
	if (ret)
		return ret;
	if (a->peering)
		so.hooks = peering_store_hooks(a->peering);
	ret = chunkstore_open(&so, &a->store);
	if (ret) {
		log_error("cannot open the chunk store %s: %s", a->cfg.cache_dir, strerror(-ret));
		return ret;
	}
	fo.store = a->store;
	ret = fetcher_create(&fo, &a->fetcher);
	if (ret) {
		log_error("cannot create the fetcher for %s: %s", REPOLOC_SHOWN(a->cfg.seed_url),
			  strerror(-ret));
		return ret;
	}
	if (a->peering) {
		char buf[300];

		ret = peering_start(a->peering, a->store, a->fetcher);
		if (ret)
			log_error("cannot start the peer chunk server on %s: %s",
				  config_addr_str(&a->cfg.cluster_listen, buf, sizeof(buf)),
				  strerror(-ret));
	}
	return ret;
}

static int start_tgt(struct appliance *a)
{
	char portal[300];
	struct tgtmgr_opts to = {
		.tgtd_path = a->cfg.tgtd_path,
		.tgtadm_path = a->cfg.tgtadm_path,
		.spawn = a->cfg.tgtd_spawn,
		.portal = config_addr_str(&a->cfg.portal, portal, sizeof(portal)),
		.control_port = a->cfg.control_port,
		.ipc_socket = a->cfg.ipc_socket,
		.on_restart = on_tgtd_restart,
		.arg = a,
	};
	int ret = tgtmgr_start(&to, &a->tgt);

	if (ret)
		log_error("cannot %s tgtd: %s", a->cfg.tgtd_spawn ? "start" : "reach",
			  strerror(-ret));
	return ret;
}

static void stop_all(struct appliance *a, struct api *api)
{
	/* A spawned tgtd goes with us, and tgtmgr_stop() closes its LUNs first, which tgtd
	 * refuses while one of their commands runs: the fetch socket's FETCH requests end
	 * with EAGAIN (the commands with BUSY, which initiators retry against the next
	 * tgtd). With an external tgtd they end with ESHUTDOWN, which the module retries
	 * until the command's deadline: a rackdiskd back by then serves them. */
	if (a->cfg.tgtd_spawn)
		fetchsrv_end_fetches(a->fsrv);
	/* Then, so that no thread stays blocked in a fill: FETCH requests (and API calls)
	 * waiting on the seed return at once, and the threads joined below are free to
	 * finish. */
	if (a->fetcher)
		fetcher_stop(a->fetcher);
	api_stop(api);
	/* Before tgtd: a retry of the exports that failed is a reconcile. */
	appliance_exports_stop(a);
	/* A spawned tgtd goes with us (its LUNs are closed first); an external one keeps
	 * its targets: they go on serving cached data and come back under management when
	 * rackdiskd returns. */
	tgtmgr_stop(a->tgt);
	fetchsrv_stop(a->fsrv);
	/* cluster/peering.h's order: leave the directory and stop serving peers, then the
	 * fetcher and the store (whose hooks still use the directory), then the rest. */
	peering_stop(a->peering);
	if (a->fetcher)
		fetcher_destroy(a->fetcher);
	if (a->store)
		chunkstore_close(a->store);
	peering_destroy(a->peering);
	a->peering = NULL;
	free(a->disk_tids);
	free(a->chap_set);
	a->disk_tids = NULL;
	a->chap_set = NULL;
	a->ndisk_tids = a->nchap_set = 0;
}

/*
 * systemd's readiness protocol (sd_notify(3), Type=notify in rackdiskd.service): one
 * datagram to $NOTIFY_SOCKET ("@..." is an abstract socket). Does nothing without it.
 * The variable is taken out of the environment at start: the tgtd rackdiskd spawns links
 * libsystemd and would report itself ready on the same socket.
 */
static char notify_path[sizeof(((struct sockaddr_un *)0)->sun_path)];

static void notify_init(void)
{
	const char *p = getenv("NOTIFY_SOCKET");

	if (p && (p[0] == '/' || p[0] == '@') && strlen(p) < sizeof(notify_path))
		memcpy(notify_path, p, strlen(p) + 1);
	unsetenv("NOTIFY_SOCKET");
}

static void notify_systemd(const char *state)
{
	const char *path = notify_path;
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	socklen_t len;
	int fd;

	if (!path[0])
		return;
	memcpy(sa.sun_path, path, strlen(path));
	if (path[0] == '@')
		sa.sun_path[0] = '\0';
	len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(path));
	fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return;
	if (sendto(fd, state, strlen(state), MSG_NOSIGNAL, (struct sockaddr *)&sa, len) < 0)
		log_warn("cannot notify systemd (%s): %s", state, strerror(errno));
	close(fd);
}

static int wait_signals(struct appliance *a, const sigset_t *set)
{
	for (;;) {
		int sig;

		if (sigwait(set, &sig))
			continue;
		if (sig == SIGHUP) {
			log_info("SIGHUP: reconciling tgtd with the disk records");
			appliance_reconcile(a);
			continue;
		}
		notify_systemd("STOPPING=1");
		log_info("%s: stopping", sig == SIGTERM ? "SIGTERM" : "SIGINT");
		return sig;
	}
}

int main(int argc, char **argv)
{
	static struct appliance app;
	struct appliance *a = &app;
	const char *cfg_path = NULL;
	bool check_only = false;
	struct api *api = NULL;
	char err[1024], token[512] = "";
	sigset_t set;
	int ret;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--config") || !strncmp(argv[i], "--config=", 9)) {
			/* "--config" last on the line was "unknown argument '--config'" */
			cfg_path = argv[i][8] ? argv[i] + 9 : i + 1 < argc ? argv[++i] : "";
			if (!*cfg_path) {
				fprintf(stderr, "rackdiskd: --config needs a value (the config "
						"file)\n");
				usage(stderr);
				return 2;
			}
		} else if (!strcmp(argv[i], "--check-config")) {
			check_only = true;
		} else if (!strcmp(argv[i], "--version")) {
			printf("rackdiskd %s\n", RACKDISK_VERSION);
			return 0;
		} else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
			usage(stdout);
			return 0;
		} else {
			fprintf(stderr, "rackdiskd: unknown argument '%s'\n", argv[i]);
			usage(stderr);
			return 2;
		}
	}
	if (!cfg_path) {
		fprintf(stderr, "rackdiskd: --config FILE is required\n");
		usage(stderr);
		return 2;
	}
	if (config_load(cfg_path, &a->cfg, err, sizeof(err))) {
		fprintf(stderr, "rackdiskd: %s\n", err);
		return 2;
	}
	/* A token file that cannot be read is a config error (exit 2, which the unit's
	 * RestartPreventExitStatus does not retry), caught by --check-config too. Read once,
	 * kept until the peer server and client have their copies. */
	if (a->cfg.redis[0] && load_token(&a->cfg, token, sizeof(token), err, sizeof(err))) {
		fprintf(stderr, "rackdiskd: %s: %s\n", cfg_path, err);
		return 2;
	}
	/* So is a tgtd or tgtadm that cannot be run: a clear exit 2 here, rather than a start
	 * that fails later in tgtmgr. */
	if (config_check_programs(&a->cfg, err, sizeof(err))) {
		explicit_bzero(token, sizeof(token));
		fprintf(stderr, "rackdiskd: %s: %s\n", cfg_path, err);
		return 2;
	}
	if (check_only) {
		explicit_bzero(token, sizeof(token));
		printf("%s: ok\n", cfg_path);
		return 0;
	}
	log_init("rackdiskd", a->cfg.log_level, 1);
	notify_init(); /* before any thread or child: unsetenv */
	/* Before any thread exists, so that every thread inherits the mask. */
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigaddset(&set, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	pthread_mutex_init(&a->lock, NULL);
	a->started_ns = now_ns();
	/* config_load bounded state_dir's length, so these fit. */
	config_path_fmt(a->disks_dir, sizeof(a->disks_dir), "%s/disks", a->cfg.state_dir);
	config_path_fmt(a->images_dir, sizeof(a->images_dir), "%s/images", a->cfg.state_dir);
	config_path_fmt(a->sock_path, sizeof(a->sock_path), "%s/rackdiskd.sock",
			a->cfg.state_dir);
	pick_iscsi_host(a);
	log_info("starting: node %s, rack %s, state %s, seed %s", a->cfg.node_name, a->cfg.rack,
		 a->cfg.state_dir, REPOLOC_SHOWN(a->cfg.seed_url));

	ret = make_dirs(a);
	if (!ret)
		ret = open_store_and_fetcher(a, token);
	explicit_bzero(token, sizeof(token));
	if (!ret) {
		ret = fetchsrv_start(a->sock_path, a->fetcher, a->store, &a->fsrv);
		if (ret)
			log_error("cannot listen on the fetch socket %s: %s", a->sock_path,
				  strerror(-ret));
	}
	if (!ret)
		ret = start_tgt(a);
	if (!ret)
		ret = appliance_exports_start(a);
	if (!ret) {
		appliance_disks_cleanup(a);
		if (appliance_reconcile(a))
			log_warn("some disks could not be exported (see above)");
		ret = api_start(a, &api);
	}
	if (ret) {
		stop_all(a, api);
		log_error("start failed");
		return 1;
	}
	char abuf[300];
	log_info("ready: API on http://%s/api/v1, iSCSI portal %s:%u",
		 config_addr_str(&a->cfg.api_listen, abuf, sizeof(abuf)), a->cfg.portal.host,
		 a->cfg.portal.port);
	notify_systemd("READY=1");
	wait_signals(a, &set);
	stop_all(a, api);
	log_info("stopped");
	return 0;
}
