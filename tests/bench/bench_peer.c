/*
 * bench_peer.c - peer transfer throughput: our peer client reading every chunk of an
 * image from our peer server over loopback (chunks already cached on the server),
 * against `curl` fetching the same chunk URLs from the same server, in the same run,
 * with as many streams: one curl process on one keep-alive connection for one stream,
 * `curl --parallel --parallel-max N` for N.
 *
 *   bench_peer [--chunks N] [--chunk-size SIZE] [--rounds R]
 *
 * Prints MB/s for: curl with 1, 2 and 4 streams (the baselines), client get (receive +
 * hash check; one stream, then 2 and 4 parallel streams as the fetcher's workers would
 * read), client fetch (receive + hash check + insert into a chunk store, i.e. what an
 * appliance does; one stream, then 2), and each one's ratio to curl with the same number
 * of streams. The best of R rounds of each is kept.
 *
 * Timing: ours from the first request to the last reply (peer_client_create before).
 * curl's from its own per-transfer report (write-out num_connects and time_total, on
 * stderr, unbuffered, read as each transfer ends), so fork, exec and curl's start are
 * left out: with one stream the sum of the transfers' time_total (the single connect
 * is in the first one); with N the span of the transfers, from the first one's start
 * (the moment its report was read less its time_total) to the last one's end.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
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

/* One transfer's report line in curl's write-out (see the config in main). */
#define XFER_TAG "rdxfer "

/*
 * curl fetching every URL of cfg (nxfer of them), `streams` at once (1: in order, one
 * keep-alive connection). On success *ns is the curl time (see the top of the file) and
 * *conns the connections curl made. Bounded: curl is killed after 120 s.
 */
