/*
 * image_cmd.c - `rackdisk image ...`: argument parsing and reports for publish (publish.c),
 * verify, ls and show (repo.c). The work lives in the library; this file only speaks to
 * the operator: one-line errors, human output by default, JSON with --json.
 */
#include "images/image_cmd.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "common/util.h"
#include "images/chunkobj.h"
#include "images/manifest.h"
#include "images/publish.h"
#include "images/repo.h"
#include "images/repoloc.h"

#define EXIT_FAIL	   1
#define EXIT_USAGE	   2
#define VERIFY_THREADS_MAX 16

struct cmd_args {
	const char *repo;
	const char *name;
	const char *chunk_size;
	int level, workers, json;
	const char *pos[2]; /* positional arguments */
	int npos;
};

static void usage(FILE *f)
{
	fprintf(f, "usage: rackdisk image publish SRC --repo DIR --name NAME [--chunk-size SIZE]\n"
		   "                             [--level 1..19] [--workers N] [--json]\n"
		   "       rackdisk image verify --repo DIR|URL NAME|ID [--workers N] [--json]\n"
		   "       rackdisk image ls --repo DIR|URL [--json]\n"
		   "       rackdisk image show --repo DIR|URL NAME|ID [--json]\n");
}

/* P(s): s made safe for a one-line message (a fresh buffer per use within a statement). */
#define P(s) publish_printable((s), (char[512]){0}, 512)
/* SHOWN(loc): a --repo as messages name it, without the user:password@ of a URL. */
#define SHOWN(loc) REPOLOC_SHOWN(loc)

static int errline(const char *what, const char *why)
{
	fprintf(stderr, "rackdisk: %s: %s\n", P(what), why);
	return EXIT_FAIL;
}

static int parse_int(const char *s, int lo, int hi, int *out)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return -EINVAL;
	*out = (int)v;
	return 0;
}

/*
 * A --repo that repoloc.h cannot read (another scheme, a file:// URL of another host) is a
 * usage error, found before anything is opened. With dir non-NULL, the location must be a
 * directory (publish writes files), returned in *dir (malloc'd).
 */
static int check_repo(const char *cmd, const char *repo, char **dir)
{
	struct repoloc l;
	char why[256];

	if (repoloc_parse(repo, &l, why, sizeof(why))) {
		fprintf(stderr, "rackdisk: image %s: --repo %s: %s\n", cmd, P(SHOWN(repo)), why);
		return EXIT_USAGE;
	}
	if (dir && l.http) {
		repoloc_free(&l);
		fprintf(stderr,
			"rackdisk: image %s: --repo %s: publish writes to a repository "
			"directory, not a URL\n",
			cmd, P(SHOWN(repo)));
		return EXIT_USAGE;
	}
	if (dir)
		*dir = l.where;
	else
		repoloc_free(&l);
	return 0;
}

