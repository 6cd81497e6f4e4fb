/*
 * crash_disk.c - crash test of a disk (cache/disk.c, cache/overlay.c) and the chunk store.
 *
 * A child process opens a small disk and writes self-describing sector patterns to it,
 * with flushes, FUA writes, UNMAPs and reads (whose misses insert chunks into the store),
 * recording each operation in a side log before it starts and each durability
 * acknowledgement after it returns (the log is fdatasync'd at every acknowledgement).
 * The parent SIGKILLs the child at a random moment, reopens the store and the disk, and
 * checks every 512-byte sector:
 *   - a sector covered by an operation acknowledged durable holds that operation's result
 *     or the result of a later operation on it (overlay.c invariants 2, 3, 7; disk.c 3);
 *   - any other sector holds what it held before this round, or the result of an
 *     operation of this round on it: a pattern written there, zeros of an UNMAP, never
 *     bytes of another sector or of another round (overlay.c invariants 1, 8);
 *   - every chunk file in the store hashes to its name, and the store's fsck finds no
 *     problem other than an interrupted insert's temp file.
 * The disk must also open after every kill (a torn map update is never fatal: overlay.c
 * invariants 3, 4).
 *
 * Three kills in four land among the operations: the child reports (through a pipe) that
 * the store and the disk are open, and the kill follows 1 to 41 ms later, whatever the
 * open took. The fourth lands at a random moment of the open itself (before the time the
 * last open took), so a kill during the disk's recovery is covered too.
 *
 * Usage: crash_disk [-n KILLS] [-s SEED] [-t MAX_SECONDS]. Exits 0 when every check
 * passed for every kill, and the checks had something to check: at least 20 kills
 * (the loop is bounded by both KILLS and MAX_SECONDS), at least half of the kills among
 * the operations after a logged write or unmap, and at least one write or unmap
 * acknowledged durable in all.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "tests/unit/cache/disk_fixture.h"

#define CS (64u * 1024)
#define IMAGE_SIZE (16u * CS)          /* 1 MiB, every 4th chunk zero */
#define DISK_SIZE (2u * 1024 * 1024)   /* the second MiB is past the image */
#define NSECT (DISK_SIZE / 512)
#define MAGIC 0x4853415243445225ull   /* "%RDCRASH" */
#define MAX_OPS_PER_ROUND 20000

enum rec_type { REC_WRITE = 1, REC_UNMAP, REC_FUA_DONE, REC_FLUSH_DONE };

struct rec {
	uint32_t type;
	uint32_t fua;
	uint64_t seq;
	uint64_t off, len;
};

/* What a sector holds: its kind and, for a pattern, the writing operation's seq. */
enum kind { K_IMAGE, K_ZERO, K_PATTERN, K_CORRUPT };
struct content {
	enum kind kind;
	uint64_t seq;
};

static struct fixture fx;
static uint64_t total_ops, total_durable;
static size_t round_ops; /* writes/unmaps in the last round's log */
static char log_path[PATH_MAX];

static uint64_t rng_state;
static uint64_t rnd(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 7;
	rng_state ^= rng_state << 17;
	return rng_state;
}

static void fill_sector(uint8_t *s, uint64_t lba, uint64_t seq)
{
	uint64_t x = seq * 0x9e3779b97f4a7c15ull ^ lba * 0xbf58476d1ce4e5b9ull ^ 1;

	memcpy(s, &(uint64_t){ MAGIC }, 8);
	memcpy(s + 8, &lba, 8);
	memcpy(s + 16, &seq, 8);
	for (unsigned i = 24; i < 512; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(s + i, &x, 8);
	}
}

static struct content classify(const uint8_t *s, uint64_t lba)
{
	uint8_t want[512];
	uint64_t magic, l, seq;
	uint64_t pos = lba * 512;

	memcpy(&magic, s, 8);
	memcpy(&l, s + 8, 8);
	memcpy(&seq, s + 16, 8);
	if (magic == MAGIC && l == lba) {
		fill_sector(want, lba, seq);
		if (memcmp(want, s, 512) == 0)
			return (struct content){ K_PATTERN, seq };
		return (struct content){ K_CORRUPT, 0 };
	}
	if (buf_is_zero(s, 512))
		return (struct content){ K_ZERO, 0 };
	if (pos + 512 <= fx.m->size && memcmp(s, fx.image + pos, 512) == 0)
		return (struct content){ K_IMAGE, 0 };
	return (struct content){ K_CORRUPT, 0 };
}

