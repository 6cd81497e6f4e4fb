/*
 * rackdisk backing store: a LUN whose blocks are a rackdisk disk, an immutable image's
 * chunks (fetched through rackdiskd on a miss) under a copy-on-write overlay.
 *
 *   tgtadm --op new --mode logicalunit ... --bstype rackdisk --backing-store DISKDIR
 *
 * DISKDIR is a disk directory written by rackdiskd (target/fetch_proto.h). A sibling of
 * bs_rdwr.c and bs_rbd.c: the SCSI commands run on bs_thread worker threads, which may
 * block on a fetch up to the LUN's deadline (io_timeout_ms) without holding up tgtd's
 * event loop or other LUNs; completions go back to the event loop through bs_thread.
 *
 * Three things differ from the file-backed stores, all set up per LU in bs_init (each LU
 * carries its own copy of the device type template, so nothing global changes):
 *  - GET LBA STATUS: tgt answers it by looking for holes in lu->fd. A rackdisk disk has
 *    no such file: image ranges not yet fetched would look like holes, and an initiator
 *    (qemu-img convert) would skip them as zeros. This LU's SERVICE ACTION IN(16) table
 *    answers it from disk_lba_status() instead, and lu->fd is an O_PATH descriptor on
 *    which lseek fails, so that even tgt's own code would report "mapped", never a hole.
 *  - COMPARE AND WRITE: the worker does it with disk_compare_and_write(), atomic against
 *    every other writer (rdwr's read-compare-write is not). tgt 1.0.85's SBC table routes
 *    it to sbc_rw; should a tgt build leave it out, this LU's table routes it there.
 *  - UNMAP: tgt's sbc_unmap builds error sense even after handing the command to the
 *    worker; this LU's entry (rd_unmap_perform) does its checks and nothing after that.
 *
 * A fetch that misses its deadline ends the command with BUSY status, which initiators
 * (QEMU, Linux, ESXi) retry; a chunk that no source could serve ends it with MEDIUM ERROR
 * / UNRECOVERED READ ERROR.
 *
 * With lun.json's "trace" set, every READ is recorded (target/trace.h): its start when
 * tgtd submits it (bs_rackdisk_submit, on the event loop), its end when the worker has
 * the data. Off, that costs one branch on each of the two paths.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/stat.h>
#include <unistd.h>

#include <linux/fs.h>
#include <sys/epoll.h>

#include "list.h"
#include "util.h"
#include "tgtd.h"
#include "scsi.h"
#include "spc.h"
#include "bs_thread.h"
#include "work.h"

#include "cache/disk.h"
#include "target/lun.h"
#include "target/trace.h"

/* Bytes a worker handles at once for WRITE SAME and VERIFY, whatever the command's size. */
#define RD_PIECE (1024 * 1024)
/* ORWRITE retries its compare-and-write this often when other writers keep racing it. */
#define RD_ORWRITE_TRIES 16
/* Allocation runs one GET LBA STATUS descriptor of a mapped range looks at, at most. */
#define RD_LBA_STATUS_STEPS 64
/* SPACE ALLOCATION FAILED WRITE PROTECT (SBC-3, thin provisioning). */
#define ASC_SPACE_ALLOC_FAILED 0x2707
/*
 * tgtd's heap is faulted in this far when it opens its first rackdisk LU (see
 * rd_warm_heap): a VM's first reads otherwise wait for it, a pair of 1 MiB buffers at a
 * time. Below glibc.malloc.mmap_threshold (target/tgtmgr.c), so it comes from the heap.
 */
#define RD_WARM_HEAP (16u * 1024 * 1024)

struct rackdisk_info {
	struct lun *lun;
	struct trace *trace;  /* NULL: not recording reads */
	struct tgt_work sweep; /* every RD_SWEEP_S on the event loop, while open */
	/* This LU's SERVICE ACTION IN(16) table: tgt's, with GET LBA STATUS replaced. */
	struct service_action sai[8];
};

/* rackdisk_info is allocated just after the bs_thread_info */
#define RDP(lu)	((struct rackdisk_info *) \
			((char *)(lu) + \
			 sizeof(struct scsi_lu) + \
			 sizeof(struct bs_thread_info)) \
		)

static void cmd_error_sense(struct scsi_cmd *cmd, uint8_t key, uint16_t asc)
{
	scsi_set_result(cmd, SAM_STAT_CHECK_CONDITION);
	sense_data_build(cmd, key, asc);
}

