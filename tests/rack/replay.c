/*
 * rdreplay - replays a boot trace through libiscsi's asynchronous API.
 *
 * A trace (written by the boot-trace recorder, or tests/rack/gentrace.py) lists the
 * READs a guest issued while booting, sorted by start time:
 *
 *     # rackdisk-trace 1
 *     # image <image-id> size <bytes>
 *     <seq> <start_us> <end_us> <offset_bytes> <length_bytes>
 *
 * Replay rule: read i is issued once every read j < i whose end_j <= start_i has
 * completed. That keeps the guest's order and its concurrency (reads that overlapped in
 * the guest overlap here) while dropping its think time, so the replay measures the
 * storage, not the guest's CPU. Reads are issued in trace order, so the reads that may
 * still block read i are among the ones in flight: checking those is enough.
 *
 * Each read lands directly in one of a pool of reusable buffers (libiscsi's iovec reads,
 * as QEMU's iscsi driver does), so the reader costs the socket copy alone: no per-PDU
 * reassembly and no fresh pages to fault in per read.
 *
 * With --verify RAW every read's bytes are compared with the raw image (bytes past its
 * end must be zero); the buffer is poisoned before each verified read, so a short
 * transfer cannot pass on what an earlier read left there. Prints one JSON object on
 * stdout; exit 0 when every read succeeded and matched, 1 when a read failed or
 * mismatched, 2 on a usage, trace or setup error.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#include "common/hash.h"
#include "common/util.h"

#define TRACE_MAGIC "# rackdisk-trace"
#define LINE_MAX_LEN 512

struct replay;

struct trace_read {
	uint64_t seq;
	uint64_t start_us;
	uint64_t end_us;
	uint64_t off;
	uint64_t len;
	unsigned idx;
	unsigned slot; /* buffer slot while in flight */
	bool done;
	struct replay *rp; /* set when issued: the callback's way back */
};

/* A read's destination; slots are reused, and the iovec outlives the task. */
struct slot {
	unsigned char *buf;
	struct scsi_iovec iov;
};

struct trace {
	struct trace_read *r;
	size_t n;
	uint64_t image_size; /* from "# image ... size N", 0 if absent */
};

struct replay {
	struct iscsi_context *iscsi;
	int lun;
	uint32_t block_size;
	struct trace *t;
	const unsigned char *raw; /* mapped image for --verify, or NULL */
	uint64_t raw_size;
	unsigned *inflight; /* indices of issued, uncompleted reads */
	struct slot *slots; /* max_inflight of them; trace_peak()'s worth have buffers */
	unsigned *free_slots; /* stack of unused slot numbers */
	unsigned nfree;
	uint64_t max_len; /* the longest read in the trace: every buffer's size */
	unsigned nbuf;    /* buffers allocated */
	unsigned ninflight;
	unsigned max_inflight;
	unsigned peak_inflight;
	size_t completed;
	uint64_t bytes;
	uint64_t mismatches;
	uint64_t errors;
};

/* ---- trace parsing ---------------------------------------------------------------- */

static int parse_u64(const char *s, uint64_t *out)
{
	char *end;

	if (*s < '0' || *s > '9')
		return -EINVAL;
	errno = 0;
	*out = strtoull(s, &end, 10);
	if (errno || *end)
		return -EINVAL;
	return 0;
}

/* A comment line; only the magic and the image line mean anything. */
static int parse_comment(const char *path, unsigned lineno, char *line, struct trace *t)
{
	unsigned version;
	char id[160];
	uint64_t size;

	if (lineno == 1) {
		if (sscanf(line, TRACE_MAGIC " %u", &version) != 1) {
			fprintf(stderr, "%s:1: not a trace (first line must be '%s 1')\n", path,
				TRACE_MAGIC);
			return -EINVAL;
		}
		if (version != 1) {
			fprintf(stderr, "%s:1: trace format %u, this replayer reads 1\n", path,
				version);
			return -EINVAL;
		}
		return 0;
	}
	if (sscanf(line, "# image %159s size %" SCNu64, id, &size) == 2)
		t->image_size = size;
	return 0;
}