static int miss_insert(void *arg, const struct chunk_hash *h, uint64_t idx, uint32_t len,
		       uint64_t deadline)
{
	(void)arg;
	(void)h;
	(void)len;
	(void)deadline;
	return fx_insert_chunk(&fx, idx);
}

static int open_disk(struct disk **d)
{
	struct disk_opts o = { .dir = fx.disk_dir, .image = fx.m, .store = fx.cs,
			       .miss = miss_insert, .io_timeout_ns = 10ull * 1000000000 };

	return disk_open(&o, d);
}

static void log_rec(int fd, const struct rec *r, bool sync)
{
	if (pwrite_full(fd, r, sizeof(*r), (uint64_t)lseek(fd, 0, SEEK_END)) < 0 ||
	    (sync && fdatasync(fd) < 0))
		_exit(3);
}

/* The child: opens the disk, writes a byte to ready_fd, then operations until killed
 * (bounded in count and time). */
static void child(uint64_t seq0, int ready_fd)
{
	static uint8_t buf[128 * 1024];
	struct disk *d;
	int lfd;
	uint64_t t_end = now_ns() + 5ull * 1000000000;

	if (fx_open_store(&fx) < 0 || open_disk(&d) < 0)
		_exit(2);
	lfd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (lfd < 0)
		_exit(2);
	if (write(ready_fd, "r", 1) != 1) /* the parent holds the read end until the kill */
		_exit(2);
	close(ready_fd);
	for (uint64_t seq = seq0; seq < seq0 + MAX_OPS_PER_ROUND && now_ns() < t_end; seq++) {
		unsigned r = (unsigned)(rnd() % 100);
		uint64_t nsect = r < 40 ? 1 + rnd() % 16 : 1 + rnd() % 256;
		uint64_t lba = rnd() % NSECT;
		struct rec rec = { .seq = seq };

		nsect = MIN(nsect, NSECT - lba);
		rec.off = lba * 512;
		rec.len = nsect * 512;
		if (r < 70) {
			rec.type = REC_WRITE;
			rec.fua = rnd() % 5 == 0;
			for (uint64_t i = 0; i < nsect; i++)
				fill_sector(buf + i * 512, lba + i, seq);
			log_rec(lfd, &rec, false); /* before the write can land */
			if (disk_write(d, buf, rec.len, rec.off, rec.fua ? DISK_FUA : 0) < 0)
				_exit(4);
		} else if (r < 80) {
			rec.type = REC_UNMAP;
			rec.fua = rnd() % 4 == 0;
			log_rec(lfd, &rec, false);
			if (disk_unmap(d, rec.off, rec.len, rec.fua ? DISK_FUA : 0) < 0)
				_exit(5);
		} else if (r < 90) {
			if (disk_read(d, buf, rec.len, rec.off) < 0)
				_exit(6);
			continue;
		} else {
			if (disk_flush(d) < 0)
				_exit(7);
			rec.type = REC_FLUSH_DONE; /* every op with a smaller seq is durable */
			log_rec(lfd, &rec, true);
			continue;
		}
		if (rec.fua) {
			rec.type = REC_FUA_DONE;
			log_rec(lfd, &rec, true);
		}
	}
	_exit(0);
}

static int check_chunk_files(void)
{
	char path[PATH_MAX + 300];
	int bad = 0;

	for (unsigned hh = 0; hh < 256; hh++) {
		DIR *dir;
		struct dirent *e;

		snprintf(path, sizeof(path), "%s/chunks/%02x", fx.store_dir, hh);
		dir = opendir(path);
		if (!dir)
			continue;
		while ((e = readdir(dir))) {
			struct chunk_hash h;
			char *data;
			size_t len;
			char full[PATH_MAX + 600];

			if (e->d_name[0] == '.' || hash_from_hex(e->d_name, strlen(e->d_name), &h))
				continue;
			snprintf(full, sizeof(full), "%s/%s", path, e->d_name);
			if (read_file(full, 64 << 20, &data, &len) < 0)
				continue;
			if (!hash_verify(data, len, &h)) {
				fprintf(stderr, "crash: chunk file %s is corrupt\n", full);
				bad++;
			}
			free(data);
		}
		closedir(dir);
	}
	return bad;
}

static void store_report(void *arg, const char *path, const char *problem)
{
	if (strstr(problem, "temporary"))
		return; /* an insert the kill interrupted: expected */
	fprintf(stderr, "crash: store fsck: %s: %s\n", path, problem);
	(*(int *)arg)++;
}

