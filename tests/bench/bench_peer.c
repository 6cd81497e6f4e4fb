/*
 * bench_peer.c - peer transfer throughput: our peer client reading every chunk of an
 * image from our peer server over loopback (chunks already cached on the server),
 * against `curl` fetching the same chunk URLs from the same server in one process
 * (one keep-alive connection), in the same run.
 *
 *   bench_peer [--chunks N] [--chunk-size SIZE] [--rounds R]
 *
 * Prints MB/s for: curl (baseline), client get (receive + hash check; one stream, then
 * 2 and 4 parallel streams as the fetcher's workers would read), client fetch
 * (receive + hash check + insert into a chunk store, i.e. what an appliance does; one
 * stream, then 2), and the ratios to the baseline. The best of R rounds of each is kept.
 */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cluster/peer_client.h"
#include "cluster/peer_server.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/util.h"

#define TOKEN "bench-token"

static double mbps(uint64_t bytes, uint64_t ns)
{
	return ns ? (double)bytes / (1024.0 * 1024.0) / ((double)ns / 1e9) : 0;
}

/* Parallel readers, as the appliance's fetcher workers read an image. */
struct par {
	struct peer_client *cli;
	const char *addr;
	const struct chunk_hash *hs;
	unsigned n, first, step;
	uint64_t csize;
	bool fetch; /* peer_client_fetch (insert into the client's store), not _get */
	int rc;
};

static void *par_main(void *arg)
{
	struct par *p = arg;
	uint8_t *buf = malloc(p->csize);

	p->rc = buf ? 0 : -ENOMEM;
	for (unsigned i = p->first; i < p->n && !p->rc; i += p->step)
		p->rc = (p->fetch ? peer_client_fetch : peer_client_get)(
			p->cli, p->addr, &p->hs[i], buf, p->csize, now_ns() + 10000000000ULL);
	free(buf);
	return NULL;
}

static int run_parallel(struct peer_client *cli, const char *addr, const struct chunk_hash *hs,
			unsigned n, uint64_t csize, unsigned streams, bool fetch)
{
	pthread_t t[16];
	struct par p[16];
	unsigned i;
	int rc = 0;

	for (i = 0; i < streams; i++) {
		p[i] = (struct par){.cli = cli, .addr = addr, .hs = hs, .n = n, .first = i,
				    .step = streams, .csize = csize, .fetch = fetch};
		if (pthread_create(&t[i], NULL, par_main, &p[i]))
			return -EAGAIN;
	}
	for (i = 0; i < streams; i++) {
		pthread_join(t[i], NULL);
		rc = rc ? rc : p[i].rc;
	}
	return rc;
}

static int run_curl(const char *cfg)
{
	pid_t pid = fork();
	int status;

	if (pid < 0)
		return -errno;
	if (pid == 0) {
		execlp("curl", "curl", "-s", "-f", "-K", cfg, (char *)NULL);
		_exit(127);
	}
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status))
		return -EIO;
	return 0;
}

