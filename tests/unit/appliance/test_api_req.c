/*
 * test_api_req.c - validation of REST API bodies (appliance/api_req.c), disk records
 * (appliance/diskrec.c), the errno -> HTTP status map, and the fetch socket's request
 * parsing (appliance/fetchsrv.c) for requests that must be refused.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "appliance/api.h"
#include "appliance/api_req.h"
#include "appliance/diskrec.h"
#include "appliance/fetchsrv.h"
#include "common/util.h"

static struct disk_request req;
static char err[512];

static int parse(const char *body)
{
	err[0] = '\0';
	return api_parse_disk_request(body, body ? strlen(body) : 0, &req, err, sizeof(err));
}

static void assert_refused(const char *body, const char *needle)
{
	assert_int_equal(parse(body), -EINVAL);
	if (!strstr(err, needle))
		fail_msg("expected '%s' in: %s", needle, err);
}

static void test_disk_request_ok(void **state)
{
	assert_int_equal(parse("{\"name\": \"vm-1.boot\", \"image\": \"debian_12\", \"size\": \"10G\","
			       " \"initiators\": [\"iqn.1994-05.com.redhat:abc\", \"eui.0123\"],"
			       " \"chap\": {\"user\": \"u1\", \"password\": \"0123456789abcdef\"}}"),
			 0);
	assert_string_equal(req.name, "vm-1.boot");
	assert_string_equal(req.image, "debian_12");
	assert_true(req.size == 10 * GiB);
	assert_int_equal(req.ninitiators, 2);
	assert_string_equal(req.initiators[1], "eui.0123");
	assert_string_equal(req.chap_user, "u1");
	assert_string_equal(req.chap_password, "0123456789abcdef");

	assert_int_equal(parse("{\"name\": \"d\", \"image\": \"deb\", \"size\": 1048576}"), 0);
	assert_true(req.size == 1048576);
	assert_int_equal(parse("{\"name\": \"d\", \"image\": \"deb\", \"initiators\": null}"), 0);
	assert_true(req.size == 0 && req.ninitiators == 0 && !req.chap_user[0]);
	/* An image id instead of a tag. */
	assert_int_equal(parse("{\"name\": \"d\", \"image\": \"dfcefbb3a18d3f3560324af81f84a0e8"
			       "081fde39165782e41ab327026ac6a589\"}"),
			 0);
}

static void test_disk_request_bad_names(void **state)
{
	assert_refused("{\"name\": \"../etc\", \"image\": \"deb\"}", "\"name\"");
	assert_refused("{\"name\": \"a/b\", \"image\": \"deb\"}", "\"name\"");
	assert_refused("{\"name\": \"..\", \"image\": \"deb\"}", "\"name\"");
	assert_refused("{\"name\": \"\", \"image\": \"deb\"}", "\"name\"");
	assert_refused("{\"name\": \"-x\", \"image\": \"deb\"}", "\"name\"");
	assert_refused("{\"name\": \"a b\", \"image\": \"deb\"}", "\"name\"");
	assert_refused("{\"name\": \"vm_01\", \"image\": \"deb\"}", "no '_'");
	assert_refused("{\"name\": 5, \"image\": \"deb\"}", "\"name\"");
	assert_refused("{\"image\": \"deb\"}", "\"name\"");
	assert_refused("{\"name\": \"d\", \"image\": \"../deb\"}", "\"image\"");
	assert_refused("{\"name\": \"d\"}", "\"image\"");
}

static void test_disk_request_bad_sizes(void **state)
{
	assert_refused("{\"name\": \"d\", \"image\": \"deb\", \"size\": \"big\"}", "\"size\"");
	assert_refused("{\"name\": \"d\", \"image\": \"deb\", \"size\": -1}", "\"size\"");
	assert_refused("{\"name\": \"d\", \"image\": \"deb\", \"size\": 0}", "\"size\"");
	assert_refused("{\"name\": \"d\", \"image\": \"deb\", \"size\": \"65T\"}", "64T");
	assert_refused("{\"name\": \"d\", \"image\": \"deb\", \"size\": 1000}", "multiple of 512");
	assert_refused("{\"name\": \"d\", \"image\": \"deb\", \"size\": 1.5}", "\"size\"");
	assert_refused("{\"name\": \"d\", \"image\": \"deb\", \"size\": true}", "\"size\"");
}