/* Turns a disk error into SCSI status and sense: the one place where errno meets SCSI. */
static void cmd_error_errno(struct scsi_cmd *cmd, int err, int writing)
{
	switch (err) {
	case -ETIMEDOUT:
	case -EAGAIN:
	case -ECONNRESET:
	case -ECONNREFUSED:
	case -EPIPE:
	case -ESHUTDOWN:
		/* The data may arrive soon (the fetch goes on in rackdiskd, or rackdiskd is
		 * restarting): ask for a retry. */
		scsi_set_result(cmd, SAM_STAT_BUSY);
		break;
	case -EIO:
	case -EBADMSG:
	case -ENODATA:
		cmd_error_sense(cmd, MEDIUM_ERROR, writing ? ASC_WRITE_ERROR : ASC_READ_ERROR);
		break;
	case -ERANGE:
		cmd_error_sense(cmd, ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE);
		break;
	case -ENOSPC:
	case -EDQUOT:
		/* A read finds the chunk store full of chunks in use: that passes. */
		if (!writing)
			scsi_set_result(cmd, SAM_STAT_BUSY);
		else
			cmd_error_sense(cmd, DATA_PROTECT, ASC_SPACE_ALLOC_FAILED);
		break;
	case -EROFS:
	case -EACCES:
	case -EPERM:
		cmd_error_sense(cmd, DATA_PROTECT, ASC_WRITE_PROTECT);
		break;
	case -EINVAL:
		cmd_error_sense(cmd, ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB);
		break;
	default:
		cmd_error_sense(cmd, HARDWARE_ERROR, ASC_INTERNAL_TGT_FAILURE);
		break;
	}
}

/* The caching mode page's WCE bit: with the write cache off every write is FUA. */
static unsigned wce_flags(struct scsi_cmd *cmd)
{
	struct mode_pg *pg = find_mode_page(cmd->dev, 0x08, 0);

	return (pg && !(pg->mode_data[0] & 0x04)) ? DISK_FUA : 0;
}

static unsigned fua_flags(struct scsi_cmd *cmd)
{
	return ((cmd->scb[1] & 0x08) ? DISK_FUA : 0) | wce_flags(cmd);
}

static void rd_read(struct scsi_cmd *cmd, struct disk *d, struct trace *trace)
{
	uint32_t length = scsi_get_in_length(cmd);
	int ret;

	if (cmd->tl < length)
		length = cmd->tl;
	ret = disk_read(d, scsi_get_in_buffer(cmd), length, cmd->offset);
	if (ret)
		cmd_error_errno(cmd, ret, 0);
	if (trace)
		trace_end(trace, cmd, trace_now_ns(), cmd->offset, length, !ret);
}

static bool is_read(const struct scsi_cmd *cmd)
{
	switch (cmd->scb[0]) {
	case READ_6:
	case READ_10:
	case READ_12:
	case READ_16:
		return true;
	default:
		return false;
	}
}

/* Compares [off, off+len) of the disk with data, where data repeats every `period`
 * bytes (the whole buffer, or one block for VERIFY with BYTCHK=11b). *deadline is the
 * command's (disk_read_until). Returns 0, 1 with *mis set on a miscompare, or a negative
 * errno. */
static int rd_compare(struct disk *d, const char *data, size_t period, uint64_t off,
		      uint64_t len, uint64_t *mis, uint64_t *deadline)
{
	char *buf;
	uint64_t done = 0;
	size_t n, i;
	int ret = 0;

	buf = malloc(RD_PIECE);
	if (!buf)
		return -ENOMEM;
	while (done < len) {
		n = len - done < RD_PIECE ? (size_t)(len - done) : RD_PIECE;
		ret = disk_read_until(d, buf, n, off + done, deadline);
		if (ret)
			break;
		for (i = 0; i < n; i++) {
			if (buf[i] != data[(done + i) % period]) {
				*mis = done + i;
				ret = 1;
				goto out;
			}
		}
		done += n;
	}
out:
	free(buf);
	return ret;
}

static void rd_miscompare(struct scsi_cmd *cmd, uint64_t pos)
{
	scsi_set_result(cmd, SAM_STAT_CHECK_CONDITION);
	sense_data_build_with_info(cmd, MISCOMPARE, ASC_MISCOMPARE_DURING_VERIFY_OPERATION, pos);
}

static void rd_write(struct scsi_cmd *cmd, struct disk *d, int verify)
{
	uint32_t length = scsi_get_out_length(cmd);
	char *buf = scsi_get_out_buffer(cmd);
	unsigned flags;
	uint64_t mis, deadline = 0;
	int ret;

	/* WRITE AND VERIFY promises the data is on the medium: make it durable. */
	if (verify)
		flags = DISK_FUA;
	else if (cmd->scb[0] == WRITE_6)
		flags = wce_flags(cmd);
	else
		flags = fua_flags(cmd);
	ret = disk_write_until(d, buf, length, cmd->offset, flags, &deadline);
	if (ret) {
		cmd_error_errno(cmd, ret, 1);
		return;
	}
	if (!verify)
		return;
	ret = rd_compare(d, buf, length, cmd->offset, length, &mis, &deadline);
	if (ret < 0)
		cmd_error_errno(cmd, ret, 0);
	else if (ret)
		rd_miscompare(cmd, mis);
}

/*
 * VERIFY with BYTCHK: 01b compares the range's blocks with as many blocks of Data-Out,
 * 11b one Data-Out block with every block of the range. (BYTCHK=00b never gets here:
 * sbc_verify answers it.) The range is the CDB's VERIFICATION LENGTH, not what the
 * initiator happened to send (its Expected Data Transfer Length): a Data-Out too short
 * for it fails with PARAMETER LIST LENGTH ERROR rather than passing blocks it never
 * compared, and bytes beyond it are not compared (an underflow residual says so).
 */
