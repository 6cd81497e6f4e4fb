/*
 * test_repoloc.c - the one reading of a repository location (images/repoloc.h): every
 * spelling the CLI, the seed client and the config accept means the same place, and other
 * schemes are refused instead of becoming a relative directory named after them.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "images/repoloc.h"

static void expect(const char *loc, int ret, bool http, const char *where)
{
	struct repoloc l;
	char err[256];

	int got;

	memset(err, 'X', sizeof(err));
	got = repoloc_parse(loc, &l, err, sizeof(err));
	if (got != ret)
		print_message("%s: %d, not %d\n", loc, got, ret);
	assert_int_equal(got, ret);
	if (ret) {
		assert_null(l.where);
		assert_true(strlen(err) > 10 && strlen(err) < sizeof(err));
		return;
	}
	assert_string_equal(err, "");
	assert_int_equal(l.http, http);
	assert_string_equal(l.where, where);
	repoloc_free(&l);
}

static void test_directories_and_file_urls(void **state)
{
	expect("/srv/repo", 0, false, "/srv/repo");
	expect("/srv/repo//", 0, false, "/srv/repo");
	expect("repo", 0, false, "repo");
	expect("file:repo", 0, false, "file:repo"); /* no "//": a directory named so */
	expect("./a://b", 0, false, "./a://b");	    /* a scheme only starts the string */
	expect("file:///srv/repo", 0, false, "/srv/repo");
	expect("file://localhost/srv/repo/", 0, false, "/srv/repo");
	expect("FILE://LOCALHOST/srv/repo", 0, false, "/srv/repo");
	expect("file:///", 0, false, "/");
	/* RFC 8089: the path is percent-decoded; a plain directory is taken as written */
	expect("file:///srv/a%20b", 0, false, "/srv/a b");
	expect("file://localhost/srv/%41%2a%25/", 0, false, "/srv/A*%");
	expect("/srv/a%20b", 0, false, "/srv/a%20b");
}

static void test_http_urls(void **state)
{
	expect("http://seed.example/repo/", 0, true, "http://seed.example/repo");
	expect("https://seed.example:8443/r", 0, true, "https://seed.example:8443/r");
	expect("HTTPS://seed.example/r", 0, true, "HTTPS://seed.example/r");
	expect("http://u:p@[::1]:8080/r/", 0, true, "http://u:p@[::1]:8080/r");
}

static void test_other_spellings_are_refused(void **state)
{
	struct repoloc l;
	char err[256];

	expect("", -EINVAL, false, NULL);
	expect("file://", -EINVAL, false, NULL);
	expect("file://relative/path", -EINVAL, false, NULL); /* host "relative" */
	expect("file://otherhost/srv/repo", -EINVAL, false, NULL);
	expect("s3://bucket/repo", -EPROTONOSUPPORT, false, NULL);
	expect("ftp://example/repo", -EPROTONOSUPPORT, false, NULL);
	expect("git+ssh://example/repo", -EPROTONOSUPPORT, false, NULL);
	/* a file: URL's query or fragment, or an escape naming no path, is not a directory */
	expect("file:///x/?y", -EINVAL, false, NULL);
	expect("file:///x#y", -EINVAL, false, NULL);
	expect("file:///x%00y", -EINVAL, false, NULL);
	expect("file:///x%2Fy", -EINVAL, false, NULL);
	expect("file:///x%2fy", -EINVAL, false, NULL);
	expect("file:///x%", -EINVAL, false, NULL);
	expect("file:///x%4", -EINVAL, false, NULL);
	expect("file:///x%g0", -EINVAL, false, NULL);
	/* an http(s) URL without a host (was trimmed to "http:") */
	expect("http://", -EINVAL, false, NULL);
	expect("https:///repo", -EINVAL, false, NULL);
	expect("http://user:pw@/repo", -EINVAL, false, NULL);
	expect("http://:8080/repo", -EINVAL, false, NULL);
	expect("http://?x", -EINVAL, false, NULL);
	assert_int_equal(repoloc_parse("s3://bucket/repo", &l, err, sizeof(err)), -EPROTONOSUPPORT);
	assert_non_null(strstr(err, "unsupported repository scheme 's3'"));
	assert_int_equal(repoloc_parse(NULL, &l, NULL, 0), -EINVAL);
}

/* A URL as messages show it: never the user:password@ of basic authentication. */
static void test_shown_urls_leave_out_credentials(void **state)
{
	char buf[64];

	assert_string_equal(REPOLOC_SHOWN("http://user:s3cret@seed.example:80/r"),
			    "http://seed.example:80/r");
	assert_string_equal(REPOLOC_SHOWN("HTTPS://u@seed.example"), "HTTPS://seed.example");
	/* the last '@' of the authority ends the userinfo; one in the path is the path's */
	assert_string_equal(REPOLOC_SHOWN("http://a@b:p@w@h/x@y?q=@#@"), "http://h/x@y?q=@#@");
	assert_string_equal(REPOLOC_SHOWN("http://h/u:p@x"), "http://h/u:p@x");
	assert_string_equal(REPOLOC_SHOWN("ftp://u:p@h/r"), "ftp://h/r");
	assert_string_equal(REPOLOC_SHOWN("/srv/a@b"), "/srv/a@b");
	assert_string_equal(REPOLOC_SHOWN("file:///srv/a:b@c"), "file:///srv/a:b@c");
	assert_string_equal(REPOLOC_SHOWN(""), "");
	assert_string_equal(repoloc_shown("http://u:p@host.example/long", buf, 12), "http://host");
	assert_string_equal(repoloc_shown(NULL, buf, sizeof(buf)), "");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_directories_and_file_urls),
		cmocka_unit_test(test_http_urls),
		cmocka_unit_test(test_other_spellings_are_refused),
		cmocka_unit_test(test_shown_urls_leave_out_credentials),
	};

	return cmocka_run_group_tests_name("repoloc", tests, NULL, NULL);
}