static void test_disk_request_bad_shapes(void **state)
{
	assert_refused(NULL, "JSON object");
	assert_refused("", "JSON object");
	assert_refused("[1, 2]", "JSON object");
	assert_refused("{\"name\": \"d\",", "malformed JSON");
	assert_refused("{\"name\": \"d\", \"name\": \"e\", \"image\": \"deb\"}", "malformed JSON");
	assert_refused("{\"name\": \"d\", \"image\": \"deb\", \"colour\": \"red\"}",
		       "unknown field \"colour\"");
	assert_refused("{\"name\": \"d\", \"image\": \"deb\", \"initiators\": \"iqn.x\"}",
		       "\"initiators\"");
	assert_refused("{\"name\": \"d\", \"image\": \"deb\", \"initiators\": [\"bob\"]}",
		       "\"initiators\"[0]");
	assert_refused("{\"name\": \"d\", \"image\": \"deb\", \"initiators\": [\"iqn.a,b\"]}",
		       "\"initiators\"[0]");
	assert_refused("{\"name\": \"d\", \"image\": \"deb\", \"chap\": {\"user\": \"u\"}}",
		       "chap.password");
	assert_refused("{\"name\": \"d\", \"image\": \"deb\", \"chap\": {\"user\": \"u\", "
		       "\"password\": \"short\"}}",
		       "chap.password");
	assert_refused("{\"name\": \"d\", \"image\": \"deb\", \"chap\": {\"user\": \"u,x\", "
		       "\"password\": \"0123456789abcdef\"}}",
		       "chap.user");
	assert_refused("{\"name\": \"d\", \"image\": \"deb\", \"chap\": \"u:p\"}", "\"chap\"");

	char many[4096] = "{\"name\": \"d\", \"image\": \"deb\", \"initiators\": [";
	for (int i = 0; i <= DISKREC_MAX_INITIATORS; i++) {
		char one[64];

		snprintf(one, sizeof(one), "%s\"iqn.2000-01.x:%d\"", i ? "," : "", i);
		strncat(many, one, sizeof(many) - strlen(many) - 1);
	}
	strncat(many, "]}", sizeof(many) - strlen(many) - 1);
	assert_refused(many, "at most");
}

static void test_image_request(void **state)
{
	char tag[DISKREC_NAME_MAX];

	assert_int_equal(api_parse_image_request("{\"tag\": \"deb\"}", 14, tag, sizeof(tag), err,
						 sizeof(err)),
			 0);
	assert_string_equal(tag, "deb");
	assert_int_equal(api_parse_image_request("{\"tag\": \"a/b\"}", 14, tag, sizeof(tag), err,
						 sizeof(err)),
			 -EINVAL);
	assert_non_null(strstr(err, "\"tag\""));
	assert_int_equal(api_parse_image_request("{}", 2, tag, sizeof(tag), err, sizeof(err)),
			 -EINVAL);
	assert_int_equal(api_parse_image_request("{\"tag\": \"d\", \"x\": 1}", 20, tag,
						 sizeof(tag), err, sizeof(err)),
			 -EINVAL);
	assert_non_null(strstr(err, "unknown field"));
}

/* Error messages travel in JSON, which jansson builds only from UTF-8: a long unknown
 * field is cut between characters, never inside one (the reply was dropped). */
static void test_error_messages_stay_utf8(void **state)
{
	char body[256], key[128];
	json_t *j;

	/* 63 ASCII bytes, then "e-acute" (2 bytes) across the 64-byte cut */
	memset(key, 'k', 63);
	snprintf(key + 63, sizeof(key) - 63, "\xc3\xa9tail");
	snprintf(body, sizeof(body), "{\"name\": \"d\", \"image\": \"deb\", \"%s\": 1}", key);
	assert_refused(body, "unknown field");
	assert_true(utf8_is_valid(err));
	assert_non_null(strstr(err, "kkk\""));
	/* a character that fits whole is kept */
	memset(key, 'k', 62);
	snprintf(key + 62, sizeof(key) - 62, "\xc3\xa9tail");
	snprintf(body, sizeof(body), "{\"name\": \"d\", \"image\": \"deb\", \"%s\": 1}", key);
	assert_refused(body, "k\xc3\xa9\"");

	j = api_error_json("no image '\xff\xfe' here \xc3");
	assert_non_null(j);
	assert_string_equal(json_string_value(json_object_get(j, "error")),
			    "no image '?" "?' here ?");
	json_decref(j);
	j = api_error_json("caf\xc3\xa9 ok");
	assert_string_equal(json_string_value(json_object_get(j, "error")), "caf\xc3\xa9 ok");
	json_decref(j);

	/* image references the API routes: a tag or a 64-hex id, nothing else of 64 bytes */
	memset(key, 'a', 64);
	key[64] = '\0';
	assert_true(api_image_ref_valid(key));
	memset(key, '\xff', 64);
	assert_false(api_image_ref_valid(key));
	memset(key, 'z', 64);
	key[0] = '.';
	assert_false(api_image_ref_valid(key));
	assert_true(api_image_ref_valid("deb"));
}

