/*
 * chunkstore_scan.c - walking a chunk store's directories: the index rebuild at open and
 * chunkstore_fsck().
 *
 * A store of a million chunks must open in seconds, so the walk reads each <hh> directory
 * with getdents64 in large batches (file names and types come with the entries) and works
 * on the 256 directories from several threads at once: on a cold cache the statx() that
 * gives each file's size waits on inode blocks, and parallel requests keep the SSD's queue
 * full. The only per-file system call is that statx (the size is needed for the capacity
 * accounting and the sanity check); re-hashing is optional (verify_on_open, fsck).
 */
#include "cache/chunkstore_int.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "cache/chunkstore.h"
#include "common/log.h"
#include "common/util.h"

#define DENTS_BUF	 (256 * 1024)
#define SCAN_THREADS_MAX 8

struct linux_dirent64 {
	uint64_t d_ino;
	int64_t d_off;
	unsigned short d_reclen;
	unsigned char d_type;
	char d_name[];
};

struct scan_shared {
	struct cs_scan *s;
	unsigned next_dir;    /* atomic: next <hh> to take */
	pthread_mutex_t lock; /* guards report calls and the merge into s */
	int err;
};

struct scan_local {
	struct cs_scan_rec *recs;
	size_t n, cap;
	uint64_t problems, removed;
};

int cs_verify_fd(int fd, uint32_t len, const struct chunk_hash *h)
{
	const size_t bsz = 256 * 1024;
	EVP_MD_CTX *md = EVP_MD_CTX_new();
	unsigned char *buf = malloc(bsz);
	unsigned char out[EVP_MAX_MD_SIZE];
	unsigned int olen = 0;
	uint64_t off = 0;
	int ret = -ENOMEM;

	if (!md || !buf || EVP_DigestInit_ex(md, EVP_sha256(), NULL) != 1)
		goto out;
	while (off < len) {
		size_t n = MIN(bsz, (size_t)(len - off));

		ret = pread_full(fd, buf, n, off);
		if (ret == -EIO) { /* shorter than it claims: torn */
			ret = 0;
			goto out;
		}
		if (ret)
			goto out;
		EVP_DigestUpdate(md, buf, n);
		off += n;
	}
	/* a file longer than len is wrong too */
	ret = pread(fd, buf, 1, off) > 0 ? 0 : 1;
	if (ret == 1) {
		EVP_DigestFinal_ex(md, out, &olen);
		ret = olen == HASH_LEN && !memcmp(out, h->b, HASH_LEN);
	}
out:
	EVP_MD_CTX_free(md);
	free(buf);
	return ret;
}

static void problem(struct scan_shared *sh, struct scan_local *l, int dfd, const char *hh,
		    const char *name, const char *what, bool is_dir)
{
	struct cs_scan *s = sh->s;
	char path[4096];

	snprintf(path, sizeof(path), "%s/chunks/%s/%s", s->dir, hh, name);
	l->problems++;
	if (s->repair && unlinkat(dfd, name, is_dir ? AT_REMOVEDIR : 0) == 0)
		l->removed++;
	pthread_mutex_lock(&sh->lock);
	if (s->report)
		s->report(s->report_arg, path, what);
	else
		log_warn("chunk store: %s: %s%s", path, what, s->repair ? " (removed)" : "");
	pthread_mutex_unlock(&sh->lock);
}

static bool name_ok(const char *name, const char *hh)
{
	if (strlen(name) != HASH_HEX_LEN || name[0] != hh[0] || name[1] != hh[1])
		return false;
	for (const char *p = name; *p; p++)
		if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
			return false;
	return true;
}

static int keep(struct scan_local *l, const char *name, uint32_t len)
{
	if (l->n == l->cap) {
		size_t ncap = l->cap ? l->cap * 2 : 1024;
		struct cs_scan_rec *nr = realloc(l->recs, ncap * sizeof(*nr));

		if (!nr)
			return -ENOMEM;
		l->recs = nr;
		l->cap = ncap;
	}
	hash_from_hex(name, HASH_HEX_LEN, &l->recs[l->n].h);
	l->recs[l->n].len = len;
	l->n++;
	return 0;
}

/* Checks one directory entry; returns 0 or a negative errno that stops the scan. */
static int scan_entry(struct scan_shared *sh, struct scan_local *l, int dfd, const char *hh,
		      const struct linux_dirent64 *d)
{
	const char *name = d->d_name;
	struct statx stx;
	int ret;

	if (!strcmp(name, ".") || !strcmp(name, ".."))
		return 0;
	if (d->d_type == DT_DIR) {
		problem(sh, l, dfd, hh, name, "unexpected directory", true);
		return 0;
	}
	if (!name_ok(name, hh)) {
		problem(sh, l, dfd, hh, name, "misnamed file", false);
		return 0;
	}
	if (statx(dfd, name, AT_SYMLINK_NOFOLLOW | AT_STATX_DONT_SYNC, STATX_TYPE | STATX_SIZE,
		  &stx) < 0)
		return errno == ENOENT ? 0 : -errno;
	if (!S_ISREG(stx.stx_mode)) {
		problem(sh, l, dfd, hh, name, "not a regular file", S_ISDIR(stx.stx_mode));
		return 0;
	}
	if (stx.stx_size == 0 || stx.stx_size > CHUNKSTORE_MAX_CHUNK) {
		problem(sh, l, dfd, hh, name, stx.stx_size ? "too large" : "empty (torn)", false);
		return 0;
	}
	if (sh->s->verify) {
		struct chunk_hash h;
		int fd = openat(dfd, name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);

		if (fd < 0) /* gone since statx: evicted by a running owner (read-only fsck) */
			return errno == ENOENT ? 0 : -errno;
		hash_from_hex(name, HASH_HEX_LEN, &h);
		ret = cs_verify_fd(fd, (uint32_t)stx.stx_size, &h);
		close(fd);
		if (ret < 0)
			return ret;
		if (!ret) {
			problem(sh, l, dfd, hh, name,
				"content does not match its hash (torn or corrupt)", false);
			return 0;
		}
	}
	return keep(l, name, (uint32_t)stx.stx_size);
}