/* Checks the disk after a kill; updates before[] to what each sector now holds. */
static int verify(struct content *before, uint64_t *seq_next, int round)
{
	static uint8_t disk_bytes[DISK_SIZE];
	static int64_t dur[NSECT]; /* index into recs of the last durable op, -1 none */
	struct rec *recs = NULL;
	char *raw = NULL;
	size_t rawlen, nrec;
	uint64_t flush_upto = 0;
	struct disk *d = NULL;
	int bad = 0, store_bad = 0, rc;

	if (read_file(log_path, 1 << 30, &raw, &rawlen) < 0)
		rawlen = 0;
	nrec = rawlen / sizeof(struct rec);
	recs = (struct rec *)raw;
	for (size_t i = 0; i < nrec; i++) {
		if (recs[i].type == REC_FLUSH_DONE)
			flush_upto = MAX(flush_upto, recs[i].seq);
		*seq_next = MAX(*seq_next, recs[i].seq + 1);
	}
	for (uint64_t s = 0; s < NSECT; s++)
		dur[s] = -1;
	round_ops = 0;
	for (size_t i = 0; i < nrec; i++) {
		bool durable = recs[i].seq < flush_upto;

		if (recs[i].type != REC_WRITE && recs[i].type != REC_UNMAP)
			continue;
		for (size_t j = i + 1; !durable && j < nrec; j++)
			durable = recs[j].type == REC_FUA_DONE && recs[j].seq == recs[i].seq;
		total_ops++;
		round_ops++;
		total_durable += durable;
		if (durable)
			for (uint64_t s = recs[i].off / 512; s < (recs[i].off + recs[i].len) / 512; s++)
				dur[s] = (int64_t)i;
	}
	rc = chunkstore_fsck(fx.store_dir, true, store_report, &store_bad);
	if (rc < 0 || store_bad) {
		fprintf(stderr, "crash: round %d: chunk store fsck: %d, %d problems\n", round, rc,
			store_bad);
		bad++;
	}
	bad += check_chunk_files();
	if (fx_open_store(&fx) < 0 || (rc = open_disk(&d)) < 0) {
		fprintf(stderr, "crash: round %d: the disk does not open after a kill\n", round);
		bad++;
		goto out;
	}
	if (disk_read(d, disk_bytes, DISK_SIZE, 0) < 0) {
		fprintf(stderr, "crash: round %d: read failed\n", round);
		bad++;
		goto out;
	}
	for (uint64_t s = 0; s < NSECT; s++) {
		struct content c = classify(disk_bytes + s * 512, s);
		bool ok = dur[s] < 0 && c.kind == before[s].kind &&
			  (c.kind != K_PATTERN || c.seq == before[s].seq);

		for (size_t i = dur[s] < 0 ? 0 : (size_t)dur[s]; !ok && i < nrec; i++) {
			const struct rec *r = &recs[i];

			if ((r->type != REC_WRITE && r->type != REC_UNMAP) || s < r->off / 512 ||
			    s >= (r->off + r->len) / 512)
				continue;
			ok = r->type == REC_WRITE ? c.kind == K_PATTERN && c.seq == r->seq
						  : c.kind == K_ZERO;
		}
		if (!ok && bad < 10)
			fprintf(stderr,
				"crash: round %d: sector %llu holds kind %d seq %llu; before: kind"
				" %d seq %llu; last durable op: %lld\n",
				round, (unsigned long long)s, c.kind, (unsigned long long)c.seq,
				before[s].kind, (unsigned long long)before[s].seq,
				dur[s] < 0 ? -1LL : (long long)recs[dur[s]].seq);
		bad += !ok;
		before[s] = c;
	}
out:
	disk_close(d);
	chunkstore_close(fx.cs);
	fx.cs = NULL;
	free(raw);
	return bad;
}