/* Prometheus label values: a quote or a newline in a peer's name ended the label and
 * started a sample of its own choosing. */
static void test_metrics_label_escape(void **state)
{
	char buf[64];

	metrics_label_escape("a1", buf, sizeof(buf));
	assert_string_equal(buf, "a1");
	metrics_label_escape("ev\"il\nrackdisk_up 0", buf, sizeof(buf));
	assert_string_equal(buf, "ev\\\"il\\nrackdisk_up 0");
	metrics_label_escape("back\\slash", buf, sizeof(buf));
	assert_string_equal(buf, "back\\\\slash");
	/* cut short, never inside an escape */
	metrics_label_escape("\"\"\"\"", buf, 6);
	assert_string_equal(buf, "\\\"\\\"");
}

static void test_status_map(void **state)
{
	assert_int_equal(api_status_for_errno(-EINVAL), 400);
	assert_int_equal(api_status_for_errno(-ENOENT), 404);
	assert_int_equal(api_status_for_errno(-EEXIST), 409);
	assert_int_equal(api_status_for_errno(-EBUSY), 409);
	assert_int_equal(api_status_for_errno(-EFBIG), 413);
	assert_int_equal(api_status_for_errno(-EBADMSG), 502);
	assert_int_equal(api_status_for_errno(-ENOMEM), 500);
}

static void test_diskrec_round_trip(void **state)
{
	char dir[] = "/tmp/rddiskrecXXXXXX", path[256];
	struct diskrec r = {0}, back;
	json_t *j;

	assert_non_null(mkdtemp(dir));
	snprintf(r.name, sizeof(r.name), "d1");
	snprintf(r.image_tag, sizeof(r.image_tag), "deb");
	memset(r.image_id.b, 0xab, sizeof(r.image_id.b));
	r.size = 16 * MiB;
	r.ninitiators = 1;
	snprintf(r.initiators[0], sizeof(r.initiators[0]), "iqn.2000-01.x:y");
	snprintf(r.chap_user, sizeof(r.chap_user), "u");
	snprintf(r.chap_password, sizeof(r.chap_password), "0123456789abcdef");
	r.tid = 7;
	r.lun = 1;
	r.created = 1234;
	assert_int_equal(diskrec_save(dir, &r), 0);
	assert_int_equal(diskrec_load(dir, &back, err, sizeof(err)), 0);
	assert_memory_equal(&r, &back, sizeof(r));

	/* The API form never carries the secret. */
	j = diskrec_to_json(&r, false);
	assert_null(json_object_get(j, "chap_password"));
	assert_string_equal(json_string_value(json_object_get(j, "chap_user")), "u");
	json_decref(j);

	/* A corrupt record is refused with a reason, not half-loaded: -EUCLEAN, the
	 * server's problem (the API answers 500), not a bad request's -EINVAL. */
	snprintf(path, sizeof(path), "%s/disk.json", dir);
	assert_int_equal(write_file_atomic(path, "{\"name\": \"d1\", \"tid\": 0}", 24), 0);
	assert_int_equal(diskrec_load(dir, &back, err, sizeof(err)), -EUCLEAN);
	assert_non_null(strstr(err, "disk.json is damaged: "));
	assert_int_equal(write_file_atomic(path, "{\"name\": \"../x\", \"image_id\": \"00\"}", 35),
			 0);
	assert_int_equal(diskrec_load(dir, &back, err, sizeof(err)), -EUCLEAN);
	assert_int_equal(write_file_atomic(path, "{\"name\"", 7), 0);
	assert_int_equal(diskrec_load(dir, &back, err, sizeof(err)), -EUCLEAN);
	unlink(path);
	assert_int_equal(diskrec_load(dir, &back, err, sizeof(err)), -ENOENT);
	rmdir(dir);
}