static void rd_verify(struct scsi_cmd *cmd, struct disk *d)
{
	uint32_t outlen = scsi_get_out_length(cmd);
	uint64_t len = (uint64_t)scsi_rw_count(cmd->scb) << cmd->dev->blk_shift;
	uint64_t need, mis, deadline = 0;
	int ret;

	if (!len)
		return; /* a VERIFICATION LENGTH of 0 verifies nothing (SBC-3) */
	need = (cmd->scb[1] & 0x06) == 0x06 ? 1ULL << cmd->dev->blk_shift : len;
	if (outlen < need) {
		cmd_error_sense(cmd, ILLEGAL_REQUEST, ASC_PARAMETER_LIST_LENGTH_ERR);
		return;
	}
	if (outlen > need)
		scsi_set_out_resid_by_actual(cmd, (uint32_t)need);
	ret = rd_compare(d, scsi_get_out_buffer(cmd), (size_t)need, cmd->offset, len, &mis,
			 &deadline);
	if (ret < 0)
		cmd_error_errno(cmd, ret, 0);
	else if (ret)
		rd_miscompare(cmd, mis);
}

/* The MAXIMUM COMPARE AND WRITE LENGTH tgt advertises in the Block Limits VPD page. */
static uint32_t rd_caw_max_blocks(struct scsi_lu *lu)
{
	struct vpd *pg = lu->attrs.lu_vpd[PCODE_OFFSET(0xb0)];

	return pg ? pg->data[1] : 0;
}

/* COMPARE AND WRITE: the Data-Out buffer holds the blocks to compare, then the blocks to
 * write. disk_compare_and_write() holds the range against every other writer. */
static void rd_compare_and_write(struct scsi_cmd *cmd, struct disk *d)
{
	uint32_t length = scsi_get_out_length(cmd) / 2;
	char *buf = scsi_get_out_buffer(cmd);
	uint64_t mis = 0;
	int ret;

	if (length != cmd->tl || (cmd->tl >> cmd->dev->blk_shift) > rd_caw_max_blocks(cmd->dev)) {
		cmd_error_sense(cmd, ILLEGAL_REQUEST, ASC_INVALID_FIELD_IN_CDB);
		return;
	}
	if (!length)
		return;
	ret = disk_compare_and_write(d, buf, buf + length, length, cmd->offset,
				     fua_flags(cmd), &mis);
	if (ret == -EILSEQ)
		rd_miscompare(cmd, mis);
	else if (ret)
		cmd_error_errno(cmd, ret, 1);
}

/* ORWRITE: read, OR, and write only if the range did not change meanwhile (a
 * compare-and-write of what was read), so the update is atomic against other writers.
 * The reads and the retries share the command's deadline. */
static void rd_orwrite(struct scsi_cmd *cmd, struct disk *d)
{
	uint32_t length = scsi_get_out_length(cmd);
	char *src = scsi_get_out_buffer(cmd);
	char *old, *new;
	uint64_t mis, deadline = 0;
	uint32_t i;
	int ret = -ENOMEM, tries;

	if (cmd->tl < length)
		length = cmd->tl;
	if (!length)
		return;
	old = malloc(length);
	new = malloc(length);
	if (!old || !new)
		goto out;
	for (tries = 0; tries < RD_ORWRITE_TRIES; tries++) {
		ret = disk_read_until(d, old, length, cmd->offset, &deadline);
		if (ret)
			break;
		for (i = 0; i < length; i++)
			new[i] = old[i] | src[i];
		ret = disk_compare_and_write_until(d, old, new, length, cmd->offset,
						   fua_flags(cmd), &mis, &deadline);
		if (ret != -EILSEQ)
			break;
	}
	if (ret == -EILSEQ)
		ret = -EAGAIN;
out:
	if (ret)
		cmd_error_errno(cmd, ret, 1);
	free(old);
	free(new);
}

/*
 * WRITE SAME (10/16). With the UNMAP bit the range is deallocated and then reads as
 * zeros (LBPRZ), whatever the Data-Out block holds: that is what tgt's own stores do and
 * what initiators (libiscsi's WriteSame*.Unmap* tests) expect. Without it the blocks are
 * written (zeros with NDOB, else the Data-Out block, which must have been sent), so GET
 * LBA STATUS reports them mapped as SBC requires, even for zeros. The
 * pieces share one deadline: the command ends within io_timeout of its first miss.
 */
