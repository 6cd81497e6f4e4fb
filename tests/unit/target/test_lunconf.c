/*
 * test_lunconf.c - lun.json parsing: every field checked, defaults applied, bad input
 * refused with a reason.
 */
#include <errno.h>
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

#define ID "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff"

static int parse(const char *text, struct lun_config *c, char *err, size_t errlen)
{
	return lun_config_parse(text, strlen(text), c, err, errlen);
}

static void test_full(void **state)
{
	const char *t = "{\"format\":1,\"name\":\"vm1\",\"image_id\":\"" ID "\","
			"\"manifest\":\"/s/m.json\",\"chunk_dir\":\"/s/cache\","
			"\"socket\":\"/run/rd.sock\",\"io_timeout_ms\":1500,\"direct_io\":true}";
	struct lun_config c;
	char hex[HASH_HEX_LEN + 1];

	assert_int_equal(parse(t, &c, NULL, 0), 0);
	assert_string_equal(c.name, "vm1");
	hash_to_hex(&c.image_id, hex);
	assert_string_equal(hex, ID);
	assert_string_equal(c.manifest, "/s/m.json");
	assert_string_equal(c.chunk_dir, "/s/cache");
	assert_string_equal(c.socket, "/run/rd.sock");
	assert_int_equal(c.io_timeout_ms, 1500);
	assert_true(c.direct_io);
	lun_config_free(&c);
}

static void test_defaults(void **state)
{
	const char *t = "{\"format\":1,\"name\":\"vm1\",\"image_id\":\"" ID "\","
			"\"manifest\":\"/s/m.json\",\"chunk_dir\":\"/s/cache\"}";
	struct lun_config c;

	assert_int_equal(parse(t, &c, NULL, 0), 0);
	assert_null(c.socket);
	assert_int_equal(c.io_timeout_ms, LUN_IO_TIMEOUT_DEFAULT_MS);
	assert_false(c.direct_io);
	lun_config_free(&c);
}

static void test_bad(void **state)
{
	static const struct {
		const char *text;
		int err;
		const char *reason;
	} cases[] = {
		{"", -EINVAL, "line"},
		{"[]", -EINVAL, "object"},
		{"{\"format\":2}", -EPROTONOSUPPORT, "format 2"},
		{"{\"format\":1,\"name\":\"../x\"}", -EINVAL, "name"},
		{"{\"format\":1,\"name\":\"a\",\"image_id\":\"abc\"}", -EINVAL, "image_id"},
		{"{\"format\":1,\"name\":\"a\",\"image_id\":\"" ID "\",\"manifest\":\"rel\"}",
		 -EINVAL, "manifest"},
		{"{\"format\":1,\"name\":\"a\",\"image_id\":\"" ID "\",\"manifest\":\"/m\"}",
		 -EINVAL, "chunk_dir"},
		{"{\"format\":1,\"name\":\"a\",\"image_id\":\"" ID "\",\"manifest\":\"/m\","
		 "\"chunk_dir\":\"/c\",\"io_timeout_ms\":0}", -EINVAL, "io_timeout_ms"},
		{"{\"format\":1,\"name\":\"a\",\"image_id\":\"" ID "\",\"manifest\":\"/m\","
		 "\"chunk_dir\":\"/c\",\"direct_io\":1}", -EINVAL, "direct_io"},
		{"{\"format\":1,\"format\":1}", -EINVAL, "duplicate"},
	};
	struct lun_config c;
	char err[256];
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		err[0] = '\0';
		assert_int_equal(parse(cases[i].text, &c, err, sizeof(err)), cases[i].err);
		if (!strstr(err, cases[i].reason))
			fail_msg("case %zu: reason \"%s\" lacks \"%s\"", i, err, cases[i].reason);
		assert_null(c.name);
	}
}

static void test_load(void **state)
{
	char dir[] = "/tmp/test_lunconf.XXXXXX", path[256], err[256];
	const char *t = "{\"format\":1,\"name\":\"vm1\",\"image_id\":\"" ID "\","
			"\"manifest\":\"/s/m.json\",\"chunk_dir\":\"/s/cache\"}";
	struct lun_config c;

	assert_non_null(mkdtemp(dir));
	assert_int_equal(lun_config_load(dir, &c, err, sizeof(err)), -ENOENT);
	assert_non_null(strstr(err, "lun.json"));
	snprintf(path, sizeof(path), "%s/lun.json", dir);
	assert_int_equal(write_file_atomic(path, t, strlen(t)), 0);
	assert_int_equal(lun_config_load(dir, &c, err, sizeof(err)), 0);
	assert_string_equal(c.name, "vm1");
	lun_config_free(&c);
	unlink(path);
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_full),
		cmocka_unit_test(test_defaults),
		cmocka_unit_test(test_bad),
		cmocka_unit_test(test_load),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