static void test_diskrec_list_skips_partial(void **state)
{
	char dir[] = "/tmp/rddisksXXXXXX", sub[256];
	struct diskrec r = {0}, *v = NULL;
	size_t n = 0;

	assert_non_null(mkdtemp(dir));
	r.size = MiB;
	r.tid = 1;
	r.lun = 1;
	/* Two complete disks, an interrupted create and a record under the wrong name. */
	const char *names[] = {"b", "a", ".new-c", "d"};
	for (int i = 0; i < 4; i++) {
		snprintf(sub, sizeof(sub), "%s/%s", dir, names[i]);
		assert_int_equal(mkdir_p(sub, 0700), 0);
		snprintf(r.name, sizeof(r.name), "%s", i == 3 ? "other" : names[i]);
		if (i == 2)
			snprintf(r.name, sizeof(r.name), "c");
		assert_int_equal(diskrec_save(sub, &r), 0);
	}
	assert_int_equal(diskrec_list(dir, &v, &n), 0);
	assert_int_equal(n, 2);
	assert_string_equal(v[0].name, "a");
	assert_string_equal(v[1].name, "b");
	free(v);
	for (int i = 0; i < 4; i++) {
		snprintf(sub, sizeof(sub), "%s/%s/disk.json", dir, names[i]);
		unlink(sub);
		snprintf(sub, sizeof(sub), "%s/%s", dir, names[i]);
		rmdir(sub);
	}
	rmdir(dir);
}

static void test_initiator_and_chap_rules(void **state)
{
	assert_true(diskrec_initiator_valid("iqn.1993-08.org.debian:01:abcdef"));
	assert_true(diskrec_initiator_valid("naa.60014050000000000000000000000001"));
	assert_false(diskrec_initiator_valid("iqn."));
	assert_false(diskrec_initiator_valid("iqn.x y"));
	assert_false(diskrec_initiator_valid("ALL"));
	assert_true(diskrec_chap_secret_valid("abcdefghijkl"));
	assert_false(diskrec_chap_secret_valid("abcdefghijk"));
	assert_false(diskrec_chap_secret_valid("abcdefghijk=l"));
	assert_false(diskrec_chap_user_valid(""));
}

static void test_fetch_socket_refuses_malformed(void **state)
{
	char sock[] = "/tmp/rdfsXXXXXX", path[128], line[512], reply[256];
	struct fetchsrv *s;
	const char *bad[] = {
		"",
		"HELLO",
		"FETCH",
		"FETCH abc 65536 1000",
		"FETCH " "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff",
		"FETCH " "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff 0 100",
		"FETCH " "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff 99999999 1",
		"FETCH " "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff 4096 -1",
		"FETCH " "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff 4096 1 x",
		"PREFETCH 0011",
		"TOUCH",
		"TOUCH zz",
	};

	assert_non_null(mkdtemp(sock));
	snprintf(path, sizeof(path), "%s/s.sock", sock);
	assert_int_equal(fetchsrv_start(path, NULL, NULL, &s), 0);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(line, sizeof(line), "%s", bad[i]);
		assert_int_equal(fetchsrv_handle_line(s, line, strlen(line), reply, sizeof(reply)),
				 -EPROTO);
		assert_int_equal(strncmp(reply, "ERR 71 ", 7), 0);
	}
	/* Well-formed requests get one line each (no fetcher here: FETCH fails cleanly). */
	snprintf(line, sizeof(line), "FETCH %064d 4096 10", 0);
	assert_int_equal(fetchsrv_handle_line(s, line, strlen(line), reply, sizeof(reply)), 0);
	assert_int_equal(strncmp(reply, "ERR ", 4), 0);
	assert_non_null(strchr(reply, '\n'));
	fetchsrv_stop(s);
	assert_int_equal(access(path, F_OK), -1);
	rmdir(sock);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_disk_request_ok),
		cmocka_unit_test(test_disk_request_bad_names),
		cmocka_unit_test(test_disk_request_bad_sizes),
		cmocka_unit_test(test_disk_request_bad_shapes),
		cmocka_unit_test(test_image_request),
		cmocka_unit_test(test_status_map),
		cmocka_unit_test(test_diskrec_round_trip),
		cmocka_unit_test(test_diskrec_list_skips_partial),
		cmocka_unit_test(test_initiator_and_chap_rules),
		cmocka_unit_test(test_fetch_socket_refuses_malformed),
		cmocka_unit_test(test_error_messages_stay_utf8),
		cmocka_unit_test(test_metrics_label_escape),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