static int parse_read(const char *path, unsigned lineno, char *line, struct trace_read *r)
{
	uint64_t v[5];
	char *save = NULL, *tok;
	int n = 0;

	for (tok = strtok_r(line, " \t\r\n", &save); tok; tok = strtok_r(NULL, " \t\r\n", &save)) {
		if (n == 5 || parse_u64(tok, &v[n]) < 0) {
			fprintf(stderr, "%s:%u: expected '<seq> <start_us> <end_us> <offset> "
				"<length>' (five unsigned integers)\n", path, lineno);
			return -EINVAL;
		}
		n++;
	}
	if (n != 5) {
		fprintf(stderr, "%s:%u: expected five fields, found %d\n", path, lineno, n);
		return -EINVAL;
	}
	if (v[2] < v[1] || v[4] == 0 || v[4] > UINT32_MAX || v[3] + v[4] < v[3]) {
		fprintf(stderr, "%s:%u: end before start, empty or oversized read\n", path,
			lineno);
		return -EINVAL;
	}
	*r = (struct trace_read){.seq = v[0], .start_us = v[1], .end_us = v[2], .off = v[3],
				 .len = v[4]};
	return 0;
}

static int trace_load(const char *path, struct trace *t)
{
	char line[LINE_MAX_LEN];
	size_t cap = 0;
	unsigned lineno = 0;
	FILE *f;
	int ret = 0;

	f = fopen(path, "r");
	if (!f) {
		ret = -errno;
		fprintf(stderr, "%s: %s\n", path, strerror(errno));
		return ret;
	}
	while (fgets(line, sizeof(line), f)) {
		char *p = line;

		lineno++;
		if (!strchr(line, '\n') && !feof(f)) {
			fprintf(stderr, "%s:%u: line too long\n", path, lineno);
			ret = -EINVAL;
			goto out;
		}
		while (*p == ' ' || *p == '\t')
			p++;
		if (lineno == 1 || *p == '#') {
			ret = parse_comment(path, lineno, p, t);
			if (ret < 0)
				goto out;
			continue;
		}
		if (*p == '\n' || *p == '\r' || !*p)
			continue;
		if (t->n == cap) {
			size_t ncap = cap ? cap * 2 : 1024;
			struct trace_read *nr = realloc(t->r, ncap * sizeof(*nr));

			if (!nr) {
				ret = -ENOMEM;
				goto out;
			}
			t->r = nr;
			cap = ncap;
		}
		ret = parse_read(path, lineno, p, &t->r[t->n]);
		if (ret < 0)
			goto out;
		if (t->n && t->r[t->n].start_us < t->r[t->n - 1].start_us) {
			fprintf(stderr, "%s:%u: reads must be sorted by start time\n", path, lineno);
			ret = -EINVAL;
			goto out;
		}
		t->r[t->n].idx = t->n;
		t->n++;
	}
	if (ferror(f)) {
		ret = -EIO;
		fprintf(stderr, "%s: read error\n", path);
	} else if (lineno == 0) {
		ret = -EINVAL;
		fprintf(stderr, "%s: empty file, not a trace\n", path);
	}
out:
	fclose(f);
	return ret;
}

/* ---- replay ----------------------------------------------------------------------- */

static void verify(struct replay *rp, const struct trace_read *r, const unsigned char *data)
{
	uint64_t in = 0;

	if (r->off < rp->raw_size)
		in = MIN(r->len, rp->raw_size - r->off);
	if (in && memcmp(data, rp->raw + r->off, in) != 0)
		goto bad;
	if (in < r->len && !buf_is_zero(data + in, r->len - in))
		goto bad;
	return;
bad:
	rp->mismatches++;
	if (rp->mismatches <= 10)
		fprintf(stderr, "rdreplay: read %" PRIu64 " (offset %" PRIu64 ", %" PRIu64
			" bytes) differs from the image\n", r->seq, r->off, r->len);
}

static void inflight_remove(struct replay *rp, unsigned idx)
{
	for (unsigned i = 0; i < rp->ninflight; i++)
		if (rp->inflight[i] == idx) {
			rp->inflight[i] = rp->inflight[--rp->ninflight];
			return;
		}
}

static void read_done(struct iscsi_context *iscsi, int status, void *command_data, void *priv)
{
	struct scsi_task *task = command_data;
	struct trace_read *r = priv;
	struct replay *rp = r->rp;

	r->done = true;
	rp->completed++;
	inflight_remove(rp, r->idx);
	if (status != SCSI_STATUS_GOOD || !task ||
	    (task->residual_status != SCSI_RESIDUAL_NO_RESIDUAL && task->residual)) {
		rp->errors++;
		if (rp->errors <= 10)
			fprintf(stderr, "rdreplay: read %" PRIu64 " (offset %" PRIu64 ", %" PRIu64
				" bytes) failed: status %d, residual %zu: %s\n", r->seq, r->off,
				r->len, status, task ? (size_t)task->residual : 0,
				iscsi_get_error(iscsi));
	} else {
		rp->bytes += r->len;
		if (rp->raw)
			verify(rp, r, rp->slots[r->slot].buf);
	}
	rp->free_slots[rp->nfree++] = r->slot;
	if (task)
		scsi_free_scsi_task(task);
}