static void rd_write_same(struct scsi_cmd *cmd, struct disk *d)
{
	struct scsi_lu *lu = cmd->dev;
	uint32_t blksize = 1U << lu->blk_shift;
	uint32_t outlen = scsi_get_out_length(cmd);
	const char *blk = scsi_get_out_buffer(cmd);
	int unmap = cmd->scb[1] & 0x08;
	int lbdata = cmd->scb[1] & 0x06;
	int ndob = cmd->scb[0] == WRITE_SAME_16 && (cmd->scb[1] & 0x01);
	uint64_t off = cmd->offset, end, lba, count, deadline = 0;
	uint32_t n, i;
	char *buf;
	int zero, ret = 0;

	/* The length comes from the CDB: tgt keeps it in 32 bits of bytes (cmd->tl), which
	 * wraps from 4 GiB (a count of 0, "to the end of the LUN", on any large disk). */
	count = scsi_rw_count(cmd->scb);
	if (!count)
		count = (lu->size >> lu->blk_shift) - (off >> lu->blk_shift);
	end = off + (count << lu->blk_shift);
	if (end > lu->size || end < off) {
		cmd_error_sense(cmd, ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE);
		return;
	}
	if (unmap) {
		ret = disk_unmap_until(d, off, end - off, wce_flags(cmd), &deadline);
		if (ret)
			cmd_error_errno(cmd, ret, 1);
		return;
	}
	/* Without NDOB the Data-Out holds the block to write. sbc_rw lets an empty one through
	 * (it only checks that a non-empty one is one block): writing zeros then would report
	 * success for a block never sent (rdwr fails it too, with a failed write). */
	if (!ndob && outlen < blksize) {
		cmd_error_sense(cmd, ILLEGAL_REQUEST, ASC_PARAMETER_LIST_LENGTH_ERR);
		return;
	}
	zero = ndob || buf_is_zero(blk, blksize);
	buf = calloc(1, RD_PIECE);
	if (!buf) {
		cmd_error_errno(cmd, -ENOMEM, 1);
		return;
	}
	if (!zero)
		for (i = 0; i < RD_PIECE; i += blksize)
			memcpy(buf + i, blk, blksize);
	while (off < end && !ret) {
		n = end - off < RD_PIECE ? (uint32_t)(end - off) : RD_PIECE;
		/* LBDATA / PBDATA (obsolete): each block starts with its own address. */
		for (i = 0; lbdata && i < n; i += blksize) {
			lba = (off + i) >> cmd->dev->blk_shift;
			if (lbdata == 0x02)
				put_unaligned_be32((uint32_t)lba, buf + i);
			else
				put_unaligned_be64(lba, buf + i);
		}
		ret = disk_write_until(d, buf, n, off, wce_flags(cmd), &deadline);
		off += n;
	}
	free(buf);
	if (ret)
		cmd_error_errno(cmd, ret, 1);
}

/*
 * UNMAP (worker side): the parameter list is an 8-byte header and 16-byte block
 * descriptors (SBC-3 5.28). Its length is the CDB's PARAMETER LIST LENGTH bounded by
 * what was transferred: 0 is no list (nothing to do), 1 to 7 cannot hold the header.
 * The header's UNMAP BLOCK DESCRIPTOR DATA LENGTH, bounded by the list, says how many
 * descriptors there are; an incomplete last one is ignored. Every descriptor is checked
 * before any range is released, so a bad one leaves the disk unchanged. The descriptors
 * share one deadline (their unaligned edges may each need a chunk).
 */
static void rd_unmap(struct scsi_cmd *cmd, struct disk *d)
{
	struct scsi_lu *lu = cmd->dev;
	uint32_t length = scsi_get_out_length(cmd), plen = get_unaligned_be16(&cmd->scb[7]);
	const uint8_t *p = scsi_get_out_buffer(cmd);
	uint64_t lba, nblocks, blocks = lu->size >> lu->blk_shift, deadline = 0;
	uint32_t bdlen, n, i;
	int ret;

	if (!lu->attrs.thinprovisioning) {
		cmd_error_sense(cmd, ILLEGAL_REQUEST, ASC_INVALID_OP_CODE);
		return;
	}
	if (plen > 0 && plen < 8) {
		cmd_error_sense(cmd, ILLEGAL_REQUEST, ASC_PARAMETER_LIST_LENGTH_ERR);
		return;
	}
	if (plen < length)
		length = plen;
	if (length < 8)
		return;
	bdlen = get_unaligned_be16(&p[2]);
	if (bdlen > length - 8)
		bdlen = length - 8;
	n = bdlen / 16;
	p += 8;
	for (i = 0; i < n; i++) {
		lba = get_unaligned_be64(&p[i * 16]);
		nblocks = get_unaligned_be32(&p[i * 16 + 8]);
		if (lba > blocks || nblocks > blocks - lba) {
			cmd_error_sense(cmd, ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE);
			return;
		}
	}
	for (i = 0; i < n; i++) {
		lba = get_unaligned_be64(&p[i * 16]);
		nblocks = get_unaligned_be32(&p[i * 16 + 8]);
		if (!nblocks)
			continue;
		ret = disk_unmap_until(d, lba << lu->blk_shift, nblocks << lu->blk_shift,
				       wce_flags(cmd), &deadline);
		if (ret) {
			cmd_error_errno(cmd, ret, 1);
			return;
		}
	}
}

