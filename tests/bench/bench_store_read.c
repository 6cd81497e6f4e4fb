/*
 * bench_store_read.c - cached chunk reads through the chunk store, buffered and O_DIRECT,
 * against the baseline: pread() from one raw file holding the same bytes.
 *
 * It decides the chunk store's default I/O mode (cache/aio.c's file comment) and whether
 * aio_pread() should take the io_submit path for buffered descriptors. Each store row is
 * the full hot path: chunkstore_get() + chunkstore_read() + chunkstore_put() per read.
 *
 * Usage: bench_store_read [--dir DIR] [--seconds S]
 */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cache/aio.h"
#include "cache/chunkstore.h"
#include "common/hash.h"
#include "common/util.h"

#define NCHUNKS 64
#define CHUNK	(1u << 20)

enum mode { M_RAW, M_STORE, M_STORE_NATIVE, M_STORE_DIRECT };

static const char *mode_name[] = {
	[M_RAW] = "baseline: pread, raw file",
	[M_STORE] = "store, buffered (default)",
	[M_STORE_NATIVE] = "store, buffered via io_submit",
	[M_STORE_DIRECT] = "store, O_DIRECT via libaio",
};

struct ctx {
	int raw_fd;
	struct chunkstore *cs, *cs_direct;
	struct chunk_hash h[NCHUNKS];
	double seconds;
};

static uint64_t rng = 88172645463325252ull;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static int read_one(struct ctx *c, enum mode m, void *buf, size_t len)
{
	unsigned idx = (unsigned)(rnd() % NCHUNKS);
	uint32_t off = (uint32_t)((rnd() % (CHUNK / len)) * len);
	struct chunkstore *cs = m == M_STORE_DIRECT ? c->cs_direct : c->cs;
	struct chunk_ref *ref;
	int ret;

	if (m == M_RAW)
		return pread_full(c->raw_fd, buf, len, (uint64_t)idx * CHUNK + off);
	ret = chunkstore_get(cs, &c->h[idx], &ref);
	if (ret)
		return ret;
	if (m == M_STORE_NATIVE)
		ret = aio_pread_native(chunk_ref_fd(ref), buf, len, off, false);
	else
		ret = chunkstore_read(cs, ref, buf, len, off);
	chunkstore_put(cs, ref);
	return ret;
}

/* MiB/s and reads/s of one mode, run for c->seconds. */
static int measure(struct ctx *c, enum mode m, size_t len, double *mibs, double *iops)
{
	void *buf;
	uint64_t n = 0, t0 = now_ns(), t;

	if (posix_memalign(&buf, 4096, len))
		return -ENOMEM;
	do {
		for (int k = 0; k < 32; k++) {
			int ret = read_one(c, m, buf, len);

			if (ret) {
				fprintf(stderr, "bench: read failed: %s\n", strerror(-ret));
				free(buf);
				return ret;
			}
			n++;
		}
		t = now_ns();
	} while ((double)(t - t0) / 1e9 < c->seconds);
	*iops = (double)n / ((double)(t - t0) / 1e9);
	*mibs = *iops * (double)len / (1 << 20);
	free(buf);
	return 0;
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(p);
}

static int setup(struct ctx *c, const char *dir)
{
	struct chunkstore_opts o = {.dir = dir};
	struct chunkstore_opts od = {.dir = dir, .reader = true, .direct_io = true};
	char path[4200];
	uint8_t *b = malloc(CHUNK);
	int ret;

	ret = chunkstore_open(&o, &c->cs);
	if (ret)
		goto out;
	snprintf(path, sizeof(path), "%s/raw", dir);
	c->raw_fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	if (c->raw_fd < 0) {
		ret = -errno;
		goto out;
	}
	for (unsigned i = 0; i < NCHUNKS && !ret; i++) {
		for (unsigned k = 0; k < CHUNK; k++)
			b[k] = (uint8_t)(rnd() >> 24);
		hash_compute(b, CHUNK, &c->h[i]);
		ret = chunkstore_insert(c->cs, &c->h[i], b, CHUNK);
		if (!ret)
			ret = pwrite_full(c->raw_fd, b, CHUNK, (uint64_t)i * CHUNK);
	}
	if (!ret)
		ret = chunkstore_open(&od, &c->cs_direct); /* a reader, as the tgt module is */
out:
	free(b);
	return ret;
}

int main(int argc, char **argv)
{
	const char *base = "/var/tmp";
	struct ctx c = {.raw_fd = -1, .seconds = 0.5};
	char dir[4096];
	static const size_t sizes[] = {4096, 1 << 20};
	int ret;

	for (int i = 1; i + 1 < argc; i += 2) {
		if (!strcmp(argv[i], "--dir"))
			base = argv[i + 1];
		else if (!strcmp(argv[i], "--seconds"))
			c.seconds = atof(argv[i + 1]);
	}
	snprintf(dir, sizeof(dir), "%s/rd-bench-read-XXXXXX", base);
	if (!mkdtemp(dir)) {
		perror("mkdtemp");
		return 1;
	}
	ret = setup(&c, dir);
	if (ret) {
		fprintf(stderr, "bench: setup failed: %s\n", strerror(-ret));
		goto out;
	}
	printf("cached reads: %u chunks of 1 MiB in %s (page cache warm), %.1f s per row\n",
	       NCHUNKS, dir, c.seconds);
	for (size_t s = 0; s < ARRAY_SIZE(sizes) && !ret; s++) {
		double base_mibs = 0;

		/* warm the page cache and the descriptor cache */
		for (enum mode m = M_RAW; m <= M_STORE; m++) {
			double x, y;
			double sv = c.seconds;

			c.seconds = 0.05;
			measure(&c, m, sizes[s], &x, &y);
			c.seconds = sv;
		}
		for (enum mode m = M_RAW; m <= M_STORE_DIRECT && !ret; m++) {
			double mibs, iops;

			ret = measure(&c, m, sizes[s], &mibs, &iops);
			if (ret)
				break;
			if (m == M_RAW)
				base_mibs = mibs;
			printf("  %4zu KiB  %-32s %9.0f MiB/s %9.0f reads/s  %5.2fx\n",
			       sizes[s] / 1024, mode_name[m], mibs, iops, mibs / base_mibs);
		}
	}
out:
	chunkstore_close(c.cs_direct);
	chunkstore_close(c.cs);
	if (c.raw_fd >= 0)
		close(c.raw_fd);
	nftw(dir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	return ret ? 1 : 0;
}
