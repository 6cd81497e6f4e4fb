/*
 * iscsi_cmd - sends one SCSI command through libiscsi and reports exactly what came
 * back (status, sense key/ASC/ASCQ, the sense INFORMATION field, the time taken), for
 * the target tests that check sense data and deadlines, which qemu-io hides behind its
 * own retries.
 *
 *   iscsi_cmd URL read LBA BLOCKS            -> sha256 and first byte of the data
 *   iscsi_cmd URL write LBA BLOCKS BYTE [fua]
 *   iscsi_cmd URL caw LBA BLOCKS CMPBYTE NEWBYTE
 *   iscsi_cmd URL orwrite LBA BLOCKS BYTE
 *   iscsi_cmd URL prefetch LBA BLOCKS
 *   iscsi_cmd URL sync LBA BLOCKS            SYNCHRONIZE CACHE(16)
 *   iscsi_cmd URL writesame LBA BLOCKS BYTE [unmap]   WRITE SAME(16); BLOCKS 0: to the end
 *   iscsi_cmd URL lbastatus LBA              -> the descriptors
 *   iscsi_cmd URL unmap LBA BLOCKS           UNMAP with one block descriptor
 *   iscsi_cmd URL unmapraw PLEN HEX          UNMAP with PARAMETER LIST LENGTH PLEN and
 *                                            the parameter list HEX (any length) as Data-Out
 *   iscsi_cmd URL raw CDBHEX DATA            any CDB (hex, up to 16 bytes) with the
 *                                            Data-Out DATA: "none", or "@LEN:BYTE" (LEN
 *                                            bytes of BYTE), or "@LEN:BYTE+@LEN:BYTE..."
 *                                            (pieces one after the other); its
 *                                            Expected Data Transfer Length is DATA's
 *                                            length, whatever the CDB says
 *   iscsi_cmd URL hold SECONDS               logs in, prints {"status": "LOGGED_IN"},
 *                                            stays logged in SECONDS, logs out
 *
 * $ISCSI_CMD_ALIAS, when set, is sent as the InitiatorAlias at login (as it is: the tests
 * put line breaks in it, as a hostile initiator would).
 *
 * Prints one JSON line. unmap, unmapraw and raw add the response's residual ("residual_status":
 * "none", "underflow" or "overflow", "residual": bytes) and whether libiscsi handed back
 * sense data ("sense": true/false). libiscsi keeps the sense of a CHECK CONDITION only: a
 * sense segment sent with GOOD status is dropped, so stale sense on a GOOD UNMAP shows
 * only through the residual tgt sets along with it. Exit status 0 when the command was delivered (whatever its
 * SCSI status), 1 on connection errors, 2 on usage errors.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <iscsi/iscsi.h>
#include <iscsi/scsi-lowlevel.h>

#include "common/hash.h"
#include "common/util.h"

#define BLOCK 512
/* Longest Data-Out of the raw op. */
#define RAW_DATA_MAX (4u << 20)

static const char *status_name(int s)
{
	switch (s) {
	case SCSI_STATUS_GOOD: return "GOOD";
	case SCSI_STATUS_CHECK_CONDITION: return "CHECK_CONDITION";
	case SCSI_STATUS_BUSY: return "BUSY";
	case SCSI_STATUS_TIMEOUT: return "TIMEOUT";
	case SCSI_STATUS_CANCELLED: return "CANCELLED";
	case SCSI_STATUS_ERROR: return "ERROR";
	default: return "OTHER";
	}
}

/* The INFORMATION field of fixed (0x70) or descriptor (0x72) sense data; -1 if absent.
 * libiscsi keeps the raw sense after a 2-byte length in datain on CHECK CONDITION. */
static long long sense_info(const struct scsi_task *t)
{
	const uint8_t *sb;
	int len, i;

	if (t->status != SCSI_STATUS_CHECK_CONDITION || t->datain.size < 10)
		return -1;
	sb = t->datain.data + 2;
	len = t->datain.size - 2;
	if ((sb[0] & 0x7f) == 0x70 && (sb[0] & 0x80))
		return ((long long)sb[3] << 24) | (sb[4] << 16) | (sb[5] << 8) | sb[6];
	if ((sb[0] & 0x7f) == 0x72) {
		for (i = 8; i + 12 <= len; i += 2 + sb[i + 1]) {
			if (sb[i] == 0) {
				long long v = 0;
				int k;

				for (k = 0; k < 8; k++)
					v = (v << 8) | sb[i + 4 + k];
				return v;
			}
		}
	}
	return -1;
}