/*
 * PRE-FETCH (10/16): fills run in rackdiskd; the command completes at once. The length
 * comes from the CDB, as for WRITE SAME: tgt's cmd->tl is 32 bits of bytes, which wraps
 * from 4 GiB, and a count of 0 means "to the end of the medium" (SBC-3), for which
 * cmd->tl is 0. sbc_rw has checked the range against the LU's size.
 */
static void rd_prefetch(struct scsi_cmd *cmd, struct lun *l)
{
	struct scsi_lu *lu = cmd->dev;
	uint64_t count = scsi_rw_count(cmd->scb), off = cmd->offset, len;

	if (off >= lu->size)
		return;
	len = count ? count << lu->blk_shift : lu->size - off;
	if (len > lu->size - off)
		len = lu->size - off;
	lun_prefetch(l, off, len);
}

static void rd_sync_cache(struct scsi_cmd *cmd, struct disk *d)
{
	int ret;

	/* IMMED asks for an early answer; answering after the flush is also correct. */
	ret = disk_flush(d);
	if (ret)
		cmd_error_errno(cmd, ret, 1);
}

static void bs_rackdisk_request(struct scsi_cmd *cmd)
{
	struct rackdisk_info *rd = RDP(cmd->dev);
	struct disk *d = lun_disk(rd->lun);

	/* overwritten on error */
	scsi_set_result(cmd, SAM_STAT_GOOD);

	switch (cmd->scb[0]) {
	case READ_6:
	case READ_10:
	case READ_12:
	case READ_16:
		rd_read(cmd, d, rd->trace);
		break;
	case WRITE_6:
	case WRITE_10:
	case WRITE_12:
	case WRITE_16:
		rd_write(cmd, d, 0);
		break;
	case WRITE_VERIFY:
	case WRITE_VERIFY_12:
	case WRITE_VERIFY_16:
		rd_write(cmd, d, 1);
		break;
	case VERIFY_10:
	case VERIFY_12:
	case VERIFY_16:
		rd_verify(cmd, d);
		break;
	case COMPARE_AND_WRITE:
		rd_compare_and_write(cmd, d);
		break;
	case ORWRITE_16:
		rd_orwrite(cmd, d);
		break;
	case WRITE_SAME:
	case WRITE_SAME_16:
		rd_write_same(cmd, d);
		break;
	case UNMAP:
		rd_unmap(cmd, d);
		break;
	case SYNCHRONIZE_CACHE:
	case SYNCHRONIZE_CACHE_16:
		rd_sync_cache(cmd, d);
		break;
	case PRE_FETCH_10:
	case PRE_FETCH_16:
		rd_prefetch(cmd, rd->lun);
		break;
	default:
		cmd_error_sense(cmd, ILLEGAL_REQUEST, ASC_INVALID_OP_CODE);
		break;
	}

	if (scsi_get_result(cmd) != SAM_STAT_GOOD)
		eprintf("rackdisk %s: io error %p %x status %x lba %" PRIu64 " len %u\n",
			lun_config(rd->lun)->name, cmd, cmd->scb[0], scsi_get_result(cmd),
			cmd->offset >> cmd->dev->blk_shift, cmd->tl);
}

/*
 * The run of whole logical blocks from off (a block boundary, below end) that one GET LBA
 * STATUS descriptor reports, in bytes. disk_lba_status() speaks in DISK_GRAIN units, and
 * a block larger than a grain is deallocated only when every grain of it is: a
 * deallocated run is cut down to whole blocks, and a block holding any mapped grain is
 * mapped (reporting data as deallocated would have an initiator skip it as zeros). A
 * mapped run takes in the runs after it until a whole deallocated block follows, for at
 * most RD_LBA_STATUS_STEPS lookups (the event loop is not held long; the next
 * descriptor goes on from where this one ends).
 */
static int rd_block_run(struct disk *d, uint64_t off, uint64_t end, uint64_t blksize,
			uint64_t *len, bool *mapped)
{
	uint64_t pos, run, first;
	unsigned steps;
	bool m;
	int ret;

	ret = disk_lba_status(d, off, &run, &m);
	if (ret)
		return ret;
	run = min_t(uint64_t, max_t(uint64_t, run, 1), end - off);
	if (!m && run >= blksize) {
		*len = run / blksize * blksize;
		*mapped = false;
		return 0;
	}
	pos = off + run;
	for (steps = 0; pos < end && steps < RD_LBA_STATUS_STEPS; steps++) {
		ret = disk_lba_status(d, pos, &run, &m);
		if (ret)
			return ret;
		run = min_t(uint64_t, max_t(uint64_t, run, 1), end - pos);
		first = (pos + blksize - 1) / blksize * blksize;
		if (!m && first + blksize <= pos + run) {
			pos = first;
			break;
		}
		pos += run;
	}
	*len = min_t(uint64_t, (pos - off + blksize - 1) / blksize * blksize, end - off);
	*mapped = true;
	return 0;
}