int main(int argc, char **argv)
{
	static struct content before[NSECT];
	unsigned kills = 200, max_s = 120, seed = (unsigned)time(NULL);
	uint64_t seq_next = 1, t_end;
	int opt, failures = 0;
	unsigned done = 0, op_rounds = 0, op_rounds_logged = 0;
	uint64_t open_ns = 0; /* how long the last measured open took */

	while ((opt = getopt(argc, argv, "n:s:t:")) != -1) {
		if (opt == 'n')
			kills = (unsigned)atoi(optarg);
		else if (opt == 's')
			seed = (unsigned)atoi(optarg);
		else if (opt == 't')
			max_s = (unsigned)atoi(optarg);
		else
			return 2;
	}
	printf("crash: %u kills (at most %u s), seed %u\n", kills, max_s, seed);
	fflush(stdout);
	srand(seed);
	if (fx_setup(&fx, IMAGE_SIZE, CS, 4, false, DISK_SIZE, seed) < 0) {
		fprintf(stderr, "crash: setup failed\n");
		return 1;
	}
	/* Half the non-zero chunks start cached; the child's misses insert the rest. */
	for (uint64_t i = 0; i < fx.m->nchunks; i += 2)
		if (!manifest_chunk_is_zero(fx.m, i) && fx_insert_chunk(&fx, i) < 0)
			return 1;
	chunkstore_close(fx.cs);
	fx.cs = NULL;
	snprintf(log_path, sizeof(log_path), "%s/ops.log", fx.root);
	for (uint64_t s = 0; s < NSECT; s++)
		before[s] = s * 512 < IMAGE_SIZE ? classify(fx.image + s * 512, s)
						 : (struct content){ K_ZERO, 0 };
	t_end = now_ns() + (uint64_t)max_s * 1000000000;
	for (; done < kills && now_ns() < t_end && failures == 0; done++) {
		pid_t pid;
		int status = 0;

		int ready[2];
		/* The first round measures the open; then one in four kills during it. */
		bool in_open = open_ns > 0 && rnd() % 4 == 0;
		uint64_t t_fork;

		rng_state = (uint64_t)rand() << 32 | (uint64_t)rand() | 1;
		if (pipe2(ready, O_CLOEXEC) < 0)
			return 1;
		t_fork = now_ns();
		pid = fork();
		if (pid < 0)
			return 1;
		if (pid == 0) {
			close(ready[0]);
			child(seq_next, ready[1]);
		}
		close(ready[1]);
		if (in_open) {
			usleep((useconds_t)(rnd() % (open_ns / 1000 + 1)));
		} else {
			struct pollfd pfd = { .fd = ready[0], .events = POLLIN };
			char c;

			/* 0 (timeout) or EOF: the child died or hung before its disk was open. */
			if (poll(&pfd, 1, 30000) != 1 || read(ready[0], &c, 1) != 1) {
				kill(pid, SIGKILL);
				waitpid(pid, &status, 0);
				fprintf(stderr, "crash: round %u: the child did not open the disk "
					"(status %#x)\n", done, status);
				failures++;
				close(ready[0]);
				break;
			}
			open_ns = now_ns() - t_fork;
			usleep((useconds_t)(1000 + rnd() % 40000));
		}
		kill(pid, SIGKILL);
		close(ready[0]);
		if (waitpid(pid, &status, 0) != pid)
			return 1;
		if (WIFEXITED(status) && WEXITSTATUS(status) != 0) {
			fprintf(stderr, "crash: child failed with status %d\n", WEXITSTATUS(status));
			failures++;
			break;
		}
		failures += verify(before, &seq_next, (int)done);
		if (!in_open) {
			op_rounds++;
			op_rounds_logged += round_ops > 0;
		}
		seq_next += MAX_OPS_PER_ROUND; /* patterns of a round never repeat a seq */
	}
	printf("crash: %u kills (%u among the operations, %u of them after a logged "
	       "write/unmap; %u during the open), %llu writes/unmaps checked (%llu "
	       "acknowledged durable), %d failures\n", done, op_rounds, op_rounds_logged,
	       done - op_rounds, (unsigned long long)total_ops,
	       (unsigned long long)total_durable, failures);
	fflush(stdout);
	if (failures == 0)
		fx_teardown(&fx);
	else
		fprintf(stderr, "crash: state kept in %s (seed %u)\n", fx.root, seed);
	if (failures)
		return 1;
	/* A run whose checks had next to nothing to check proves nothing. */
	if (done < MIN(kills, 20u)) {
		fprintf(stderr, "crash: only %u kills\n", done);
		return 1;
	}
	if (op_rounds_logged * 2 < op_rounds) {
		fprintf(stderr, "crash: only %u of %u kills among the operations came after a "
			"logged write or unmap\n", op_rounds_logged, op_rounds);
		return 1;
	}
	if (total_durable == 0) {
		fprintf(stderr, "crash: no write or unmap was acknowledged durable\n");
		return 1;
	}
	return 0;
}