static int run_curl(const char *cfg, unsigned streams, unsigned nxfer, uint64_t *ns,
		    unsigned *conns)
{
	char par[16], line[512];
	size_t used = 0;
	uint64_t deadline = now_ns() + 120 * 1000000000ULL, sum = 0, first = UINT64_MAX;
	uint64_t last = 0;
	unsigned seen = 0;
	int pfd[2], status, rc = 0;
	pid_t pid;

	if (pipe2(pfd, O_CLOEXEC))
		return -errno;
	snprintf(par, sizeof(par), "%u", streams);
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		if (dup2(pfd[1], 2) < 0)
			_exit(127);
		if (streams > 1)
			execlp("curl", "curl", "-K", cfg, "--parallel", "--parallel-max", par,
			       (char *)NULL);
		else
			execlp("curl", "curl", "-K", cfg, (char *)NULL);
		_exit(127);
	}
	close(pfd[1]);
	for (;;) {
		struct pollfd p = {.fd = pfd[0], .events = POLLIN};
		uint64_t now = now_ns();
		ssize_t got;
		char *nl;

		if (now >= deadline) {
			fprintf(stderr, "bench_peer: curl still running after 120 s\n");
			kill(pid, SIGKILL);
			rc = -ETIMEDOUT;
			break;
		}
		if (poll(&p, 1, (int)((deadline - now) / 1000000 + 1)) <= 0)
			continue;
		got = read(pfd[0], line + used, sizeof(line) - 1 - used);
		if (got <= 0)
			break; /* EOF: curl is done */
		now = now_ns();
		used += (size_t)got;
		line[used] = 0;
		while ((nl = strchr(line, '\n'))) {
			char *tag = strstr(line, XFER_TAG);
			unsigned c;
			double t;

			*nl = 0;
			if (tag && sscanf(tag + strlen(XFER_TAG), "%u %lf", &c, &t) == 2) {
				uint64_t tns = (uint64_t)(t * 1e9);

				seen++;
				*conns += c;
				sum += tns;
				first = MIN(first, now - tns);
				last = MAX(last, now);
			} else if (*line) {
				fprintf(stderr, "curl: %s\n", line);
			}
			used -= (size_t)(nl + 1 - line);
			memmove(line, nl + 1, used + 1);
		}
		if (used == sizeof(line) - 1)
			used = 0; /* a line longer than any curl writes here: dropped */
	}
	close(pfd[0]);
	if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status))
		rc = rc ? rc : -EIO;
	if (!rc && seen != nxfer) {
		fprintf(stderr, "bench_peer: curl reported %u transfers of %u\n", seen, nxfer);
		rc = -EIO;
	}
	if (!rc)
		*ns = streams > 1 ? last - first : sum;
	return rc;
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
	uint64_t best_curl[5] = {UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX, UINT64_MAX};
	unsigned curl_conns[5] = {0};
	uint64_t best_get = UINT64_MAX, best_fetch = UINT64_MAX;
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
	/* --silent leaves --parallel's progress meter on: no-progress-meter too */
	fprintf(f, "header = \"Authorization: Bearer %s\"\nfail\nsilent\nshow-error\n"
		"no-progress-meter\nwrite-out = \"%%{stderr}" XFER_TAG
		"%%{num_connects} %%{time_total}\\n\"\n", TOKEN);
	for (i = 0; i < nchunks; i++) {
		char hex[HASH_HEX_LEN + 1];

		hash_to_hex(&hs[i], hex);
		fprintf(f, "url = \"http://%s/v1/chunks/%s\"\noutput = \"/dev/null\"\n", addr, hex);
	}
	fclose(f);
	total = (uint64_t)nchunks * csize;
	for (r = 0; r < rounds; r++) {
		uint64_t t0;

		/* baselines: curl, one process; one keep-alive connection, then 2 and 4
		 * transfers at once */
		for (unsigned streams = 1; streams <= 4; streams *= 2) {
			uint64_t ns = 0;
			unsigned conns = 0;

			if (run_curl(cfg, streams, nchunks, &ns, &conns)) {
				fprintf(stderr, "bench_peer: curl (%u streams) failed\n", streams);
				goto out;
			}
			if (streams == 1 && conns != 1) {
				fprintf(stderr, "bench_peer: curl's one-stream baseline made %u "
					"connections, not 1\n", conns);
				goto out;
			}
			best_curl[streams] = MIN(best_curl[streams], ns);
			curl_conns[streams] = MAX(curl_conns[streams], conns);
		}

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
	printf("  curl, 1 stream (baseline, one keep-alive connection): %8.1f MB/s\n",
	       mbps(total, best_curl[1]));
	printf("  curl, 2 streams (baseline, --parallel-max 2):         %8.1f MB/s  (%u "
	       "connections)\n", mbps(total, best_curl[2]), curl_conns[2]);
	printf("  curl, 4 streams (baseline, --parallel-max 4):         %8.1f MB/s  (%u "
	       "connections)\n", mbps(total, best_curl[4]), curl_conns[4]);
	printf("  peer_client_get (receive + hash check):     %8.1f MB/s  ratio %.2fx "
	       "(vs curl, 1 stream)\n", mbps(total, best_get),
	       (double)best_curl[1] / (double)best_get);
	printf("  peer_client_get, 2 parallel streams:        %8.1f MB/s  ratio %.2fx "
	       "(vs curl, 2 streams)\n", mbps(total, best_par2),
	       (double)best_curl[2] / (double)best_par2);
	printf("  peer_client_get, 4 parallel streams:        %8.1f MB/s  ratio %.2fx "
	       "(vs curl, 4 streams)\n", mbps(total, best_par4),
	       (double)best_curl[4] / (double)best_par4);
	printf("  peer_client_fetch (+ insert into store):    %8.1f MB/s  ratio %.2fx "
	       "(vs curl, 1 stream)\n", mbps(total, best_fetch),
	       (double)best_curl[1] / (double)best_fetch);
	printf("  peer_client_fetch, 2 parallel streams:      %8.1f MB/s  ratio %.2fx "
	       "(vs curl, 2 streams)\n", mbps(total, best_fetch2),
	       (double)best_curl[2] / (double)best_fetch2);
	printf("  target: >= 0.80x, each row against curl with as many streams\n");
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
