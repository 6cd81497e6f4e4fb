/*
 * fetchtool - drives the fetcher against a real seed for the integration tests.
 *
 *   fetchtool --store DIR --seed URL [options] HEX:LEN...
 *   fetchtool --store DIR --seed URL [options] --image MANIFEST.json
 *
 * Opens an owner-mode chunk store, creates a fetcher and fetches the listed chunks
 * (from --threads threads at once, each fetching the whole list), or every non-zero
 * chunk of a manifest in order with readahead hints. Prints one JSON object: each
 * outcome, the fetcher's counters, the store's counters and the elapsed time. Exit
 * status: 0 when every fetch succeeded, 1 when one failed, 2 on usage errors.
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
#include "common/log.h"
#include "common/util.h"
#include "images/manifest.h"

struct job {
	struct chunk_hash h;
	uint32_t len;
};

struct outcome {
	int rc;
	double ms;
};

struct ctx {
	struct fetcher *f;
	struct job *jobs;
	size_t njobs;
	uint64_t deadline_ms;
	struct manifest *m;
	struct outcome *out; /* nthreads * njobs */
};

struct thread_arg {
	struct ctx *c;
	unsigned t;
	pthread_t tid;
};

static void *run_list(void *arg)
{
	struct thread_arg *ta = arg;
	struct ctx *c = ta->c;

	for (size_t i = 0; i < c->njobs; i++) {
		uint64_t t0 = now_ns();
		struct outcome *o = &c->out[ta->t * c->njobs + i];

		o->rc = fetcher_fetch(c->f, &c->jobs[i].h, c->jobs[i].len,
				      t0 + c->deadline_ms * 1000000ULL);
		o->ms = (double)(now_ns() - t0) / 1e6;
	}
	return NULL;
}

/* Sequential read of an image: a reader that tells the fetcher about each access. */
static void run_image(struct ctx *c)
{
	size_t n = 0;

	for (uint64_t i = 0; i < c->m->nchunks; i++) {
		if (manifest_chunk_is_zero(c->m, i))
			continue;
		uint64_t t0 = now_ns();

		fetcher_note_access(c->f, c->m, i);
		c->out[n].rc = fetcher_fetch(c->f, &c->m->hashes[i], manifest_chunk_len(c->m, i),
					     t0 + c->deadline_ms * 1000000ULL);
		c->out[n].ms = (double)(now_ns() - t0) / 1e6;
		n++;
	}
}

static json_t *src_obj(const uint64_t *v)
{
	return json_pack("{s:I,s:I,s:I}", "local", (json_int_t)v[FETCH_SRC_LOCAL], "peer",
			 (json_int_t)v[FETCH_SRC_PEER], "seed", (json_int_t)v[FETCH_SRC_SEED]);
}

static json_t *stats_json(struct fetcher *f, struct chunkstore *cs)
{
	struct fetcher_stats st;
	struct chunkstore_stats cst;

	fetcher_get_stats(f, &st);
	chunkstore_get_stats(cs, &cst);
	return json_pack(
		"{s:o,s:o,s:o,s:o,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:{s:I,s:I}}", "fetches",
		src_obj(st.fetches), "bytes", src_obj(st.bytes), "failures", src_obj(st.failures),
		"bad_hash", src_obj(st.bad_hash), "retries", (json_int_t)st.retries, "timeouts",
		(json_int_t)st.timeouts, "coalesced", (json_int_t)st.coalesced, "readahead",
		(json_int_t)st.readahead, "not_found", (json_int_t)st.not_found, "prefetch_dropped",
		(json_int_t)st.prefetch_dropped, "seed_requests", (json_int_t)st.seed_requests,
		"seed_connects", (json_int_t)st.seed_connects, "inflight", (json_int_t)st.inflight,
		"store", "inserts", (json_int_t)cst.inserts, "nchunks", (json_int_t)cst.nchunks);
}

static int parse_job(const char *arg, struct job *j)
{
	const char *colon = strchr(arg, ':');
	uint64_t len;

	if (!colon || hash_from_hex(arg, (size_t)(colon - arg), &j->h) ||
	    parse_size(colon + 1, &len) || len == 0 || len > CHUNK_SIZE_MAX)
		return -EINVAL;
	j->len = (uint32_t)len;
	return 0;
}

static int load_manifest(const char *path, struct manifest **m)
{
	char err[256] = "", *buf = NULL;
	size_t len;
	int ret;

	ret = read_file(path, MANIFEST_MAX_BYTES, &buf, &len);
	if (ret == 0)
		ret = manifest_parse(buf, len, m, err, sizeof(err));
	if (ret)
		fprintf(stderr, "fetchtool: %s: %s %s\n", path, strerror(-ret), err);
	free(buf);
	return ret;
}

static void usage(void)
{
	fprintf(stderr, "usage: fetchtool --store DIR --seed URL [--deadline-ms N] [--threads N]\n"
			"  [--workers N] [--retry-initial-ms N] [--retry-max-ms N]\n"
			"  [--request-timeout-ms N] [--readahead N] [--ca-file PEM]\n"
			"  (HEX:LEN... | --image FILE)\n");
}

