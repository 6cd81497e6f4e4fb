/*
 * bench_store_open.c - how long chunkstore_open() takes to rebuild the index of a store of
 * many chunk files, against the baseline `find DIR -type f | wc -l` over the same tree in
 * the same run (a walk that, like ours, reads every directory but stats nothing).
 *
 * The files are real chunks (4 KiB, named by their SHA-256) in a temporary directory on
 * the real disk; the page cache is warm (the files were just written), which is the
 * restart-of-the-daemon case; dropping the caches would disturb the other users of the
 * machine. The find and the open alternate, PAIRS times each (which one goes first
 * alternates too, so neither is always the one that runs on what the other warmed), and
 * each is summed up by its median; the ratio is open / find of the medians.
 *
 * Usage: bench_store_open [--files N] [--dir BASE] [--keep]
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cache/chunkstore.h"
#include "common/hash.h"
#include "common/util.h"

#define FLEN	4096
#define WRITERS 2
#define PAIRS	3 /* find / open alternations */

struct writer {
	const char *dir;
	unsigned first, count;
	int err;
};

static void *write_files(void *arg)
{
	struct writer *w = arg;
	uint8_t buf[FLEN];
	char path[4096], hex[HASH_HEX_LEN + 1];

	memset(buf, 0x5a, sizeof(buf));
	for (unsigned i = w->first; i < w->first + w->count && !w->err; i++) {
		struct chunk_hash h;
		int fd;

		memcpy(buf, &i, sizeof(i));
		hash_compute(buf, FLEN, &h);
		hash_to_hex(&h, hex);
		snprintf(path, sizeof(path), "%s/chunks/%.2s/%s", w->dir, hex, hex);
		fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0 || pwrite_full(fd, buf, FLEN, 0)) {
			w->err = errno ? -errno : -EIO;
		}
		if (fd >= 0)
			close(fd);
	}
	return NULL;
}

static int create_store(const char *dir, unsigned n)
{
	char path[4096];
	struct writer w[WRITERS];
	pthread_t th[WRITERS];

	snprintf(path, sizeof(path), "%s/chunks", dir);
	if (mkdir(path, 0755) < 0)
		return -errno;
	for (unsigned i = 0; i < 256; i++) {
		snprintf(path, sizeof(path), "%s/chunks/%02x", dir, i);
		if (mkdir(path, 0755) < 0)
			return -errno;
	}
	for (unsigned t = 0; t < WRITERS; t++) {
		w[t] = (struct writer){.dir = dir,
				       .first = t * (n / WRITERS),
				       .count = t == WRITERS - 1 ? n - t * (n / WRITERS)
								 : n / WRITERS};
		if (pthread_create(&th[t], NULL, write_files, &w[t]))
			return -EAGAIN;
	}
	for (unsigned t = 0; t < WRITERS; t++)
		pthread_join(th[t], NULL);
	for (unsigned t = 0; t < WRITERS; t++)
		if (w[t].err)
			return w[t].err;
	sync();
	return 0;
}

static double find_baseline(const char *dir, unsigned long *count)
{
	char cmd[4200], line[64] = "";
	uint64_t t0 = now_ns();
	FILE *p;

	snprintf(cmd, sizeof(cmd), "find '%s/chunks' -type f | wc -l", dir);
	p = popen(cmd, "r");
	if (!p)
		return -1;
	if (!fgets(line, sizeof(line), p))
		line[0] = 0;
	pclose(p);
	*count = strtoul(line, NULL, 10);
	return (double)(now_ns() - t0) / 1e9;
}

static double time_open(const char *dir, bool verify, uint64_t *nchunks)
{
	struct chunkstore_opts o = {.dir = dir, .verify_on_open = verify};
	struct chunkstore *cs;
	struct chunkstore_stats st;
	uint64_t t0 = now_ns();
	double secs;
	int ret = chunkstore_open(&o, &cs);

	if (ret) {
		fprintf(stderr, "bench: open: %s\n", strerror(-ret));
		return -1;
	}
	secs = (double)(now_ns() - t0) / 1e9;
	chunkstore_get_stats(cs, &st);
	*nchunks = st.nchunks;
	chunkstore_close(cs);
	return secs;
}

struct remover {
	const char *dir;
	unsigned next; /* atomic: next <hh> directory */
};