static void report(const struct scsi_task *t, double ms, const char *extra)
{
	printf("{\"status\": \"%s\", \"key\": %d, \"asc\": %d, \"ascq\": %d, \"info\": %lld, "
	       "\"ms\": %.1f%s%s}\n",
	       status_name(t->status), t->status == SCSI_STATUS_CHECK_CONDITION ? t->sense.key : 0,
	       t->status == SCSI_STATUS_CHECK_CONDITION ? (t->sense.ascq >> 8) & 0xff : 0,
	       t->status == SCSI_STATUS_CHECK_CONDITION ? t->sense.ascq & 0xff : 0, sense_info(t),
	       ms, extra ? ", " : "", extra ? extra : "");
}

/* The residual, and whether libiscsi handed back sense data (see the top). */
static void residual_extra(const struct scsi_task *t, char *extra, size_t size)
{
	static const char *const names[] = {"none", "underflow", "overflow"};

	if (!t)
		return;
	snprintf(extra, size, "\"residual_status\": \"%s\", \"residual\": %zu, \"sense\": %s",
		 t->residual_status <= SCSI_RESIDUAL_OVERFLOW ? names[t->residual_status] : "?",
		 t->residual, t->datain.size > 0 ? "true" : "false");
}

/* UNMAP with PARAMETER LIST LENGTH plen; hex is sent as the parameter list. */
static struct scsi_task *unmap_raw(struct iscsi_context *iscsi, int lun, uint16_t plen,
				   const char *hex, unsigned char *buf)
{
	unsigned char cdb[10] = {0x42, 0, 0, 0, 0, 0, 0, (unsigned char)(plen >> 8),
				 (unsigned char)plen, 0};
	struct iscsi_data data = {.data = buf};
	struct scsi_task *t;
	unsigned int byte;
	size_t i, n = strlen(hex) / 2;

	for (i = 0; i < n && i < BLOCK; i++) {
		if (sscanf(hex + 2 * i, "%2x", &byte) != 1)
			return NULL;
		buf[i] = (unsigned char)byte;
	}
	data.size = (size_t)i;
	t = scsi_create_task(sizeof(cdb), cdb, data.size ? SCSI_XFER_WRITE : SCSI_XFER_NONE,
			     (int)data.size);
	if (!t)
		return NULL;
	if (!iscsi_scsi_command_sync(iscsi, lun, t, &data)) {
		scsi_free_scsi_task(t);
		return NULL;
	}
	return t;
}

/* Fills buf from a raw op's DATA ("@LEN:BYTE" pieces joined by '+'); returns the length,
 * or -1 if malformed or over max. */
static long raw_data(const char *spec, unsigned char *buf, size_t max)
{
	size_t n = 0;
	unsigned long len, byte;
	char *end;

	if (!strcmp(spec, "none"))
		return 0;
	for (;;) {
		if (*spec != '@')
			return -1;
		len = strtoul(spec + 1, &end, 0);
		if (*end != ':' || len > max - n)
			return -1;
		byte = strtoul(end + 1, &end, 0);
		if (end == spec || byte > 255)
			return -1;
		memset(buf + n, (int)byte, len);
		n += len;
		if (!*end)
			return (long)n;
		if (*end != '+')
			return -1;
		spec = end + 1;
	}
}