int main(int argc, char **argv)
{
	unsigned nchunks = 192, rounds = 3, i, r;
	uint64_t csize = MiB;
	char root[] = "/tmp/rd-bench-peer-XXXXXX", da[128], db[128], cfg[160], addr[64];
	struct chunkstore *a = NULL, *b = NULL;
	struct chunkstore_opts oa = {.dir = da}, ob = {.dir = db};
	struct peer_server *srv = NULL;
	struct peer_client *cli = NULL;
	struct peer_server_opts so = {.listen = "127.0.0.1:0", .token = TOKEN};
	struct peer_client_opts co = {.token = TOKEN};
	struct chunk_hash *hs = NULL;
	uint8_t *buf = NULL;
	uint64_t best_curl = UINT64_MAX, best_get = UINT64_MAX, best_fetch = UINT64_MAX;
	uint64_t best_par2 = UINT64_MAX, best_par4 = UINT64_MAX, best_fetch2 = UINT64_MAX;
	uint64_t total;
	FILE *f;
	int rc = 1;

	for (i = 1; i < (unsigned)argc; i++) {
		if (!strcmp(argv[i], "--chunks") && i + 1 < (unsigned)argc)
			nchunks = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--rounds") && i + 1 < (unsigned)argc)
			rounds = (unsigned)atoi(argv[++i]);
		else if (!strcmp(argv[i], "--chunk-size") && i + 1 < (unsigned)argc &&
			 !parse_size(argv[i + 1], &csize) && csize <= 16 * MiB)
			i++;
		else {
			fprintf(stderr, "usage: bench_peer [--chunks N] [--chunk-size SIZE] "
				"[--rounds R]\n");
			return 2;
		}
	}
	if (!nchunks || !rounds || !csize)
		return 2;
	log_init("bench_peer", LOG_LVL_WARN, 0);
	if (!mkdtemp(root))
		return 1;
	snprintf(da, sizeof(da), "%s/a", root);
	snprintf(db, sizeof(db), "%s/b", root);
	snprintf(cfg, sizeof(cfg), "%s/curl.cfg", root);
	hs = calloc(nchunks, sizeof(*hs));
	buf = malloc(csize);
	if (!hs || !buf || mkdir_p(da, 0755) || mkdir_p(db, 0755) || chunkstore_open(&oa, &a))
		goto out;
	/* the image, cached on the serving node */
	for (i = 0; i < nchunks; i++) {
		uint64_t x = 0x9e3779b97f4a7c15ULL * (i + 1);

		for (size_t k = 0; k < csize / 8; k++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			((uint64_t *)buf)[k] = x;
		}
		hash_compute(buf, csize, &hs[i]);
		if (chunkstore_insert(a, &hs[i], buf, csize))
			goto out;
	}
	so.store = a;
	if (peer_server_start(&so, &srv))
		goto out;
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", peer_server_port(srv));
	co.store = NULL;
	f = fopen(cfg, "w");
	if (!f)
		goto out;
	fprintf(f, "header = \"Authorization: Bearer %s\"\n", TOKEN);
	for (i = 0; i < nchunks; i++) {
		char hex[HASH_HEX_LEN + 1];

		hash_to_hex(&hs[i], hex);
		fprintf(f, "url = \"http://%s/v1/chunks/%s\"\noutput = \"/dev/null\"\n", addr, hex);
	}
	fclose(f);
	total = (uint64_t)nchunks * csize;
	for (r = 0; r < rounds; r++) {
		uint64_t t0;

		/* baseline: curl, one process, one keep-alive connection */
		t0 = now_ns();
		if (run_curl(cfg)) {
			fprintf(stderr, "bench_peer: curl failed\n");
			goto out;
		}
		best_curl = MIN(best_curl, now_ns() - t0);

		/* ours: receive and verify */
		if (peer_client_create(&co, &cli))
			goto out;
		t0 = now_ns();
		for (i = 0; i < nchunks; i++)
			if (peer_client_get(cli, addr, &hs[i], buf, csize, now_ns() + 10000000000ULL))
				goto out;
		best_get = MIN(best_get, now_ns() - t0);
		t0 = now_ns();
		if (run_parallel(cli, addr, hs, nchunks, csize, 2, false))
			goto out;
		best_par2 = MIN(best_par2, now_ns() - t0);
		t0 = now_ns();
		if (run_parallel(cli, addr, hs, nchunks, csize, 4, false))
			goto out;
		best_par4 = MIN(best_par4, now_ns() - t0);
		peer_client_destroy(cli);
		cli = NULL;

		/* ours, as an appliance does it: receive, verify, insert into a fresh store;
		 * one stream, then two (an appliance's fetch workers, 8 by default, fetch in
		 * parallel; two streams use this machine's two cores) */
		for (unsigned streams = 1; streams <= 2; streams++) {
			char cmd[300];

			snprintf(cmd, sizeof(cmd), "rm -rf '%s' && mkdir -p '%s'", db, db);
			if (system(cmd) || chunkstore_open(&ob, &b))
				goto out;
			co.store = b;
			if (peer_client_create(&co, &cli))
				goto out;
			t0 = now_ns();
			if (streams == 1) {
				for (i = 0; i < nchunks; i++)
					if (peer_client_fetch(cli, addr, &hs[i], buf, csize,
							      now_ns() + 10000000000ULL))
						goto out;
				best_fetch = MIN(best_fetch, now_ns() - t0);
			} else {
				if (run_parallel(cli, addr, hs, nchunks, csize, streams, true))
					goto out;
				best_fetch2 = MIN(best_fetch2, now_ns() - t0);
			}
			peer_client_destroy(cli);
			cli = NULL;
			co.store = NULL;
			chunkstore_close(b);
			b = NULL;
		}
	}
	printf("peer throughput: %u chunks of %llu KiB over loopback, best of %u rounds\n",
	       nchunks, (unsigned long long)(csize / KiB), rounds);
	printf("  curl (baseline, one keep-alive connection): %8.1f MB/s\n",
	       mbps(total, best_curl));
	printf("  peer_client_get (receive + hash check):     %8.1f MB/s  ratio %.2fx\n",
	       mbps(total, best_get), (double)best_curl / (double)best_get);
	printf("  peer_client_get, 2 parallel streams:        %8.1f MB/s  ratio %.2fx\n",
	       mbps(total, best_par2), (double)best_curl / (double)best_par2);
	printf("  peer_client_get, 4 parallel streams:        %8.1f MB/s  ratio %.2fx\n",
	       mbps(total, best_par4), (double)best_curl / (double)best_par4);
	printf("  peer_client_fetch (+ insert into store):    %8.1f MB/s  ratio %.2fx\n",
	       mbps(total, best_fetch), (double)best_curl / (double)best_fetch);
	printf("  peer_client_fetch, 2 parallel streams:      %8.1f MB/s  ratio %.2fx\n",
	       mbps(total, best_fetch2), (double)best_curl / (double)best_fetch2);
	printf("  target: >= 0.80x\n");
	rc = 0;
out:
	if (rc)
		fprintf(stderr, "bench_peer: failed\n");
	peer_client_destroy(cli);
	peer_server_stop(srv);
	if (a)
		chunkstore_close(a);
	if (b)
		chunkstore_close(b);
	{
		char cmd[200];

		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
		if (system(cmd))
			fprintf(stderr, "bench_peer: cannot remove %s\n", root);
	}
	free(hs);
	free(buf);
	return rc;
}