/*
 * GET LBA STATUS, answered from the disk's allocation (on tgtd's event loop: it reads
 * only in-memory state). A run is "mapped" whenever it may read as non-zero data, so an
 * unfetched image chunk is mapped and only ranges that read as zeros are deallocated
 * (with blocks over DISK_GRAIN, only whole blocks that read as zeros: rd_block_run).
 */
static int rd_get_lba_status(int host_no, struct scsi_cmd *cmd)
{
	struct scsi_lu *lu = cmd->dev;
	struct rackdisk_info *rd = RDP(lu);
	uint32_t alloc_len, avail_len;
	uint64_t offset, run, nblocks, end, blksize = 1ULL << lu->blk_shift;
	unsigned char *buf;
	uint16_t asc = ASC_INVALID_FIELD_IN_CDB;
	unsigned char key = ILLEGAL_REQUEST;
	bool mapped;
	int ret;

	if (lu->attrs.removable && !lu->attrs.online) {
		key = NOT_READY;
		asc = ASC_MEDIUM_NOT_PRESENT;
		goto sense;
	}
	offset = get_unaligned_be64(&cmd->scb[2]);
	if (offset >= lu->size >> lu->blk_shift || !rd->lun) { /* before the shift wraps */
		asc = ASC_LBA_OUT_OF_RANGE;
		goto sense;
	}
	offset <<= lu->blk_shift;
	end = (lu->size >> lu->blk_shift) << lu->blk_shift;
	alloc_len = get_unaligned_be32(&cmd->scb[10]);
	if (alloc_len < 4 || scsi_get_in_length(cmd) < alloc_len)
		goto sense;

	buf = scsi_get_in_buffer(cmd);
	memset(buf, 0, alloc_len < 8 ? alloc_len : 8);
	avail_len = 8;
	/* As many descriptors as the allocation length holds: SBC lets the device server
	 * stop early, and the initiator asks again from where the list ends. */
	while (offset < end && avail_len + 16 <= alloc_len) {
		ret = rd_block_run(lun_disk(rd->lun), offset, end, blksize, &run, &mapped);
		if (ret) {
			key = HARDWARE_ERROR;
			asc = ASC_INTERNAL_TGT_FAILURE;
			goto sense;
		}
		nblocks = run / blksize;
		if (nblocks > 0xffffffffULL)
			nblocks = 0xffffffffULL;
		memset(&buf[avail_len], 0, 16);
		put_unaligned_be64(offset >> lu->blk_shift, &buf[avail_len]);
		put_unaligned_be32((uint32_t)nblocks, &buf[avail_len + 8]);
		buf[avail_len + 12] = mapped ? 0 : 1; /* 0:mapped 1:deallocated */
		avail_len += 16;
		offset += nblocks * blksize;
	}
	if (alloc_len >= 4)
		put_unaligned_be32(avail_len - 4, &buf[0]); /* Parameter Data Len */
	scsi_set_in_resid_by_actual(cmd, avail_len < alloc_len ? avail_len : alloc_len);
	return SAM_STAT_GOOD;

sense:
	scsi_set_in_resid_by_actual(cmd, 0);
	sense_data_build(cmd, key, asc);
	return SAM_STAT_CHECK_CONDITION;
}

/*
 * UNMAP (event loop side), instead of tgt's sbc_unmap: the same checks, but a command
 * handed to the worker returns GOOD and touches nothing else. sbc_unmap falls through to
 * its error path after a successful submit: it builds ILLEGAL REQUEST sense and an out
 * residual of the whole list on the event loop while the worker runs rd_unmap, so every
 * UNMAP that worked came back GOOD with stale sense and a residual underflow, and a
 * worker's own sense raced with it.
 */
static int rd_unmap_perform(int host_no, struct scsi_cmd *cmd)
{
	struct scsi_lu *lu = cmd->dev;
	unsigned char key = ILLEGAL_REQUEST;
	uint16_t asc = ASC_INVALID_FIELD_IN_CDB;

	if (device_reserved(cmd))
		return SAM_STAT_RESERVATION_CONFLICT;
	if (cmd->scb[1] & 0x01) /* ANCHOR: no anchored state */
		goto sense;
	if (lu->attrs.removable && !lu->attrs.online) {
		key = NOT_READY;
		asc = ASC_MEDIUM_NOT_PRESENT;
		goto sense;
	}
	if (!lu->attrs.thinprovisioning) {
		asc = ASC_INVALID_OP_CODE;
		goto sense;
	}
	if (lu->attrs.readonly || lu->attrs.swp) {
		key = DATA_PROTECT;
		asc = ASC_WRITE_PROTECT;
		goto sense;
	}
	if (lu->bst->bs_cmd_submit(cmd)) {
		key = HARDWARE_ERROR;
		asc = ASC_INTERNAL_TGT_FAILURE;
		goto sense;
	}
	return SAM_STAT_GOOD;

sense:
	cmd->offset = 0;
	scsi_set_in_resid_by_actual(cmd, 0);
	scsi_set_out_resid_by_actual(cmd, 0);
	sense_data_build(cmd, key, asc);
	return SAM_STAT_CHECK_CONDITION;
}