static int scan_dir(struct scan_shared *sh, struct scan_local *l, unsigned idx, char *buf)
{
	char hh[3];
	int dfd, ret = 0;

	snprintf(hh, sizeof(hh), "%02x", idx);
	dfd = openat(sh->s->chunks_fd, hh, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dfd < 0)
		return errno == ENOENT ? 0 : -errno;
	for (;;) {
		long n = syscall(SYS_getdents64, dfd, buf, DENTS_BUF);

		if (n < 0) {
			ret = -errno;
			break;
		}
		if (n == 0)
			break;
		for (long pos = 0; pos < n && !ret;) {
			const struct linux_dirent64 *d = (const void *)(buf + pos);

			ret = scan_entry(sh, l, dfd, hh, d);
			pos += d->d_reclen;
		}
		if (ret)
			break;
	}
	close(dfd);
	return ret;
}

static void *scan_thread(void *arg)
{
	struct scan_shared *sh = arg;
	struct scan_local l = {0};
	char *buf = malloc(DENTS_BUF);
	int ret = buf ? 0 : -ENOMEM;

	while (!ret) {
		unsigned idx = __atomic_fetch_add(&sh->next_dir, 1, __ATOMIC_RELAXED);

		if (idx >= 256)
			break;
		ret = scan_dir(sh, &l, idx, buf);
	}
	free(buf);
	pthread_mutex_lock(&sh->lock);
	if (ret && !sh->err)
		sh->err = ret;
	if (!ret && l.n) {
		struct cs_scan *s = sh->s;
		struct cs_scan_rec *nr = realloc(s->recs, (s->nrecs + l.n) * sizeof(*nr));

		if (nr) {
			memcpy(nr + s->nrecs, l.recs, l.n * sizeof(*nr));
			s->recs = nr;
			s->nrecs += l.n;
		} else if (!sh->err) {
			sh->err = -ENOMEM;
		}
	}
	sh->s->problems += l.problems;
	sh->s->removed += l.removed;
	pthread_mutex_unlock(&sh->lock);
	free(l.recs);
	return NULL;
}

int cs_scan_chunks(struct cs_scan *s)
{
	struct scan_shared sh = {.s = s};
	pthread_t th[SCAN_THREADS_MAX];
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned nth = (unsigned)MIN(SCAN_THREADS_MAX, MAX(2, 2 * ncpu)), started = 0;

	s->recs = NULL;
	s->nrecs = 0;
	s->problems = s->removed = 0;
	pthread_mutex_init(&sh.lock, NULL);
	for (unsigned i = 0; i < nth; i++) {
		if (pthread_create(&th[i], NULL, scan_thread, &sh))
			break;
		started++;
	}
	if (!started) /* no threads to be had: do it here */
		scan_thread(&sh);
	for (unsigned i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	pthread_mutex_destroy(&sh.lock);
	if (sh.err) {
		free(s->recs);
		s->recs = NULL;
		s->nrecs = 0;
	}
	return sh.err;
}

int cs_clean_tmp(const char *dir, bool repair, cs_report_fn report, void *arg)
{
	char path[4096];
	DIR *d;
	struct dirent *de;
	int found = 0;

	snprintf(path, sizeof(path), "%s/tmp", dir);
	d = opendir(path);
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	while ((de = readdir(d))) {
		char p[4096 + 256];

		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		found++;
		snprintf(p, sizeof(p), "%s/%s", path, de->d_name);
		if (repair)
			unlinkat(dirfd(d), de->d_name, 0);
		if (report)
			report(arg, p, "temporary file left by an interrupted insert");
		else
			log_info("chunk store: removed %s, left by an interrupted insert", p);
	}
	closedir(d);
	return found;
}

int chunkstore_fsck(const char *dir, bool repair,
		    void (*report)(void *arg, const char *path, const char *problem), void *arg)
{
	char path[4096];
	struct cs_scan s = {
		.dir = dir, .verify = true, .repair = repair, .report = report, .report_arg = arg};
	int lockfd = -1, ret, ntmp = 0;
	bool owner_running = false;

	/* With an owner running, its temp files are live and repair would race with it. */
	snprintf(path, sizeof(path), "%s/lock", dir);
	lockfd = open(path, O_RDONLY | O_CLOEXEC);
	if (lockfd >= 0 && flock(lockfd, LOCK_EX | LOCK_NB) < 0)
		owner_running = true;
	if (owner_running && repair) {
		ret = -EBUSY;
		goto out;
	}
	snprintf(path, sizeof(path), "%s/chunks", dir);
	s.chunks_fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (s.chunks_fd < 0) {
		ret = -errno;
		goto out;
	}
	ret = cs_scan_chunks(&s);
	close(s.chunks_fd);
	free(s.recs);
	if (ret)
		goto out;
	if (!owner_running) {
		ntmp = cs_clean_tmp(dir, repair, report, arg);
		if (ntmp < 0) {
			ret = ntmp;
			goto out;
		}
	}
	ret = (int)MIN(s.problems + (uint64_t)ntmp, (uint64_t)INT32_MAX);
out:
	if (lockfd >= 0)
		close(lockfd);
	return ret;
}