/* Sends the CDB in hex with DATA as its Data-Out (see the top). */
static struct scsi_task *raw_cmd(struct iscsi_context *iscsi, int lun, const char *hex,
				 const char *data, unsigned char *buf, size_t max)
{
	unsigned char cdb[16];
	struct iscsi_data d = {.data = buf};
	struct scsi_task *t;
	unsigned int byte;
	size_t i, n = strlen(hex) / 2;
	long len = raw_data(data, buf, max);

	if (n == 0 || n > sizeof(cdb) || strlen(hex) % 2 || len < 0)
		return NULL;
	for (i = 0; i < n; i++) {
		if (sscanf(hex + 2 * i, "%2x", &byte) != 1)
			return NULL;
		cdb[i] = (unsigned char)byte;
	}
	d.size = (size_t)len;
	t = scsi_create_task((int)n, cdb, len ? SCSI_XFER_WRITE : SCSI_XFER_NONE, (int)len);
	if (!t)
		return NULL;
	if (!iscsi_scsi_command_sync(iscsi, lun, t, len ? &d : NULL)) {
		scsi_free_scsi_task(t);
		return NULL;
	}
	return t;
}

static double elapsed_ms(uint64_t t0)
{
	return (double)(now_ns() - t0) / 1e6;
}

int main(int argc, char **argv)
{
	struct iscsi_context *iscsi;
	struct iscsi_url *url;
	struct scsi_task *t = NULL;
	unsigned char *buf = NULL;
	char extra[4096] = "";
	const char *op;
	uint64_t lba, t0;
	uint32_t blocks = 0, len, i;
	int ret = 1;

	if (argc < 4)
		goto usage;
	op = argv[2];
	lba = strtoull(argv[3], NULL, 0);
	if (argc > 4 && strcmp(op, "unmapraw") && strcmp(op, "raw"))
		blocks = (uint32_t)strtoul(argv[4], NULL, 0);
	len = blocks * BLOCK;

	iscsi = iscsi_create_context("iqn.2026-11.io.rackdisk.test:iscsi-cmd");
	url = iscsi ? iscsi_parse_full_url(iscsi, argv[1]) : NULL;
	if (!url) {
		fprintf(stderr, "iscsi_cmd: bad URL %s\n", argv[1]);
		return 1;
	}
	if (getenv("ISCSI_CMD_ALIAS"))
		iscsi_set_alias(iscsi, getenv("ISCSI_CMD_ALIAS"));
	iscsi_set_targetname(iscsi, url->target);
	iscsi_set_session_type(iscsi, ISCSI_SESSION_NORMAL);
	iscsi_set_header_digest(iscsi, ISCSI_HEADER_DIGEST_NONE_CRC32C);
	if (iscsi_full_connect_sync(iscsi, url->portal, url->lun) != 0) {
		fprintf(stderr, "iscsi_cmd: login: %s\n", iscsi_get_error(iscsi));
		goto out;
	}
	/* A bound on everything: a command the target never answers is reported, not waited
	 * for forever. */
	iscsi_set_timeout(iscsi, 120);
	if (!strcmp(op, "hold") && argc == 4) {
		printf("{\"status\": \"LOGGED_IN\"}\n");
		fflush(stdout);
		sleep((unsigned)lba);
		iscsi_logout_sync(iscsi);
		ret = 0;
		goto out;
	}
	if (!strcmp(op, "raw"))
		len = RAW_DATA_MAX;
	buf = calloc(1, (size_t)len * 2 + BLOCK);
	if (!buf)
		goto out;
	t0 = now_ns();
	if (!strcmp(op, "read") && argc == 5) {
		t = iscsi_read16_sync(iscsi, url->lun, lba, len, BLOCK, 0, 0, 0, 0, 0);
		if (t && t->status == SCSI_STATUS_GOOD && t->datain.size > 0) {
			struct chunk_hash h;
			char hex[HASH_HEX_LEN + 1];

			hash_compute(t->datain.data, (size_t)t->datain.size, &h);
			hash_to_hex(&h, hex);
			snprintf(extra, sizeof(extra), "\"sha256\": \"%s\", \"byte0\": %u", hex,
				 t->datain.data[0]);
		}
	} else if (!strcmp(op, "write") && (argc == 6 || argc == 7)) {
		memset(buf, (int)strtoul(argv[5], NULL, 0), len);
		t = iscsi_write16_sync(iscsi, url->lun, lba, buf, len, BLOCK, 0, 0,
				       argc == 7 && !strcmp(argv[6], "fua"), 0, 0);
	} else if (!strcmp(op, "caw") && argc == 7) {
		memset(buf, (int)strtoul(argv[5], NULL, 0), len);
		memset(buf + len, (int)strtoul(argv[6], NULL, 0), len);
		t = iscsi_compareandwrite_sync(iscsi, url->lun, lba, buf, len * 2, BLOCK, 0, 0, 0,
					       0, 0);
	} else if (!strcmp(op, "orwrite") && argc == 6) {
		memset(buf, (int)strtoul(argv[5], NULL, 0), len);
		t = iscsi_orwrite_sync(iscsi, url->lun, lba, buf, len, BLOCK, 0, 0, 0, 0, 0);
	} else if (!strcmp(op, "prefetch") && argc == 5) {
		t = iscsi_prefetch16_sync(iscsi, url->lun, lba, (int)blocks, 0, 0);
	} else if (!strcmp(op, "writesame") && (argc == 6 || argc == 7)) {
		memset(buf, (int)strtoul(argv[5], NULL, 0), BLOCK);
		t = iscsi_writesame16_sync(iscsi, url->lun, lba, buf, BLOCK, blocks, 0,
					   argc == 7 && !strcmp(argv[6], "unmap"), 0, 0);
	} else if (!strcmp(op, "sync") && argc == 5) {
		t = iscsi_synchronizecache16_sync(iscsi, url->lun, lba, blocks, 0, 0);
	} else if (!strcmp(op, "lbastatus") && argc == 4) {
		t = iscsi_get_lba_status_sync(iscsi, url->lun, lba, 8 + 16 * 64);
		if (t && t->status == SCSI_STATUS_GOOD) {
			struct scsi_get_lba_status *st = scsi_datain_unmarshall(t);
			size_t n = 0;

			n += (size_t)snprintf(extra + n, sizeof(extra) - n, "\"descriptors\": [");
			for (i = 0; st && i < st->num_descriptors && n < sizeof(extra) - 80; i++)
				n += (size_t)snprintf(extra + n, sizeof(extra) - n,
						      "%s[%" PRIu64 ", %u, %d]", i ? ", " : "",
						      st->descriptors[i].lba,
						      st->descriptors[i].num_blocks,
						      (int)st->descriptors[i].provisioning);
			snprintf(extra + n, sizeof(extra) - n, "]");
		}
	} else if (!strcmp(op, "unmap") && argc == 5) {
		struct unmap_list ul = {.lba = lba, .num = blocks};

		t = iscsi_unmap_sync(iscsi, url->lun, 0, 0, &ul, 1);
		residual_extra(t, extra, sizeof(extra));
	} else if (!strcmp(op, "raw") && argc == 5) {
		t = raw_cmd(iscsi, url->lun, argv[3], argv[4], buf, RAW_DATA_MAX);
		residual_extra(t, extra, sizeof(extra));
	} else if (!strcmp(op, "unmapraw") && argc == 5) {
		t = unmap_raw(iscsi, url->lun, (uint16_t)lba, argv[4], buf);
		residual_extra(t, extra, sizeof(extra));
	} else {
		iscsi_logout_sync(iscsi);
		goto usage;
	}
	if (!t) {
		fprintf(stderr, "iscsi_cmd: %s: %s\n", op, iscsi_get_error(iscsi));
		goto out;
	}
	report(t, elapsed_ms(t0), extra[0] ? extra : NULL);
	scsi_free_scsi_task(t);
	ret = 0;
	iscsi_logout_sync(iscsi);
out:
	free(buf);
	iscsi_destroy_url(url);
	iscsi_destroy_context(iscsi);
	return ret;
usage:
	fprintf(stderr, "usage: iscsi_cmd URL read|write|caw|orwrite|prefetch|sync|writesame|"
			"lbastatus|unmap LBA [BLOCKS [BYTE...]]\n"
			"       iscsi_cmd URL hold SECONDS\n"
			"       iscsi_cmd URL unmapraw PLEN HEX\n"
			"       iscsi_cmd URL raw CDBHEX none|@LEN:BYTE[+@LEN:BYTE...]\n");
	return 2;
}