/* The replay rule, checked against the reads still in flight (see the top). */
static bool ready(const struct replay *rp, const struct trace_read *r)
{
	if (rp->ninflight >= rp->max_inflight)
		return false;
	for (unsigned i = 0; i < rp->ninflight; i++)
		if (rp->t->r[rp->inflight[i]].end_us <= r->start_us)
			return false;
	return true;
}

static int slot_alloc(struct replay *rp, struct slot *sl)
{
	sl->buf = malloc(rp->max_len);
	if (!sl->buf) {
		fprintf(stderr, "rdreplay: out of memory for a %" PRIu64 "-byte buffer\n",
			rp->max_len);
		return -ENOMEM;
	}
	memset(sl->buf, 0, rp->max_len); /* faulted in now: first touches cost time */
	rp->nbuf++;
	return 0;
}

/*
 * The most reads the replay rule can have in flight at once, at most cap: read i may
 * overlap every earlier read that ends after it starts. A min-heap of those reads' ends
 * (it never holds more than cap: the scan stops when the peak reaches cap).
 */
static unsigned trace_peak(const struct trace *t, unsigned cap)
{
	uint64_t *heap = malloc(((size_t)cap + 1) * sizeof(*heap));
	unsigned n = 0, peak = 0;

	if (!heap)
		return cap;
	for (size_t i = 0; i < t->n && peak < cap; i++) {
		const struct trace_read *r = &t->r[i];
		unsigned k, c;

		while (n && heap[0] <= r->start_us) { /* pop ended reads */
			uint64_t last = heap[--n];

			for (k = 0; (c = 2 * k + 1) < n; k = c) {
				if (c + 1 < n && heap[c + 1] < heap[c])
					c++;
				if (heap[c] >= last)
					break;
				heap[k] = heap[c];
			}
			heap[k] = last;
		}
		for (k = n++; k && heap[(k - 1) / 2] > r->end_us; k = (k - 1) / 2)
			heap[k] = heap[(k - 1) / 2];
		heap[k] = r->end_us;
		peak = MAX(peak, n);
	}
	free(heap);
	return peak;
}

static int issue(struct replay *rp, struct trace_read *r)
{
	struct scsi_task *task;
	struct slot *sl;

	r->rp = rp;
	r->slot = rp->free_slots[--rp->nfree];
	sl = &rp->slots[r->slot];
	if (!sl->buf && slot_alloc(rp, sl) < 0)
		return -ENOMEM;
	if (rp->raw)
		memset(sl->buf, 0xa5, r->len);
	sl->iov = (struct scsi_iovec){.iov_base = sl->buf, .iov_len = r->len};
	task = iscsi_read16_iov_task(rp->iscsi, rp->lun, r->off / rp->block_size,
				     (uint32_t)r->len, (int)rp->block_size, 0, 0, 0, 0, 0,
				     read_done, r, &sl->iov, 1);
	if (!task) {
		fprintf(stderr, "rdreplay: cannot queue read %" PRIu64 ": %s\n", r->seq,
			iscsi_get_error(rp->iscsi));
		return -EIO;
	}
	rp->inflight[rp->ninflight++] = r->idx;
	if (rp->ninflight > rp->peak_inflight)
		rp->peak_inflight = rp->ninflight;
	return 0;
}

static int run(struct replay *rp, uint64_t deadline_ns)
{
	size_t next = 0;

	while (rp->completed < rp->t->n) {
		struct pollfd pfd;
		int ret;

		while (next < rp->t->n && ready(rp, &rp->t->r[next])) {
			ret = issue(rp, &rp->t->r[next]);
			if (ret < 0)
				return ret;
			next++;
		}
		if (now_ns() > deadline_ns) {
			fprintf(stderr, "rdreplay: timed out with %zu of %zu reads done\n",
				rp->completed, rp->t->n);
			return -ETIMEDOUT;
		}
		pfd.fd = iscsi_get_fd(rp->iscsi);
		pfd.events = (short)iscsi_which_events(rp->iscsi);
		ret = poll(&pfd, 1, pfd.events ? 500 : 100);
		if (ret < 0 && errno != EINTR)
			return -errno;
		if (iscsi_service(rp->iscsi, ret > 0 ? pfd.revents : 0) < 0) {
			fprintf(stderr, "rdreplay: iSCSI session failed: %s\n",
				iscsi_get_error(rp->iscsi));
			return -EIO;
		}
	}
	return 0;
}

