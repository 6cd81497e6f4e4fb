/*
 * test_source.c - the input of publish: reading a raw file that shrinks after it was opened,
 * the error messages of source_check and source_open, and a file replaced at its path
 * while publish works on it (tests/unit/images.mk links this test with
 * -Wl,--wrap=posix_spawnp, so that the replacement happens at a chosen qemu-img run), or
 * that grows while it is copied into the private snapshot (-Wl,--wrap=ioctl: the grow
 * happens at the FICLONE attempt; -Wl,--wrap=copy_file_range counts what is copied).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <linux/fs.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include <spawn.h>

#include "images/source.h"
#include "tests/unit/images/publish_fixture.h"

#define KIB 1024

/* ---- replacing the input while qemu-img runs ---- */

static const char *swap_at;	 /* the qemu-img subcommand ("check") before which ... */
static char swap_from[PATH_MAX]; /* ... this file is renamed ... */
static char swap_to[PATH_MAX];	 /* ... over the input */
static int swaps;

int __real_posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
			const posix_spawnattr_t *attr, char *const argv[], char *const envp[]);

int __wrap_posix_spawnp(pid_t *pid, const char *file, const posix_spawn_file_actions_t *fa,
			const posix_spawnattr_t *attr, char *const argv[], char *const envp[])
{
	if (swap_at && argv[1] && !strcmp(argv[1], swap_at)) {
		swap_at = NULL;
		if (rename(swap_from, swap_to) == 0)
			swaps++;
	}
	return __real_posix_spawnp(pid, file, fa, attr, argv, envp);
}

/* ---- growing the input while the snapshot is taken ---- */

static const char *grow_path; /* at the next FICLONE, this file gains data ... */
static off_t grow_at;	      /* ... from this offset ... */
static size_t grow_len;	      /* ... this long */
static uint64_t copied_end;   /* the furthest offset copy_file_range read up to */

int __real_ioctl(int fd, unsigned long req, ...);
ssize_t __real_copy_file_range(int in, loff_t *in_off, int out, loff_t *out_off, size_t len,
			       unsigned flags);

int __wrap_ioctl(int fd, unsigned long req, ...)
{
	va_list ap;
	void *arg;

	va_start(ap, req);
	arg = va_arg(ap, void *);
	va_end(ap);
	if (req == FICLONE && grow_path) {
		static char junk[1024 * 1024];
		int g = open(grow_path, O_WRONLY);

		memset(junk, 0x77, sizeof(junk));
		for (size_t done = 0; g >= 0 && done < grow_len; done += sizeof(junk))
			if (pwrite(g, junk, sizeof(junk), grow_at + (off_t)done) < 0)
				break;
		if (g >= 0)
			close(g);
		grow_path = NULL;
		errno = EOPNOTSUPP; /* no reflink: the copy of data segments is what is tested */
		return -1;
	}
	return __real_ioctl(fd, req, arg);
}

ssize_t __wrap_copy_file_range(int in, loff_t *in_off, int out, loff_t *out_off, size_t len,
			       unsigned flags)
{
	loff_t from = in_off ? *in_off : 0;
	ssize_t n = __real_copy_file_range(in, in_off, out, out_off, len, flags);

	if (n > 0 && (uint64_t)(from + n) > copied_end)
		copied_end = (uint64_t)(from + n);
	return n;
}

struct ctx {
	char dir[64];
	char file[96];
};

static int setup(void **state)
{
	struct ctx *c = calloc(1, sizeof(*c));
	char buf[64 * KIB];
	int fd;

	if (!c)
		return -1;
	snprintf(c->dir, sizeof(c->dir), "/tmp/rd-source-XXXXXX");
	if (!mkdtemp(c->dir))
		return -1;
	snprintf(c->file, sizeof(c->file), "%s/in.raw", c->dir);
	memset(buf, 0x5a, sizeof(buf));
	fd = open(c->file, O_WRONLY | O_CREAT | O_EXCL, 0644);
	if (fd < 0 || write(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf) || close(fd) < 0)
		return -1;
	*state = c;
	return 0;
}

static int teardown(void **state)
{
	struct ctx *c = *state;

	char cmd[128];

	swap_at = NULL;
	grow_path = NULL;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", c->dir);
	assert_int_equal(system(cmd), 0);
	free(c);
	return 0;
}

/* Runs a shell command line made from fmt; asserts it succeeded. */
static void sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void sh(const char *fmt, ...)
{
	char cmd[1024];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(cmd, sizeof(cmd), fmt, ap);
	va_end(ap);
	assert_int_equal(system(cmd), 0);
}