/* Unlinks the files of the <hh> directories, several threads at once: with the disk
 * mounted with online discard each unlink is slow, and one thread would take minutes. */
static void *remove_files(void *arg)
{
	struct remover *r = arg;
	unsigned i;

	while ((i = __atomic_fetch_add(&r->next, 1, __ATOMIC_RELAXED)) < 256) {
		char path[4096];
		struct dirent *de;
		DIR *d;

		snprintf(path, sizeof(path), "%s/chunks/%02x", r->dir, i);
		d = opendir(path);
		if (!d)
			continue;
		while ((de = readdir(d)))
			if (de->d_name[0] != '.')
				unlinkat(dirfd(d), de->d_name, 0);
		closedir(d);
	}
	return NULL;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return x < y ? -1 : x > y;
}

static double median(double *v, unsigned n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(p);
}

static void remove_tree(const char *dir)
{
	struct remover r = {.dir = dir};
	pthread_t th[16];
	unsigned n = 0;

	for (; n < ARRAY_SIZE(th); n++)
		if (pthread_create(&th[n], NULL, remove_files, &r))
			break;
	for (unsigned i = 0; i < n; i++)
		pthread_join(th[i], NULL);
	nftw(dir, rm_cb, 64, FTW_DEPTH | FTW_PHYS);
}

int main(int argc, char **argv)
{
	unsigned files = 1000000;
	const char *base = "/var/tmp";
	bool keep = false;
	char dir[2048];
	unsigned long found[PAIRS];
	uint64_t n1[PAIRS], n2 = 0, t0;
	double tf[PAIRS], to[PAIRS], mf, mo;
	int ret = 1;

	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--files") && i + 1 < argc)
			files = (unsigned)strtoul(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--dir") && i + 1 < argc)
			base = argv[++i];
		else if (!strcmp(argv[i], "--keep"))
			keep = true;
	}
	snprintf(dir, sizeof(dir), "%s/rd-bench-open-XXXXXX", base);
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	t0 = now_ns();
	if (create_store(dir, files)) {
		fprintf(stderr, "bench: cannot create %u files in %s\n", files, dir);
		goto out;
	}
	printf("store open: %u chunk files of 4 KiB in %s (created in %.1f s)\n", files, dir,
	       (double)(now_ns() - t0) / 1e9);

	for (unsigned k = 0; k < PAIRS; k++) {
		if (k % 2 == 0) {
			tf[k] = find_baseline(dir, &found[k]);
			to[k] = time_open(dir, false, &n1[k]);
		} else {
			to[k] = time_open(dir, false, &n1[k]);
			tf[k] = find_baseline(dir, &found[k]);
		}
		if (tf[k] < 0 || to[k] < 0 || found[k] != files || n1[k] != files) {
			fprintf(stderr, "bench: counts differ: find %lu, open %llu, want %u\n",
				found[k], (unsigned long long)n1[k], files);
			goto out;
		}
	}
	double tv = time_open(dir, true, &n2);

	if (tv < 0 || n2 != files) {
		fprintf(stderr, "bench: counts differ: verify %llu, want %u\n",
			(unsigned long long)n2, files);
		goto out;
	}
	mf = median(tf, PAIRS); /* sorts: tf[0] and tf[PAIRS - 1] are the range */
	mo = median(to, PAIRS);
	printf("  baseline: find -type f | wc -l  %7.2f s  (median of %u, range %.2f-%.2f)\n", mf,
	       PAIRS, tf[0], tf[PAIRS - 1]);
	printf("  chunkstore_open()               %7.2f s  (median of %u, range %.2f-%.2f), %u "
	       "chunks\n", mo, PAIRS, to[0], to[PAIRS - 1], files);
	printf("  ratio open/find %.2fx (medians, the find and the open alternating; lower is "
	       "faster)\n", mo / mf);
	printf("  chunkstore_open(verify_on_open) %7.2f s  (re-hashes all %.1f GiB)\n", tv,
	       (double)files * FLEN / (1 << 30));
	ret = 0;
out:
	if (keep) {
		printf("  kept %s\n", dir);
	} else {
		t0 = now_ns();
		remove_tree(dir);
		printf("  (removed the tree in %.1f s)\n", (double)(now_ns() - t0) / 1e9);
	}
	return ret;
}