/* ---- setup ------------------------------------------------------------------------ */

static int connect_lun(struct replay *rp, const char *url_str, const char *initiator,
		       uint64_t *lun_bytes)
{
	struct iscsi_url *url = NULL;
	struct scsi_task *task = NULL;
	struct scsi_readcapacity16 *rc;
	int ret = -EIO;

	rp->iscsi = iscsi_create_context(initiator);
	if (!rp->iscsi) {
		fprintf(stderr, "rdreplay: cannot create an iSCSI context\n");
		return -ENOMEM;
	}
	url = iscsi_parse_full_url(rp->iscsi, url_str);
	if (!url) {
		fprintf(stderr, "rdreplay: bad URL %s: %s\n", url_str, iscsi_get_error(rp->iscsi));
		ret = -EINVAL;
		goto out;
	}
	iscsi_set_targetname(rp->iscsi, url->target);
	iscsi_set_session_type(rp->iscsi, ISCSI_SESSION_NORMAL);
	iscsi_set_header_digest(rp->iscsi, ISCSI_HEADER_DIGEST_NONE_CRC32C);
	if (iscsi_full_connect_sync(rp->iscsi, url->portal, url->lun) != 0) {
		fprintf(stderr, "rdreplay: login to %s failed: %s\n", url_str,
			iscsi_get_error(rp->iscsi));
		goto out;
	}
	rp->lun = url->lun;
	task = iscsi_readcapacity16_sync(rp->iscsi, rp->lun);
	if (!task || task->status != SCSI_STATUS_GOOD) {
		fprintf(stderr, "rdreplay: READ CAPACITY(16) failed: %s\n",
			iscsi_get_error(rp->iscsi));
		goto out;
	}
	rc = scsi_datain_unmarshall(task);
	if (!rc || !rc->block_length) {
		fprintf(stderr, "rdreplay: bad READ CAPACITY(16) data\n");
		goto out;
	}
	rp->block_size = rc->block_length;
	*lun_bytes = (rc->returned_lba + 1) * rc->block_length;
	ret = 0;
out:
	if (task)
		scsi_free_scsi_task(task);
	if (url)
		iscsi_destroy_url(url);
	return ret;
}

static int check_reads(const struct trace *t, uint32_t block_size, uint64_t lun_bytes)
{
	for (size_t i = 0; i < t->n; i++) {
		const struct trace_read *r = &t->r[i];

		if (r->off % block_size || r->len % block_size) {
			fprintf(stderr, "rdreplay: read %" PRIu64 " (offset %" PRIu64 ", %" PRIu64
				" bytes) is not aligned to the LUN's %u-byte blocks\n", r->seq,
				r->off, r->len, block_size);
			return -EINVAL;
		}
		if (r->off + r->len > lun_bytes) {
			fprintf(stderr, "rdreplay: read %" PRIu64 " ends past the LUN (%" PRIu64
				" bytes)\n", r->seq, lun_bytes);
			return -EINVAL;
		}
	}
	return 0;
}

static int map_raw(const char *path, const struct trace *t, const unsigned char **map,
		   uint64_t *size)
{
	struct stat st;
	int fd, ret = 0;

	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0 || fstat(fd, &st) < 0) {
		ret = -errno;
		fprintf(stderr, "rdreplay: %s: %s\n", path, strerror(errno));
		goto out;
	}
	if (t->image_size && (uint64_t)st.st_size != t->image_size) {
		fprintf(stderr, "rdreplay: %s is %lld bytes, the trace's image %" PRIu64 "\n",
			path, (long long)st.st_size, t->image_size);
		ret = -EINVAL;
		goto out;
	}
	*size = (uint64_t)st.st_size;
	*map = NULL;
	if (st.st_size) {
		void *m = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_PRIVATE, fd, 0);

		if (m == MAP_FAILED) {
			ret = -errno;
			fprintf(stderr, "rdreplay: mmap %s: %s\n", path, strerror(errno));
			goto out;
		}
		*map = m;
	}