/* Gives this LU its own SERVICE ACTION IN(16) table and its own COMPARE AND WRITE and
 * UNMAP entries. */
static tgtadm_err rd_template_setup(struct scsi_lu *lu)
{
	struct device_type_template *t = &lu->dev_type_template;
	struct rackdisk_info *rd = RDP(lu);
	struct service_action *orig = t->ops[SERVICE_ACTION_IN].service_actions;
	size_t i;

	if (t->type != TYPE_DISK || !orig) {
		eprintf("rackdisk: only --device-type disk is supported\n");
		return TGTADM_INVALID_REQUEST;
	}
	for (i = 0; orig[i].cmd_perform; i++) {
		if (i + 1 >= ARRAY_SIZE(rd->sai))
			return TGTADM_INVALID_REQUEST;
		rd->sai[i] = orig[i];
		if (orig[i].service_action == SAI_GET_LBA_STATUS)
			rd->sai[i].cmd_perform = rd_get_lba_status;
	}
	memset(&rd->sai[i], 0, sizeof(rd->sai[i]));
	t->ops[SERVICE_ACTION_IN].service_actions = rd->sai;

	t->ops[UNMAP].cmd_perform = rd_unmap_perform;
	if (t->ops[COMPARE_AND_WRITE].cmd_perform == spc_illegal_op) {
		t->ops[COMPARE_AND_WRITE].cmd_perform = t->ops[WRITE_16].cmd_perform;
		t->ops[COMPARE_AND_WRITE].pr_conflict_bits = t->ops[WRITE_16].pr_conflict_bits;
	}
	return TGTADM_SUCCESS;
}

/* Starts the read trace lun.json asks for. An operator who set trace_dir wants the trace,
 * so a file that cannot be created fails the LUN rather than go unrecorded. */
static int rd_trace_open(struct rackdisk_info *rd)
{
	const struct lun_config *c = lun_config(rd->lun);
	int ret;

	rd->trace = NULL;
	if (!c->trace)
		return 0;
	ret = trace_open(c->trace, &c->image_id, disk_size(lun_disk(rd->lun)), &rd->trace);
	if (ret)
		eprintf("rackdisk %s: cannot create trace %s: %s\n", c->name, c->trace,
			strerror(-ret));
	return ret;
}

static void rd_trace_close(struct rackdisk_info *rd)
{
	const struct lun_config *c = lun_config(rd->lun);
	uint64_t n;
	int ret;

	if (!rd->trace)
		return;
	n = trace_count(rd->trace);
	ret = trace_close(rd->trace);
	rd->trace = NULL;
	if (ret)
		eprintf("rackdisk %s: cannot rewrite trace %s sorted (its lines are in "
			"completion order): %s\n", c->name, c->trace, strerror(-ret));
	else
		dprintf("rackdisk %s: %" PRIu64 " reads traced in %s\n", c->name, n, c->trace);
}

/* tgtd's event loop submits commands in arrival order: the trace's start of a READ. */
static int bs_rackdisk_submit(struct scsi_cmd *cmd)
{
	struct rackdisk_info *rd = RDP(cmd->dev);

	if (rd->trace && is_read(cmd))
		trace_begin(rd->trace, cmd, trace_now_ns());
	return bs_thread_cmd_submit(cmd);
}

/*
 * tgt allocates each command's data buffer on its event loop (posix_memalign). A fresh
 * tgtd's heap grows as it goes, and malloc writes its chunk headers into the new memory,
 * so with rackdiskd's tunables (hugetlb=1: 2 MiB pages) every second 1 MiB buffer of a
 * VM's first reads faults in and zeroes a new 2 MiB page on the event loop itself, before
 * the next command is read. On the 2-core development VM the module's read trace showed
 * a cold read's first 8 commands arriving in pairs 8-10 ms apart, over ~40 ms; with the
 * heap warmed they all arrived within 0.4 ms (tests/rack/peer_bench.py's cluster).
 * So the first LU to open faults RD_WARM_HEAP of heap in and frees it: with
 * trim_threshold above it, the memory stays in the heap's top for those buffers. Called on
 * the event loop (LU creation), once per process; with an operator's tunables that trim
 * it, it only costs the fault-in.
 */
static void rd_warm_heap(void)
{
	static bool done;
	volatile char *p;

	if (done)
		return;
	done = true;
	p = malloc(RD_WARM_HEAP);
	if (!p)
		return;
	for (size_t i = 0; i < RD_WARM_HEAP; i += 4096)
		p[i] = 0;
	free((void *)p);
}

/*
 * The disk and its chunk store reader keep descriptors of the chunks read; one of a chunk
 * the store's owner has evicted since keeps the file's space allocated, past the cache's
 * capacity, until it is closed. The sweep closes those, also on an LU nobody reads (a
 * stopped VM's). It runs on tgtd's event loop and never waits (lun_sweep skips a
 * descriptor in use).
 */
#define RD_SWEEP_S 2