/* Entries of dir, "." and ".." not counted. */
static int count_entries(const char *dir)
{
	char cmd[256], line[32] = "";
	FILE *f;

	snprintf(cmd, sizeof(cmd), "ls -A '%s' | wc -l", dir);
	f = popen(cmd, "r");
	assert_non_null(f);
	assert_non_null(fgets(line, sizeof(line), f));
	pclose(f);
	return atoi(line);
}

/* Reads all of src; asserts its first byte (every byte is that one) and its size. */
static void assert_reads_as(struct image_source *src, int byte, uint64_t size)
{
	static char buf[64 * KIB], want[64 * KIB];

	assert_int_equal(src->size, size);
	memset(want, byte, sizeof(want));
	for (uint64_t off = 0; off < size; off += sizeof(buf)) {
		assert_int_equal(source_read(src, buf, sizeof(buf)), 0);
		assert_memory_equal(buf, want, sizeof(buf));
	}
}

/*
 * The fixture for the replacement tests: c->dir/tmp (the conversion's tmpdir, empty), a
 * 64 KiB secret of 'S' bytes and c->dir/evil.qcow2, a qcow2 whose backing file is that
 * secret: converted as it says, it is the secret.
 */
static void make_evil(struct ctx *c, char *tmpdir, size_t len)
{
	sh("cd '%s' && mkdir tmp && head -c 65536 /dev/zero | tr '\\0' S > secret && "
	   "qemu-img create -q -f qcow2 -F raw -b \"$PWD/secret\" evil.qcow2 64K",
	   c->dir);
	snprintf(tmpdir, len, "%s/tmp", c->dir);
	snprintf(swap_from, sizeof(swap_from), "%s/evil.qcow2", c->dir);
	snprintf(swap_to, sizeof(swap_to), "%s", c->file);
	swaps = 0;
}

/*
 * publish checks its input (source_check), then opens it (source_open). A raw file when
 * checked that is a qcow2 naming a secret when opened is judged as what is opened: refused,
 * never converted with its backing file.
 */
static void test_raw_replaced_by_a_qcow2_after_the_check_is_refused(void **state)
{
	struct ctx *c = *state;
	struct image_source src = {.fd = -1};
	char err[256], tmpdir[128];
	int ret;

	make_evil(c, tmpdir, sizeof(tmpdir));
	assert_int_equal(source_check(c->file, err, sizeof(err)), 0);
	assert_int_equal(rename(swap_from, swap_to), 0);
	ret = source_open(c->file, tmpdir, &src, err, sizeof(err));
	if (ret == 0)
		assert_reads_as(&src, 'S', 64 * KIB); /* fails: it published the secret */
	assert_int_equal(ret, -EPERM);
	assert_non_null(strstr(err, "qcow2 with a backing file: refused"));
	source_close(&src);
	assert_int_equal(count_entries(tmpdir), 0);
}

/*
 * A qcow2 that becomes another qcow2 (one naming a secret) while qemu-img works on it, after
 * `info` found no backing file: what is converted is the qcow2 that was checked.
 */
static void test_qcow2_replaced_while_qemu_img_runs_is_not_read(void **state)
{
	struct ctx *c = *state;
	struct image_source src = {.fd = -1};
	char err[256], tmpdir[128];

	make_evil(c, tmpdir, sizeof(tmpdir));
	sh("cd '%s' && qemu-img convert -q -f raw -O qcow2 in.raw in.qcow2 && mv in.qcow2 in.raw",
	   c->dir); /* c->file is a qcow2 now, reading as 64 KiB of 0x5a */
	swap_at = "check";
	assert_int_equal(source_check(c->file, err, sizeof(err)), 0);
	assert_int_equal(source_open(c->file, tmpdir, &src, err, sizeof(err)), 0);
	assert_int_equal(swaps, 1); /* the replacement did happen, before check and convert */
	assert_true(src.qcow2);
	assert_reads_as(&src, 0x5a, 64 * KIB);
	source_close(&src);
	assert_int_equal(count_entries(tmpdir), 0);
}

/* A file that shrinks after source_open measured it ends early: -ENODATA, which no read
 * error returns (a failing device returns -EIO, and must not read as "ended early"). */
