/*
 * test_publish_sweep.c - publish's sweep of tmp/ (invariants 7 and 8 of images/publish.c)
 * where locking is not what a local filesystem gives: flock is wrapped (tests/unit/images.mk
 * links this test with -Wl,--wrap=flock) to answer as NFSv4 does (an exclusive lock of a
 * file open read-only is EBADF) or to fail outright (ENOLCK), and a FIFO is left under a
 * run lock's name. Every file of a dead run must still go, at once or by the age rule; a
 * live run's files must stay; nothing may make publish wait.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "images/publish.h"
#include "tests/unit/images/publish_fixture.h"

#define KIB  1024
#define DEAD "0123456789abcdef" /* the run whose files are left in tmp/ */
#define LIVE "fedcba9876543210" /* a run whose lock the test holds */

/* ---- flock, as another filesystem answers it ---- */

enum flock_mode { FLOCK_LOCAL, FLOCK_NFS4, FLOCK_ENOLCK };
static enum flock_mode flock_mode;

int __real_flock(int fd, int op);

/* The name fd was opened under, or "" */
int __wrap_flock(int fd, int op)
{
	char name[PATH_MAX];
	int acc = fcntl(fd, F_GETFL) & O_ACCMODE;

	/* NFSv4 emulates flock with byte-range locks: a write lock needs a file open for
	 * writing (flock(2), NOTES). */
	if (flock_mode == FLOCK_NFS4 && (op & LOCK_EX) && acc == O_RDONLY) {
		errno = EBADF;
		return -1;
	}
	fd_name(fd, name, sizeof(name));
	if (flock_mode == FLOCK_ENOLCK && strstr(name, "/run." DEAD ".lock")) {
		errno = ENOLCK;
		return -1;
	}
	return __real_flock(fd, op);
}

/* ---- fixture ---- */

struct ctx {
	char dir[64];
	char src[96];
	char repo[96];
	char tmp[112];
	struct publish_opts o;
	struct publish_result res;
	char err[512];
};

static int setup(void **state)
{
	struct ctx *c = calloc(1, sizeof(*c));

	if (!c)
		return -1;
	snprintf(c->dir, sizeof(c->dir), "/tmp/rd-sweep-XXXXXX");
	if (pubfx_input(c->dir, c->src, sizeof(c->src), c->repo, sizeof(c->repo), 128 * KIB))
		return -1;
	snprintf(c->tmp, sizeof(c->tmp), "%s/tmp", c->repo);
	if (mkdir(c->repo, 0755) < 0 || mkdir(c->tmp, 0755) < 0)
		return -1;
	c->o = (struct publish_opts){
		.src = c->src, .repo_dir = c->repo, .name = "x", .chunk_size = 64 * KIB, .workers = 1};
	flock_mode = FLOCK_LOCAL;
	*state = c;
	return 0;
}

static int teardown(void **state)
{
	struct ctx *c = *state;
	char cmd[128];

	flock_mode = FLOCK_LOCAL;
	snprintf(cmd, sizeof(cmd), "rm -rf '%s'", c->dir);
	assert_int_equal(system(cmd), 0);
	free(c);
	return 0;
}

/* Creates tmp/<name> (a few bytes), days_old days old. */
static void tmp_file(const struct ctx *c, const char *name, int days_old)
{
	char path[PATH_MAX];
	struct timespec t[2];
	int fd;

	snprintf(path, sizeof(path), "%s/%s", c->tmp, name);
	fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "left", 4), 4);
	clock_gettime(CLOCK_REALTIME, &t[0]);
	t[0].tv_sec -= (time_t)days_old * 86400;
	t[1] = t[0];
	assert_int_equal(futimens(fd, t), 0);
	close(fd);
}

static bool tmp_has(const struct ctx *c, const char *name)
{
	char path[PATH_MAX];
	struct stat st;

	snprintf(path, sizeof(path), "%s/%s", c->tmp, name);
	return lstat(path, &st) == 0;
}