static void rd_sweep(void *arg)
{
	struct rackdisk_info *rd = arg;

	lun_sweep(rd->lun);
	add_work(&rd->sweep, RD_SWEEP_S);
}

/* Stops the sweep if a successful open armed it. */
static void rd_sweep_disarm(struct rackdisk_info *rd)
{
	if (rd->sweep.func) {
		del_work(&rd->sweep);
		rd->sweep.func = NULL;
	}
}

static int bs_rackdisk_open(struct scsi_lu *lu, char *path, int *fd, uint64_t *size)
{
	struct rackdisk_info *rd = RDP(lu);
	char err[512] = "";
	char params[] = "thin_provisioning=1";
	int ret;

	rd_warm_heap();
	ret = lun_open(path, &rd->lun, err, sizeof(err));
	if (ret) {
		eprintf("rackdisk: cannot open %s: %s\n", path, err);
		rd->lun = NULL;
		return -1;
	}
	/* Not the disk's data: an O_PATH descriptor, on which lseek fails (see top). */
	*fd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (*fd < 0) {
		eprintf("rackdisk: cannot open %s, %m\n", path);
		goto fail;
	}
	if (rd_trace_open(rd)) {
		close(*fd);
		goto fail;
	}
	*size = disk_size(lun_disk(rd->lun));

	/* A rackdisk disk is always thin (UNMAP releases overlay space, zeros read back). */
	lu->dev_type_template.lu_config(lu, params);
	/* The overlay's grain is the physical block: aligned writes avoid read-modify-write. */
	if (!lu->attrs.no_auto_lbppbe)
		update_lbppbe(lu, DISK_GRAIN);
	rd->sweep = (struct tgt_work){ .func = rd_sweep, .data = rd };
	add_work(&rd->sweep, RD_SWEEP_S);
	return 0;
fail:
	lun_close(rd->lun);
	rd->lun = NULL;
	return -1;
}

static void bs_rackdisk_close(struct scsi_lu *lu)
{
	struct rackdisk_info *rd = RDP(lu);

	rd_sweep_disarm(rd);
	rd_trace_close(rd);
	lun_close(rd->lun);
	rd->lun = NULL;
	close(lu->fd);
}

static tgtadm_err bs_rackdisk_init(struct scsi_lu *lu, char *bsopts)
{
	struct bs_thread_info *info = BS_THREAD_I(lu);
	tgtadm_err ret;

	ret = rd_template_setup(lu);
	if (ret)
		return ret;
	return bs_thread_open(info, bs_rackdisk_request, nr_iothreads);
}

static void bs_rackdisk_exit(struct scsi_lu *lu)
{
	struct bs_thread_info *info = BS_THREAD_I(lu);
	struct rackdisk_info *rd = RDP(lu);

	/* tgt_device_create's failure after a successful open frees the LU with no
	 * bs_close: the sweep must not fire on freed memory. */
	rd_sweep_disarm(rd);

	bs_thread_close(info);
}

static struct backingstore_template rackdisk_bst = {
	.bs_name		= "rackdisk",
	.bs_datasize		= sizeof(struct bs_thread_info) +
				  sizeof(struct rackdisk_info),
	.bs_open		= bs_rackdisk_open,
	.bs_close		= bs_rackdisk_close,
	.bs_init		= bs_rackdisk_init,
	.bs_exit		= bs_rackdisk_exit,
	.bs_cmd_submit		= bs_rackdisk_submit,
	.bs_oflags_supported	= 0,
};

void register_bs_module(void)
{
	unsigned char opcodes[] = {
		ALLOW_MEDIUM_REMOVAL,
		COMPARE_AND_WRITE,
		FORMAT_UNIT,
		INQUIRY,
		MAINT_PROTOCOL_IN,
		MODE_SELECT,
		MODE_SELECT_10,
		MODE_SENSE,
		MODE_SENSE_10,
		ORWRITE_16,
		PERSISTENT_RESERVE_IN,
		PERSISTENT_RESERVE_OUT,
		PRE_FETCH_10,
		PRE_FETCH_16,
		READ_10,
		READ_12,
		READ_16,
		READ_6,
		READ_CAPACITY,
		RELEASE,
		REPORT_LUNS,
		REQUEST_SENSE,
		RESERVE,
		SEND_DIAGNOSTIC,
		SERVICE_ACTION_IN,
		START_STOP,
		SYNCHRONIZE_CACHE,
		SYNCHRONIZE_CACHE_16,
		TEST_UNIT_READY,
		UNMAP,
		VERIFY_10,
		VERIFY_12,
		VERIFY_16,
		WRITE_10,
		WRITE_12,
		WRITE_16,
		WRITE_6,
		WRITE_SAME,
		WRITE_SAME_16,
		WRITE_VERIFY,
		WRITE_VERIFY_12,
		WRITE_VERIFY_16
	};

	bs_create_opcode_map(&rackdisk_bst, opcodes, ARRAY_SIZE(opcodes));
	register_backingstore_template(&rackdisk_bst);
}