out:
	if (fd >= 0)
		close(fd);
	return ret;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: rdreplay [--verify RAW] [--timeout SEC] [--max-inflight N]\n"
		   "                [--initiator IQN] TRACE iscsi://HOST[:PORT]/IQN/LUN\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"verify", required_argument, NULL, 'v'},
		{"timeout", required_argument, NULL, 't'},
		{"max-inflight", required_argument, NULL, 'm'},
		{"initiator", required_argument, NULL, 'i'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *raw_path = NULL, *initiator = "iqn.2026-11.io.rackdisk:rdreplay";
	struct trace t = {0};
	struct replay rp = {.max_inflight = 256, .t = &t};
	uint64_t timeout_s = 300, lun_bytes = 0, t0 = 0, t1, t_connect;
	int c, ret, status = 2;

	while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		uint64_t v;

		switch (c) {
		case 'v':
			raw_path = optarg;
			break;
		case 't':
			if (parse_u64(optarg, &timeout_s) < 0 || !timeout_s) {
				fprintf(stderr, "rdreplay: --timeout takes whole seconds > 0\n");
				return 2;
			}
			break;
		case 'm':
			if (parse_u64(optarg, &v) < 0 || !v || v > 65536) {
				fprintf(stderr, "rdreplay: --max-inflight takes 1..65536\n");
				return 2;
			}
			rp.max_inflight = (unsigned)v;
			break;
		case 'i':
			initiator = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (argc - optind != 2) {
		usage(stderr);
		return 2;
	}
	if (trace_load(argv[optind], &t) < 0)
		goto out;
	if (raw_path && map_raw(raw_path, &t, &rp.raw, &rp.raw_size) < 0)
		goto out;
	rp.inflight = calloc(rp.max_inflight, sizeof(*rp.inflight));
	rp.slots = calloc(rp.max_inflight, sizeof(*rp.slots));
	rp.free_slots = calloc(rp.max_inflight, sizeof(*rp.free_slots));
	if (!rp.inflight || !rp.slots || !rp.free_slots)
		goto out;
	for (unsigned i = 0; i < rp.max_inflight; i++)
		rp.free_slots[rp.nfree++] = rp.max_inflight - 1 - i;
	for (size_t i = 0; i < t.n; i++)
		rp.max_len = MAX(rp.max_len, t.r[i].len);
	/* Every buffer the replay can need, faulted in before the clock starts. */
	for (unsigned i = 0, peak = trace_peak(&t, rp.max_inflight); i < peak; i++)
		if (slot_alloc(&rp, &rp.slots[rp.free_slots[rp.nfree - 1 - i]]) < 0)
			goto out;
	t_connect = now_ns();
	if (connect_lun(&rp, argv[optind + 1], initiator, &lun_bytes) < 0)
		goto out;
	if (check_reads(&t, rp.block_size, lun_bytes) < 0)
		goto out;
	t0 = now_ns();
	ret = run(&rp, t0 + timeout_s * 1000000000ull);
	t1 = now_ns();
	status = ret < 0 || rp.errors || rp.mismatches ? 1 : 0;
	printf("{\"trace_reads\": %zu, \"reads\": %zu, \"bytes\": %" PRIu64 ", "
	       "\"elapsed_s\": %.6f, \"connect_s\": %.6f, \"mismatches\": %" PRIu64 ", "
	       "\"errors\": %" PRIu64 ", \"peak_inflight\": %u, \"buffers\": %u, "
	       "\"verified\": %s, "
	       "\"completed\": %s}\n",
	       t.n, rp.completed, rp.bytes, (double)(t1 - t0) / 1e9,
	       (double)(t0 - t_connect) / 1e9, rp.mismatches, rp.errors, rp.peak_inflight,
	       rp.nbuf, rp.raw ? "true" : "false", ret < 0 ? "false" : "true");
out:
	if (rp.iscsi) {
		if (status == 0)
			iscsi_logout_sync(rp.iscsi);
		iscsi_destroy_context(rp.iscsi);
	}
	if (rp.raw)
		munmap((void *)rp.raw, rp.raw_size);
	if (rp.slots)
		for (unsigned i = 0; i < rp.max_inflight; i++)
			free(rp.slots[i].buf);
	free(rp.slots);
	free(rp.free_slots);
	free(rp.inflight);
	free(t.r);
	return status;
}
