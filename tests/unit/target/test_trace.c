/*
 * test_trace.c - the read trace (target/trace.h) and lun.json's "trace" key: the header,
 * one line per successful read with times relative to the first read's arrival, the file
 * sorted by arrival after close however the reads completed, failed reads left out, and
 * bad "trace" values refused.
 */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "common/util.h"
#include "target/lunconf.h"
#include "target/trace.h"

#define ID "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

struct line {
	uint64_t seq, start, end, off, len;
};

static char *tmp_path(void)
{
	static char path[64];
	int fd;

	snprintf(path, sizeof(path), "/tmp/test_trace.XXXXXX");
	fd = mkstemp(path);
	assert_true(fd >= 0);
	close(fd);
	return path;
}

static void open_trace(const char *path, uint64_t size, struct trace **t)
{
	struct chunk_hash id;

	assert_int_equal(hash_from_hex(ID, HASH_HEX_LEN, &id), 0);
	assert_int_equal(trace_open(path, &id, size, t), 0);
}

/* Reads the file: checks the two header lines, returns the data lines. */
static size_t read_trace(const char *path, uint64_t size, struct line *out, size_t max,
			 uint64_t *dropped)
{
	char want[256], *buf, *p, *nl;
	size_t len, n = 0;

	assert_int_equal(read_file(path, 1 << 20, &buf, &len), 0);
	snprintf(want, sizeof(want), "# rackdisk-trace 1\n# image %s size %" PRIu64 "\n", ID,
		 size);
	assert_memory_equal(buf, want, strlen(want));
	*dropped = 0;
	for (p = buf + strlen(want); *p; p = nl + 1) {
		nl = strchr(p, '\n');
		assert_non_null(nl);
		if (sscanf(p, "# dropped %" SCNu64, dropped) == 1)
			continue;
		assert_true(n < max);
		assert_int_equal(sscanf(p, "%" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64 " %" SCNu64,
					&out[n].seq, &out[n].start, &out[n].end, &out[n].off,
					&out[n].len), 5);
		n++;
	}
	free(buf);
	return n;
}

static void test_header_only(void **state)
{
	char *path = tmp_path();
	struct line l[1];
	struct trace *t;
	uint64_t dropped;

	open_trace(path, 12345, &t);
	assert_int_equal(trace_close(t), 0);
	assert_int_equal(read_trace(path, 12345, l, 1, &dropped), 0);
	assert_int_equal(dropped, 0);
	unlink(path);
}

/* Three reads arrive at 1000, 1500 and 4000 us (absolute clock); they complete in the
 * order c, a, b; b fails and is retried as d. The trace counts time from a's arrival. */
static void test_sorted_relative_times(void **state)
{
	char *path = tmp_path();
	int a, b, c, d;
	struct line l[8];
	struct trace *t;
	uint64_t dropped;
	uint64_t base = 7000000000ull;

	open_trace(path, 1 << 20, &t);
	trace_begin(t, &a, base + 1000000);
	trace_begin(t, &b, base + 1500000);
	trace_begin(t, &c, base + 4000000);
	trace_end(t, &c, base + 4100000, 65536, 4096, 1);
	trace_end(t, &a, base + 5000000, 0, 512, 1);
	trace_end(t, &b, base + 6000000, 8192, 8192, 0);
	trace_begin(t, &d, base + 6000500);
	trace_end(t, &d, base + 6002500, 8192, 8192, 1);
	assert_int_equal(trace_count(t), 3);

	/* Before close the lines are in completion order. */
	assert_int_equal(read_trace(path, 1 << 20, l, 8, &dropped), 3);
	assert_int_equal(l[0].seq, 2);
	assert_int_equal(l[1].seq, 0);

	assert_int_equal(trace_close(t), 0);
	assert_int_equal(read_trace(path, 1 << 20, l, 8, &dropped), 3);
	assert_int_equal(dropped, 0);
	/* a */
	assert_int_equal(l[0].seq, 0);
	assert_int_equal(l[0].start, 0);
	assert_int_equal(l[0].end, 4000);
	assert_int_equal(l[0].off, 0);
	assert_int_equal(l[0].len, 512);
	/* c */
	assert_int_equal(l[1].seq, 2);
	assert_int_equal(l[1].start, 3000);
	assert_int_equal(l[1].end, 3100);
	assert_int_equal(l[1].off, 65536);
	assert_int_equal(l[1].len, 4096);
	/* d, the retry of the failed b (seq 1, not recorded) */
	assert_int_equal(l[2].seq, 3);
	assert_int_equal(l[2].start, 5000);
	assert_int_equal(l[2].end, 5002);
	assert_int_equal(l[2].off, 8192);
	assert_int_equal(l[2].len, 8192);
	unlink(path);
}