static void test_input_that_shrinks_ends_early(void **state)
{
	struct ctx *c = *state;
	struct image_source src;
	char err[256], buf[16 * KIB];

	assert_int_equal(source_open(c->file, c->dir, &src, err, sizeof(err)), 0);
	assert_int_equal(src.size, 64 * KIB);
	assert_false(src.qcow2);
	assert_int_equal(source_read(&src, buf, sizeof(buf)), 0);
	assert_int_equal(buf[0], 0x5a);
	assert_int_equal(truncate(c->file, 24 * KIB), 0);
	assert_int_equal(source_read(&src, buf, sizeof(buf)), -ENODATA); /* 8 KiB were left */
	assert_int_equal(source_read(&src, buf, sizeof(buf)), -ENODATA); /* at the end */
	source_close(&src);
}

/* The reason is written on every error, and the buffer is emptied on success. */
static void test_errors_say_why(void **state)
{
	struct ctx *c = *state;
	struct image_source src;
	char err[256], missing[128];

	snprintf(missing, sizeof(missing), "%s/missing.raw", c->dir);
	memset(err, 'X', sizeof(err));
	assert_int_equal(source_check(missing, err, sizeof(err)), -ENOENT);
	assert_string_equal(err, "cannot open: No such file or directory");
	memset(err, 'X', sizeof(err));
	assert_int_equal(source_open(c->dir, c->dir, &src, err, sizeof(err)), -EISDIR);
	assert_string_equal(err, "not a regular file or block device");
	memset(err, 'X', sizeof(err));
	assert_int_equal(source_check(c->file, err, sizeof(err)), 0);
	assert_string_equal(err, "");
	memset(err, 'X', sizeof(err));
	assert_int_equal(source_open(c->file, c->dir, &src, err, sizeof(err)), 0);
	assert_string_equal(err, "");
	source_close(&src);
}

/*
 * A FIFO as the input is refused at once: open() of a FIFO with no writer used to wait
 * forever, in a call that publish's stop signals restart. Run in a child, which is killed
 * if it has not answered within 5 s (the old behaviour).
 */
static void test_fifo_input_is_refused_without_waiting(void **state)
{
	struct ctx *c = *state;
	char fifo[128];
	int status = -1;
	pid_t pid;

	snprintf(fifo, sizeof(fifo), "%s/in.fifo", c->dir);
	assert_int_equal(mkfifo(fifo, 0600), 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		struct image_source src;
		char err[256];
		int a = source_check(fifo, err, sizeof(err));
		int b = source_open(fifo, c->dir, &src, err, sizeof(err));
		bool ok = a == -EINVAL && b == -EINVAL &&
			  !strcmp(err, "not a regular file or block device");

		_exit(ok ? 0 : 1);
	}
	status = pubfx_wait_child(pid, 5000);
	if (status == -1)
		fail_msg("source_check/source_open of a FIFO still waiting after 5 s");
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
}

/*
 * A qcow2 whose tail is a hole, that gains data past its measured size while it is copied
 * into the snapshot: that data is not copied (the hole's end was clamped to the size, the
 * data's start was not, and their difference became a copy of ~2^64 bytes: up to the end of
 * whatever the file held). The snapshot is the measured qcow2, which converts as it should.
 */
static void test_qcow2_growing_past_its_size_is_not_copied(void **state)
{
	struct ctx *c = *state;
	struct image_source src = {.fd = -1};
	char err[256];

	sh("cd '%s' && qemu-img convert -q -f raw -O qcow2 in.raw in.qcow2 && "
	   "truncate -s 512K in.qcow2",
	   c->dir); /* data, then a hole up to 512 KiB */
	snprintf(c->file, sizeof(c->file), "%s/in.qcow2", c->dir);
	grow_path = c->file;
	grow_at = 1024 * KIB; /* a hole from 512 KiB to 1 MiB, then 16 MiB of data */
	grow_len = 16 * 1024 * KIB;
	copied_end = 0;
	assert_int_equal(source_open(c->file, c->dir, &src, err, sizeof(err)), 0);
	assert_null(grow_path); /* the file did grow, at the snapshot */
	assert_true(copied_end > 0);
	if (copied_end > 512 * KIB)
		fail_msg("copied up to %llu, past the 524288 bytes measured",
			 (unsigned long long)copied_end);
	assert_true(src.qcow2);
	assert_reads_as(&src, 0x5a, 64 * KIB);
	source_close(&src);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_input_that_shrinks_ends_early, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_errors_say_why, setup, teardown),
		cmocka_unit_test_setup_teardown(test_fifo_input_is_refused_without_waiting, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_qcow2_growing_past_its_size_is_not_copied,
						setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_raw_replaced_by_a_qcow2_after_the_check_is_refused, setup, teardown),
		cmocka_unit_test_setup_teardown(test_qcow2_replaced_while_qemu_img_runs_is_not_read,
						setup, teardown),
	};

	return cmocka_run_group_tests_name("source", tests, NULL, NULL);
}
