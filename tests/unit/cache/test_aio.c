/*
 * test_aio.c - the libaio read layer: synchronous reads (buffered and O_DIRECT, aligned and
 * not), the eventfd event-loop mode, the depth limit and the O_DIRECT probe.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "cache/aio.h"
#include "common/util.h"

#define FLEN (1024 * 1024 + 3000) /* not a multiple of the alignment */

struct fixture {
	char dir[64];
	char path[128];
	uint8_t *data;
	int fd, dfd; /* buffered, O_DIRECT (-1 if refused) */
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	snprintf(f->dir, sizeof(f->dir), "/var/tmp/rd-aio-XXXXXX"); /* a real disk */
	assert_non_null(mkdtemp(f->dir));
	snprintf(f->path, sizeof(f->path), "%s/data", f->dir);
	f->data = malloc(FLEN);
	for (size_t i = 0; i < FLEN; i++)
		f->data[i] = (uint8_t)(i * 7 + (i >> 12));
	f->fd = open(f->path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	assert_true(f->fd >= 0);
	assert_int_equal(pwrite_full(f->fd, f->data, FLEN, 0), 0);
	assert_int_equal(fsync(f->fd), 0);
	f->dfd = open(f->path, O_RDONLY | O_DIRECT);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	close(f->fd);
	if (f->dfd >= 0)
		close(f->dfd);
	unlink(f->path);
	rmdir(f->dir);
	free(f->data);
	free(f);
	return 0;
}

static void check_reads(struct fixture *f, int fd, bool direct)
{
	static const struct {
		uint64_t off;
		size_t len;
	} cases[] = {
		{0, 4096},	 {4096, 65536},	    {1, 10},   {4095, 4098},
		{12345, 300000}, {FLEN - 100, 100}, {0, FLEN},
	};
	uint8_t *buf = malloc(FLEN + 1);

	for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
		/* +1: an unaligned destination too */
		uint8_t *dst = i % 2 ? buf + 1 : buf;

		memset(dst, 0xee, cases[i].len);
		assert_int_equal(aio_pread(fd, dst, cases[i].len, cases[i].off, direct), 0);
		assert_memory_equal(dst, f->data + cases[i].off, cases[i].len);
		memset(dst, 0xee, cases[i].len);
		assert_int_equal(aio_pread_native(fd, dst, cases[i].len, cases[i].off, direct), 0);
		assert_memory_equal(dst, f->data + cases[i].off, cases[i].len);
	}
	/* past the end of the file: a short read is an error, not silent garbage */
	assert_int_equal(aio_pread(fd, buf, 200, FLEN - 100, direct), -EIO);
	assert_int_equal(aio_pread_native(fd, buf, 200, FLEN - 100, direct), -EIO);
	free(buf);
}

static void test_sync_buffered(void **state)
{
	struct fixture *f = *state;

	check_reads(f, f->fd, false);
}

static void test_sync_direct(void **state)
{
	struct fixture *f = *state;

	assert_true(aio_direct_supported(f->dir)); /* /var/tmp is on ext4 here */
	assert_true(f->dfd >= 0);
	check_reads(f, f->dfd, true);
}

struct done_rec {
	int res;
	int calls;
};

static void on_done(struct aio_req *r, int res)
{
	struct done_rec *d = r->arg;

	d->res = res;
	d->calls++;
}

static void test_eventfd_loop(void **state)
{
	struct fixture *f = *state;
	enum { N = 16, LEN = 6000 };
	struct aio_ctx *ctx;
	struct aio_req req[N + 1];
	struct done_rec rec[N + 1];
	uint8_t *bufs = malloc((N + 1) * LEN);
	int done = 0;

	assert_int_equal(aio_ctx_new(N, &ctx), 0);
	memset(rec, 0, sizeof(rec));
	for (int i = 0; i <= N; i++) {
		req[i] = (struct aio_req){.fd = i % 2 ? f->dfd : f->fd,
					  .direct = i % 2,
					  .buf = bufs + i * LEN,
					  .len = LEN,
					  .off = (uint64_t)i * 50001,
					  .done = on_done,
					  .arg = &rec[i]};
	}
	for (int i = 0; i < N; i++)
		assert_int_equal(aio_submit(ctx, &req[i]), 0);
	/* depth N: one more cannot be in flight (the direct ones may still be) */
	if (aio_ctx_inflight(ctx) == N)
		assert_int_equal(aio_submit(ctx, &req[N]), -EAGAIN);
	/* the loop: wait for the eventfd, reap; bounded */
	for (int round = 0; round < 1000 && done < N; round++) {
		struct pollfd pfd = {.fd = aio_ctx_fd(ctx), .events = POLLIN};

		assert_true(poll(&pfd, 1, 5000) >= 0);
		int n = aio_reap(ctx);
		assert_true(n >= 0);
		done += n;
	}
	assert_int_equal(done, N);
	assert_int_equal(aio_ctx_inflight(ctx), 0);
	for (int i = 0; i < N; i++) {
		assert_int_equal(rec[i].calls, 1);
		assert_int_equal(rec[i].res, 0);
		assert_memory_equal(bufs + i * LEN, f->data + req[i].off, LEN);
	}
	/* aio_wait: the blocking variant */
	assert_int_equal(aio_submit(ctx, &req[N]), 0);
	for (int round = 0; round < 100 && !rec[N].calls; round++)
		assert_true(aio_wait(ctx, 5000) >= 0);
	assert_int_equal(rec[N].calls, 1);
	assert_memory_equal(bufs + N * LEN, f->data + req[N].off, LEN);
	aio_ctx_free(ctx);
	free(bufs);
}

/* What open(O_DIRECT) of a new file in dir says, independently of the probe. */
static bool direct_open_works(const char *dir)
{
	char path[256];
	int fd;

	snprintf(path, sizeof(path), "%s/rd-odirect-check.%d", dir, (int)getpid());
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_DIRECT, 0600);
	unlink(path);
	if (fd < 0)
		return false;
	close(fd);
	return true;
}

static void test_direct_probe(void **state)
{
	/* tmpfs refused O_DIRECT before Linux 6.6 and takes it since: trust the open */
	assert_int_equal(aio_direct_supported("/var/tmp"), direct_open_works("/var/tmp"));
	assert_int_equal(aio_direct_supported("/dev/shm"), direct_open_works("/dev/shm"));
	assert_false(aio_direct_supported("/nonexistent-rackdisk-dir"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_sync_buffered, setup, teardown),
		cmocka_unit_test_setup_teardown(test_sync_direct, setup, teardown),
		cmocka_unit_test_setup_teardown(test_eventfd_loop, setup, teardown),
		cmocka_unit_test(test_direct_probe),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