static void publish_ok(struct ctx *c)
{
	int ret = publish_image(&c->o, &c->res, c->err, sizeof(c->err));

	if (ret)
		fail_msg("publish: %s", c->err);
}

/* ---- tests ---- */

/*
 * On NFSv4 the sweeper's lock of a dead run's lock file, opened read-only, was EBADF, read
 * as "alive": the dead run's files stayed, and (alive) even the age rule skipped them.
 */
static void test_dead_run_is_swept_where_read_only_files_take_no_write_lock(void **state)
{
	struct ctx *c = *state;
	char lockpath[PATH_MAX];
	int live;

	tmp_file(c, "run." DEAD ".lock", 0);
	tmp_file(c, "c." DEAD ".0", 0);
	tmp_file(c, "f." DEAD, 5);
	/* a live run (its lock held, read-write as publish holds it) keeps even old files */
	tmp_file(c, "run." LIVE ".lock", 0);
	tmp_file(c, "c." LIVE ".0", 5);
	snprintf(lockpath, sizeof(lockpath), "%s/run." LIVE ".lock", c->tmp);
	live = open(lockpath, O_RDWR | O_CLOEXEC);
	assert_true(live >= 0);
	assert_int_equal(flock(live, LOCK_EX | LOCK_NB), 0);
	flock_mode = FLOCK_NFS4;
	publish_ok(c);
	assert_false(tmp_has(c, "c." DEAD ".0"));
	assert_false(tmp_has(c, "f." DEAD));
	assert_false(tmp_has(c, "run." DEAD ".lock"));
	assert_true(tmp_has(c, "c." LIVE ".0"));
	assert_true(tmp_has(c, "run." LIVE ".lock"));
	close(live);
}

/*
 * A lock file that cannot be locked at all (ENOLCK: no lock manager) says nothing about its
 * run: the age rule decides, as for files of no run. Three days old goes, younger stays.
 */
static void test_run_that_cannot_be_judged_is_swept_by_age(void **state)
{
	struct ctx *c = *state;

	tmp_file(c, "run." DEAD ".lock", 4);
	tmp_file(c, "c." DEAD ".0", 4);
	tmp_file(c, "c." DEAD ".1", 0);
	flock_mode = FLOCK_ENOLCK;
	publish_ok(c);
	assert_false(tmp_has(c, "c." DEAD ".0"));
	assert_false(tmp_has(c, "run." DEAD ".lock"));
	assert_true(tmp_has(c, "c." DEAD ".1"));
}

/*
 * A FIFO named like a run's lock made every publish wait forever in open(). Published in a
 * child, killed if it has not finished within 30 s (the old behaviour); the FIFO, no
 * publish's lock, is removed.
 */
static void test_fifo_named_like_a_run_lock_does_not_stop_publish(void **state)
{
	struct ctx *c = *state;
	char fifo[PATH_MAX];
	int status = -1;
	pid_t pid;

	snprintf(fifo, sizeof(fifo), "%s/run." DEAD ".lock", c->tmp);
	assert_int_equal(mkfifo(fifo, 0644), 0);
	tmp_file(c, "c." DEAD ".0", 0);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(publish_image(&c->o, &c->res, c->err, sizeof(c->err)) ? 1 : 0);
	status = pubfx_wait_child(pid, 30000);
	if (status == -1)
		fail_msg("publish still waiting after 30 s on a FIFO in tmp/");
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	assert_false(tmp_has(c, "run." DEAD ".lock"));
	assert_true(tmp_has(c, "c." DEAD ".0")); /* no lock, young: the age rule keeps it */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(
			test_dead_run_is_swept_where_read_only_files_take_no_write_lock, setup,
			teardown),
		cmocka_unit_test_setup_teardown(test_run_that_cannot_be_judged_is_swept_by_age,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_fifo_named_like_a_run_lock_does_not_stop_publish,
						setup, teardown),
	};

	return cmocka_run_group_tests_name("publish_sweep", tests, NULL, NULL);
}