int main(int argc, char **argv)
{
	static const struct option lopts[] = {
		{"store", 1, 0, 's'},	     {"seed", 1, 0, 'u'},
		{"deadline-ms", 1, 0, 'd'},  {"threads", 1, 0, 't'},
		{"workers", 1, 0, 'w'},	     {"retry-initial-ms", 1, 0, 'i'},
		{"retry-max-ms", 1, 0, 'x'}, {"request-timeout-ms", 1, 0, 'r'},
		{"readahead", 1, 0, 'a'},    {"image", 1, 0, 'm'},
		{"ca-file", 1, 0, 'c'},	     {0, 0, 0, 0},
	};
	struct chunkstore_opts so = {0};
	struct fetcher_opts fo = {0};
	struct chunkstore *cs = NULL;
	struct fetcher *f = NULL;
	struct ctx c = {.deadline_ms = 10000};
	struct thread_arg *ta = NULL;
	const char *image = NULL;
	unsigned nthreads = 1, nout;
	int opt, ret = 2, failed = 0;
	uint64_t t0;
	json_t *res, *arr;

	log_init("fetchtool", LOG_LVL_INFO, 1);
	fo.no_readahead = true;
	while ((opt = getopt_long(argc, argv, "", lopts, NULL)) != -1) {
		switch (opt) {
		case 's':
			so.dir = optarg;
			break;
		case 'u':
			fo.seed_url = optarg;
			break;
		case 'd':
			c.deadline_ms = strtoull(optarg, NULL, 10);
			break;
		case 't':
			nthreads = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'w':
			fo.workers = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'i':
			fo.retry_initial_ms = strtoull(optarg, NULL, 10);
			break;
		case 'x':
			fo.retry_max_ms = strtoull(optarg, NULL, 10);
			break;
		case 'r':
			fo.request_timeout_ms = strtoull(optarg, NULL, 10);
			break;
		case 'a':
			fo.readahead_chunks = (unsigned)strtoul(optarg, NULL, 10);
			fo.no_readahead = fo.readahead_chunks == 0;
			break;
		case 'm':
			image = optarg;
			break;
		case 'c':
			fo.seed_ca_file = optarg;
			break;
		default:
			usage();
			return 2;
		}
	}
	if (!so.dir || !fo.seed_url || nthreads == 0 || nthreads > 256 ||
	    (image ? optind != argc : optind == argc)) {
		usage();
		return 2;
	}
	if (image) {
		if (load_manifest(image, &c.m))
			return 2;
		for (uint64_t i = 0; i < c.m->nchunks; i++)
			c.njobs += !manifest_chunk_is_zero(c.m, i);
		nthreads = 1;
	} else {
		c.njobs = (size_t)(argc - optind);
		c.jobs = calloc(c.njobs, sizeof(*c.jobs));
		if (!c.jobs)
			return 2;
		for (size_t i = 0; i < c.njobs; i++) {
			if (parse_job(argv[optind + (int)i], &c.jobs[i])) {
				fprintf(stderr, "fetchtool: bad chunk %s (want HEX:LEN)\n",
					argv[optind + (int)i]);
				goto out;
			}
		}
	}
	nout = (unsigned)(nthreads * c.njobs);
	c.out = calloc(nout ? nout : 1, sizeof(*c.out));
	ta = calloc(nthreads, sizeof(*ta));
	if (!c.out || !ta)
		goto out;
	ret = mkdir_p(so.dir, 0755);
	if (ret == 0)
		ret = chunkstore_open(&so, &cs);
	if (ret) {
		fprintf(stderr, "fetchtool: store %s: %s\n", so.dir, strerror(-ret));
		ret = 2;
		goto out;
	}
	fo.store = cs;
	ret = fetcher_create(&fo, &f);
	if (ret) {
		fprintf(stderr, "fetchtool: fetcher: %s\n", strerror(-ret));
		ret = 2;
		goto out;
	}
	c.f = f;
	t0 = now_ns();
	if (image) {
		run_image(&c);
	} else {
		for (unsigned t = 0; t < nthreads; t++) {
			ta[t] = (struct thread_arg){.c = &c, .t = t};
			pthread_create(&ta[t].tid, NULL, run_list, &ta[t]);
		}
		for (unsigned t = 0; t < nthreads; t++)
			pthread_join(ta[t].tid, NULL);
	}
	arr = json_array();
	for (unsigned k = 0; k < nout; k++) {
		failed += c.out[k].rc != 0;
		json_array_append_new(arr, json_pack("{s:i,s:s,s:f}", "rc", c.out[k].rc, "error",
						     c.out[k].rc ? strerror(-c.out[k].rc) : "",
						     "ms", c.out[k].ms));
	}
	res = json_pack("{s:o,s:o,s:f}", "results", arr, "stats", stats_json(f, cs), "elapsed_ms",
			(double)(now_ns() - t0) / 1e6);
	json_dumpf(res, stdout, JSON_COMPACT);
	putchar('\n');
	json_decref(res);
	ret = failed ? 1 : 0;
out:
	fetcher_destroy(f);
	chunkstore_close(cs);
	manifest_free(c.m);
	free(c.jobs);
	free(c.out);
	free(ta);
	return ret;
}