/* Many reads in flight at once, ended in reverse order: the in-flight table must find
 * each one (keys colliding in the table included), and the file comes out sorted. */
static void test_many_in_flight(void **state)
{
	enum { N = 3000 };
	char *path = tmp_path();
	static char keys[N];
	static struct line l[N];
	struct trace *t;
	uint64_t dropped;
	int i;

	open_trace(path, 1ull << 40, &t);
	for (i = 0; i < N; i++)
		trace_begin(t, &keys[i], 1000ull * i);
	for (i = N - 1; i >= 0; i -= 2)
		trace_end(t, &keys[i], 1000ull * (N + i), (uint64_t)i << 20, 4096, 1);
	for (i = N - 2; i >= 0; i -= 2)
		trace_end(t, &keys[i], 1000ull * (N + i), (uint64_t)i << 20, 4096, 1);
	assert_int_equal(trace_close(t), 0);
	assert_int_equal(read_trace(path, 1ull << 40, l, N, &dropped), N);
	assert_int_equal(dropped, 0);
	for (i = 0; i < N; i++) {
		assert_int_equal(l[i].seq, i);
		assert_int_equal(l[i].start, i);
		assert_int_equal(l[i].end, N + i);
		assert_int_equal(l[i].off, (uint64_t)i << 20);
	}
	unlink(path);
}

/* More reads in flight than the table holds: the excess is counted, never mis-timed. */
static void test_table_full_counts_dropped(void **state)
{
	enum { N = TRACE_INFLIGHT + 5 };
	char *path = tmp_path();
	static char keys[N];
	static struct line l[N];
	struct trace *t;
	uint64_t dropped;
	int i;

	open_trace(path, 1 << 30, &t);
	for (i = 0; i < N; i++)
		trace_begin(t, &keys[i], 1000ull * i);
	for (i = 0; i < N; i++)
		trace_end(t, &keys[i], 1000ull * (N + i), 0, 512, 1);
	assert_int_equal(trace_close(t), 0);
	assert_int_equal(read_trace(path, 1 << 30, l, N, &dropped), TRACE_INFLIGHT);
	assert_int_equal(dropped, 5);
	for (i = 0; i < TRACE_INFLIGHT; i++)
		assert_int_equal(l[i].start, i);
	unlink(path);
}

static void test_open_fails_in_missing_dir(void **state)
{
	struct chunk_hash id;
	struct trace *t = (struct trace *)&id;

	assert_int_equal(hash_from_hex(ID, HASH_HEX_LEN, &id), 0);
	assert_int_equal(trace_open("/nonexistent-dir-rackdisk/x.trace", &id, 1, &t), -ENOENT);
	assert_null(t);
	assert_int_equal(trace_close(NULL), 0);
}

#define LUN_JSON(extra) "{\"format\":1,\"name\":\"vm1\",\"image_id\":\"" ID "\"," \
		"\"manifest\":\"/s/m.json\",\"chunk_dir\":\"/s/cache\"" extra "}"

static int parse(const char *text, struct lun_config *c, char *err, size_t errlen)
{
	return lun_config_parse(text, strlen(text), c, err, errlen);
}

static void test_lunconf_trace_key(void **state)
{
	static const char *bad[] = {
		LUN_JSON(",\"trace\":\"relative/x.trace\""),
		LUN_JSON(",\"trace\":\"/tmp/traces/\""),
		LUN_JSON(",\"trace\":42"),
		LUN_JSON(",\"trace\":\"\""),
	};
	struct lun_config c;
	char err[256];
	size_t i;

	assert_int_equal(parse(LUN_JSON(""), &c, NULL, 0), 0);
	assert_null(c.trace);
	lun_config_free(&c);
	assert_int_equal(parse(LUN_JSON(",\"trace\":null"), &c, NULL, 0), 0);
	assert_null(c.trace);
	lun_config_free(&c);
	assert_int_equal(parse(LUN_JSON(",\"trace\":\"/tmp/t/vm1.trace\""), &c, NULL, 0), 0);
	assert_string_equal(c.trace, "/tmp/t/vm1.trace");
	lun_config_free(&c);
	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		err[0] = '\0';
		assert_int_equal(parse(bad[i], &c, err, sizeof(err)), -EINVAL);
		assert_non_null(strstr(err, "\"trace\""));
		assert_null(c.trace);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_header_only),
		cmocka_unit_test(test_sorted_relative_times),
		cmocka_unit_test(test_many_in_flight),
		cmocka_unit_test(test_table_full_counts_dropped),
		cmocka_unit_test(test_open_fails_in_missing_dir),
		cmocka_unit_test(test_lunconf_trace_key),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