/* Parses argv (argv[0] = subcommand); returns 0 or EXIT_USAGE after printing why. */
static int parse_args(int argc, char **argv, struct cmd_args *a)
{
	static const struct option opts[] = {
		{"repo", required_argument, NULL, 'r'},
		{"name", required_argument, NULL, 'n'},
		{"chunk-size", required_argument, NULL, 'c'},
		{"level", required_argument, NULL, 'l'},
		{"workers", required_argument, NULL, 'w'},
		{"json", no_argument, NULL, 'j'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int c;

	memset(a, 0, sizeof(*a));
	optind = 1;
	opterr = 0;
	while ((c = getopt_long(argc, argv, "r:n:c:jh", opts, NULL)) != -1) {
		switch (c) {
		case 'r':
			a->repo = optarg;
			break;
		case 'n':
			a->name = optarg;
			break;
		case 'c':
			a->chunk_size = optarg;
			break;
		case 'j':
			a->json = 1;
			break;
		case 'l':
			if (parse_int(optarg, 1, 19, &a->level))
				return errline("--level", "not a number from 1 to 19"), EXIT_USAGE;
			break;
		case 'w':
			if (parse_int(optarg, 1, 256, &a->workers))
				return errline("--workers", "not a number from 1 to 256"),
				       EXIT_USAGE;
			break;
		case 'h':
			usage(stdout);
			exit(0);
		default:
			fprintf(stderr,
				"rackdisk: image %s: unknown option or missing value '%s'\n",
				argv[0], P(argv[optind - 1]));
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	for (; optind < argc; optind++) {
		if (a->npos == 2) {
			fprintf(stderr, "rackdisk: image %s: unexpected argument '%s'\n", argv[0],
				P(argv[optind]));
			return EXIT_USAGE;
		}
		a->pos[a->npos++] = argv[optind];
	}
	if (!a->repo) {
		fprintf(stderr, "rackdisk: image %s: --repo is required\n", argv[0]);
		return EXIT_USAGE;
	}
	return check_repo(argv[0], a->repo, NULL);
}

static int need_positional(const char *cmd, const struct cmd_args *a, int n, const char *what)
{
	if (a->npos == n)
		return 0;
	fprintf(stderr, "rackdisk: image %s: expected %s\n", cmd, what);
	usage(stderr);
	return EXIT_USAGE;
}

/* publish ---------------------------------------------------------------------------- */

static void print_publish(const struct cmd_args *a, const struct publish_result *r)
{
	char hex[HASH_HEX_LEN + 1], s1[32], s2[32], s3[32];
	double secs = (double)r->elapsed_ns / 1e9;

	hash_to_hex(&r->id, hex);
	if (a->json) {
		printf("{\"name\":\"%s\",\"id\":\"%s\",\"size\":%llu,\"chunk_size\":%u,"
		       "\"format\":\"%s\",\"chunks\":%llu,\"zero_chunks\":%llu,"
		       "\"distinct_chunks\":%llu,\"new_chunks\":%llu,\"present_chunks\":%llu,"
		       "\"bytes_written\":%llu,\"seconds\":%.3f}\n",
		       a->name, hex, (unsigned long long)r->size, r->chunk_size,
		       r->qcow2 ? "qcow2" : "raw", (unsigned long long)r->chunks,
		       (unsigned long long)r->zero, (unsigned long long)r->distinct,
		       (unsigned long long)r->new_objects, (unsigned long long)r->present,
		       (unsigned long long)r->bytes_written, secs);
		return;
	}
	printf("published %s: image %s\n", a->name, hex);
	printf("  source %s, %s, chunk size %s\n", r->qcow2 ? "qcow2" : "raw",
	       format_size(r->size, s1, sizeof(s1)), format_size(r->chunk_size, s2, sizeof(s2)));
	printf("  chunks %llu, zero chunks %llu, distinct %llu, new %llu, already present %llu\n",
	       (unsigned long long)r->chunks, (unsigned long long)r->zero,
	       (unsigned long long)r->distinct, (unsigned long long)r->new_objects,
	       (unsigned long long)r->present);
	printf("  bytes written %llu (%s), %.2f s, %s/s\n", (unsigned long long)r->bytes_written,
	       format_size(r->bytes_written, s3, sizeof(s3)), secs,
	       format_size(secs > 0 ? (uint64_t)((double)r->size / secs) : 0, s1, sizeof(s1)));
}

/* The signal that asked a publish to stop (SIGINT, SIGTERM), or 0. */
static volatile sig_atomic_t publish_stop;

static void on_stop_signal(int sig)
{
	publish_stop = sig;
}

/*
 * SIGINT and SIGTERM make the publish stop and remove its temporary files (a whole image's
 * chunk objects can be in tmp/) before the process ends, by the same signal.
 */
static void catch_stop_signals(void)
{
	struct sigaction sa = {.sa_handler = on_stop_signal, .sa_flags = SA_RESTART};

	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

/* After a publish that a signal stopped: ends the process by that signal. */
static int die_by_stop_signal(void)
{
	int sig = publish_stop;

	fprintf(stderr, "rackdisk: image publish: interrupted by %s; temporary files removed\n",
		strsignal(sig));
	signal(sig, SIG_DFL);
	raise(sig);
	return 128 + sig; /* not reached unless the signal is blocked */
}

static int cmd_publish(int argc, char **argv)
{
	struct publish_result res;
	struct publish_opts o = {0};
	struct cmd_args a;
	char err[512], *dir = NULL;
	uint64_t cs = 0;
	int ret;

	ret = parse_args(argc, argv, &a);
	if (ret)
		return ret;
	ret = need_positional("publish", &a, 1, "one SRC");
	if (ret)
		return ret;
	if (!a.name) {
		fprintf(stderr, "rackdisk: image publish: --name is required\n");
		return EXIT_USAGE;
	}
	if (publish_check_name(a.name, err, sizeof(err))) {
		fprintf(stderr, "rackdisk: %s\n", err);
		return EXIT_USAGE;
	}
	ret = check_repo("publish", a.repo, &dir);
	if (ret)
		return ret;
	if (a.chunk_size && (parse_size(a.chunk_size, &cs) || !manifest_chunk_size_valid(cs))) {
		snprintf(err, sizeof(err), "chunk size '%s'", P(a.chunk_size));
		free(dir);
		return errline(err, "not a power of two from 64K to 16M"), EXIT_USAGE;
	}
	o.src = a.pos[0];
	o.repo_dir = dir;
	o.name = a.name;
	o.chunk_size = (uint32_t)cs;
	o.level = a.level;
	o.workers = a.workers;
	o.stop = &publish_stop;
	catch_stop_signals();
	ret = publish_image(&o, &res, err, sizeof(err));
	free(dir);
	if (publish_stop && ret && !res.index_stale)
		return die_by_stop_signal();
	if (ret && !res.index_stale) {
		fprintf(stderr, "rackdisk: %s\n", err);
		return EXIT_FAIL;
	}
	print_publish(&a, &res);
	if (ret) {
		fprintf(stderr, "rackdisk: %s\n", err);
		return EXIT_FAIL;
	}
	return 0;
}

/* verify ----------------------------------------------------------------------------- */

struct verify_item {
	uint64_t idx;  /* first chunk with this hash and length */
	uint64_t uses; /* chunks with this hash and length */
	int err;
	bool truncated;
};

struct verify_job {
	const char *loc;
	const struct manifest *m;
	struct verify_item *items;
	size_t nitems;
	size_t next;   /* under lock */
	int fatal;     /* transport error: the repository, not an object, failed */
	char why[512]; /* fatal in words (repo_strerror) */
	pthread_mutex_t lock;
};

static void *verify_worker(void *arg)
{
	struct verify_job *j = arg;
	struct repo *r = NULL;
	uint8_t *buf = malloc(j->m->chunk_size);
	int ret = repo_open(j->loc, &r);

	if (ret || !buf) {
		pthread_mutex_lock(&j->lock);
		j->fatal = ret ? ret : -ENOMEM;
		snprintf(j->why, sizeof(j->why), "%s", strerror(-j->fatal));
		pthread_mutex_unlock(&j->lock);
		goto out;
	}
	for (;;) {
		struct verify_item *it;
		void *obj = NULL;
		size_t olen = 0, i;

		pthread_mutex_lock(&j->lock);
		i = j->fatal ? j->nitems : j->next++;
		pthread_mutex_unlock(&j->lock);
		if (i >= j->nitems)
			break;
		it = &j->items[i];
		ret = repo_get_chunk_object(r, &j->m->hashes[it->idx], &obj, &olen);
		if (!ret) {
			ret = chunkobj_decode(obj, olen, buf, manifest_chunk_len(j->m, it->idx),
					      &j->m->hashes[it->idx]);
			it->truncated = ret == -EBADMSG && chunkobj_is_truncated(obj, olen);
		}
		free(obj);
		it->err = ret;
		if (ret && !chunkobj_strerror(ret, false)) {
			pthread_mutex_lock(&j->lock);
			if (!j->fatal) {
				j->fatal = ret;
				snprintf(j->why, sizeof(j->why), "%s", repo_strerror(r, ret));
			}
			pthread_mutex_unlock(&j->lock);
		}
	}
out:
	free(buf);
	repo_close(r);
	return NULL;
}

static const struct manifest *sort_m;

static int cmp_object(const struct manifest *m, const struct verify_item *x,
		      const struct verify_item *y)
{
	uint32_t lx = manifest_chunk_len(m, x->idx), ly = manifest_chunk_len(m, y->idx);
	int c = memcmp(m->hashes[x->idx].b, m->hashes[y->idx].b, HASH_LEN);

	return c ? c : (lx > ly) - (lx < ly);
}

static int cmp_by_object(const void *a, const void *b)
{
	const struct verify_item *x = a, *y = b;
	int c = cmp_object(sort_m, x, y);

	return c ? c : (x->idx > y->idx) - (x->idx < y->idx);
}

static int cmp_by_idx(const void *a, const void *b)
{
	const struct verify_item *x = a, *y = b;

	return (x->idx > y->idx) - (x->idx < y->idx);
}

/*
 * One item per distinct (hash, length), in chunk order: an object is checked once per
 * length it is read at. A short last chunk naming a full chunk's hash is its own check (it
 * can never be read: the object decodes to the wrong size).
 */
static size_t distinct_items(const struct manifest *m, struct verify_item *items)
{
	size_t n = 0, k = 0;

	for (uint64_t i = 0; i < m->nchunks; i++)
		if (!m->zero[i])
			items[n++] = (struct verify_item){.idx = i, .uses = 1};
	sort_m = m;
	qsort(items, n, sizeof(*items), cmp_by_object);
	for (size_t i = 0; i < n; i++) {
		if (k && !cmp_object(m, &items[k - 1], &items[i]))
			items[k - 1].uses++;
		else
			items[k++] = items[i];
	}
	qsort(items, k, sizeof(*items), cmp_by_idx);
	return k;
}

static int run_verify(const char *loc, const struct manifest *m, int threads,
		      struct verify_item *items, size_t n, char *why, size_t whylen)
{
	struct verify_job j = {.loc = loc, .m = m, .items = items, .nitems = n};
	pthread_t tids[VERIFY_THREADS_MAX];
	int started = 0;

	pthread_mutex_init(&j.lock, NULL);
	for (; started < threads; started++)
		if (pthread_create(&tids[started], NULL, verify_worker, &j))
			break;
	if (!started)
		verify_worker(&j);
	for (int i = 0; i < started; i++)
		pthread_join(tids[i], NULL);
	pthread_mutex_destroy(&j.lock);
	snprintf(why, whylen, "%s", j.why);
	return j.fatal;
}

/*
 * The common start of the commands that act on one image: parses argv (one positional
 * NAME or id), opens the repository and loads the image's manifest. On success the
 * caller owns *r and *m; on failure the error line is printed, nothing is left open, and
 * the exit status is returned.
 */
static int open_named_image(const char *cmd, int argc, char **argv, struct cmd_args *a,
			    struct repo **r, struct manifest **m)
{
	char err[512];
	int ret;

	ret = parse_args(argc, argv, a);
	if (ret || (ret = need_positional(cmd, a, 1, "one NAME")))
		return ret;
	ret = repo_open(a->repo, r);
	if (ret)
		return errline(SHOWN(a->repo), strerror(-ret));
	if (repo_load_image(*r, a->pos[0], m, err, sizeof(err))) {
		repo_close(*r);
		*r = NULL;
		return errline(SHOWN(a->repo), err);
	}
	return 0;
}

static int cmd_verify(int argc, char **argv)
{
	struct verify_item *items = NULL;
	struct manifest *m = NULL;
	struct repo *r = NULL;
	struct cmd_args a;
	char hex[HASH_HEX_LEN + 1], why[512];
	size_t n, bad = 0;
	int ret, threads;

	ret = open_named_image("verify", argc, argv, &a, &r, &m);
	if (ret)
		return ret;
	items = calloc(m->nchunks + 1, sizeof(*items));
	if (!items) {
		ret = errline("verify", "out of memory");
		goto out;
	}
	n = distinct_items(m, items);
	threads = a.workers ? a.workers : (int)sysconf(_SC_NPROCESSORS_ONLN);
	threads = MAX(1, MIN(threads, VERIFY_THREADS_MAX));
	ret = run_verify(a.repo, m, threads, items, n, why, sizeof(why));
	if (ret) {
		ret = errline(SHOWN(a.repo), why);
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		if (!items[i].err)
			continue;
		bad++;
		hash_to_hex(&m->hashes[items[i].idx], hex);
		fprintf(stderr, "rackdisk: chunk %llu (%s): %s", (unsigned long long)items[i].idx,
			hex, chunkobj_strerror(items[i].err, items[i].truncated));
		if (items[i].uses > 1)
			fprintf(stderr, " (object shared by %llu chunks)",
				(unsigned long long)items[i].uses);
		fputc('\n', stderr);
	}
	hash_to_hex(&m->id, hex);
	if (a.json)
		printf("{\"name\":\"%s\",\"id\":\"%s\",\"objects\":%zu,\"bad\":%zu,\"ok\":%s}\n",
		       a.pos[0], hex, n, bad, bad ? "false" : "true");
	else
		printf("%s %s: %zu objects checked, %zu bad\n", bad ? "FAILED" : "verified",
		       a.pos[0], n, bad);
	ret = bad ? EXIT_FAIL : 0;
out:
	free(items);
	manifest_free(m);
	repo_close(r);
	return ret;
}

/* show and ls ------------------------------------------------------------------------ */

static uint64_t count_distinct(const struct manifest *m, uint64_t *zero)
{
	struct verify_item *items = calloc(m->nchunks + 1, sizeof(*items));
	uint64_t n;

	*zero = 0;
	for (uint64_t i = 0; i < m->nchunks; i++)
		*zero += m->zero[i];
	if (!items)
		return 0;
	n = distinct_items(m, items);
	free(items);
	return n;
}

static json_t *image_json(const char *name, const struct manifest *m)
{
	char hex[HASH_HEX_LEN + 1];
	uint64_t zero, distinct = count_distinct(m, &zero);

	hash_to_hex(&m->id, hex);
	return json_pack("{s:s, s:s, s:I, s:I, s:I, s:I, s:I}", "name", name, "id", hex, "size",
			 (json_int_t)m->size, "chunk_size", (json_int_t)m->chunk_size, "chunks",
			 (json_int_t)m->nchunks, "zero_chunks", (json_int_t)zero, "distinct_chunks",
			 (json_int_t)distinct);
}

static int cmd_show(int argc, char **argv)
{
	struct manifest *m = NULL;
	struct repo *r = NULL;
	struct cmd_args a;
	char hex[HASH_HEX_LEN + 1], s1[32], s2[32];
	uint64_t zero, distinct;
	int ret;

	ret = open_named_image("show", argc, argv, &a, &r, &m);
	if (ret)
		return ret;
	if (a.json) {
		json_t *j = image_json(a.pos[0], m);

		ret = j ? 0 : errline("show", "out of memory");
		if (j)
			json_dumpf(j, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		if (j)
			putchar('\n');
		json_decref(j);
		goto out;
	}
	distinct = count_distinct(m, &zero);
	hash_to_hex(&m->id, hex);
	printf("name        %s\n", a.pos[0]);
	printf("id          %s\n", hex);
	printf("size        %llu (%s)\n", (unsigned long long)m->size,
	       format_size(m->size, s1, sizeof(s1)));
	printf("chunk size  %u (%s)\n", m->chunk_size, format_size(m->chunk_size, s2, sizeof(s2)));
	printf("chunks      %llu total, %llu zero, %llu distinct\n", (unsigned long long)m->nchunks,
	       (unsigned long long)zero, (unsigned long long)distinct);
	ret = 0;
out:
	manifest_free(m);
	repo_close(r);
	return ret;
}

struct ls_ctx {
	struct repo *r;
	json_t *arr; /* --json */
	int failed;
};

static int ls_one(void *arg, const char *name)
{
	struct ls_ctx *c = arg;
	struct manifest *m = NULL;
	char err[512], hex[HASH_HEX_LEN + 1], s1[32];

	if (repo_load_image(c->r, name, &m, err, sizeof(err))) {
		fprintf(stderr, "rackdisk: %s\n", err);
		c->failed = 1;
		return 0;
	}
	hash_to_hex(&m->id, hex);
	if (c->arr)
		json_array_append_new(c->arr, image_json(name, m));
	else
		printf("%-24s %s %10s\n", name, hex, format_size(m->size, s1, sizeof(s1)));
	manifest_free(m);
	return 0;
}

static int cmd_ls(int argc, char **argv)
{
	struct ls_ctx c = {0};
	struct cmd_args a;
	int ret;

	ret = parse_args(argc, argv, &a);
	if (ret || (ret = need_positional("ls", &a, 0, "no positional argument")))
		return ret;
	ret = repo_open(a.repo, &c.r);
	if (ret)
		return errline(SHOWN(a.repo), strerror(-ret));
	if (a.json)
		c.arr = json_array();
	ret = repo_list_tags(c.r, ls_one, &c);
	if (ret) {
		ret = errline(SHOWN(a.repo), repo_strerror(c.r, ret));
		goto out;
	}
	if (c.arr) {
		json_dumpf(c.arr, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		putchar('\n');
	}
	ret = c.failed ? EXIT_FAIL : 0;
out:
	json_decref(c.arr);
	repo_close(c.r);
	return ret;
}

int image_cmd_main(int argc, char **argv)
{
	if (argc < 2) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (!strcmp(argv[1], "publish"))
		return cmd_publish(argc - 1, argv + 1);
	if (!strcmp(argv[1], "verify"))
		return cmd_verify(argc - 1, argv + 1);
	if (!strcmp(argv[1], "ls"))
		return cmd_ls(argc - 1, argv + 1);
	if (!strcmp(argv[1], "show"))
		return cmd_show(argc - 1, argv + 1);
	if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
		usage(stdout);
		return 0;
	}
	fprintf(stderr, "rackdisk: image: unknown command '%s'\n", P(argv[1]));
	usage(stderr);
	return EXIT_USAGE;
}
