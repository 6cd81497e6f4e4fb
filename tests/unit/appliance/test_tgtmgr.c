/*
 * test_tgtmgr.c - parsing of tgtadm's output (target/tgtmgr.c): the target list the
 * reconcile step trusts, and the per-LUN IO counters the metrics report (the samples are
 * tgtadm 1.0.85's exact format: usr/target.c, usr/mgmt.c); the supervisor's restart
 * backoff.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "target/tgtmgr.h"

static const char *show =
	"Target 1: iqn.2026-11.io.rackdisk:d1\n"
	"    System information:\n"
	"        Driver: iscsi\n"
	"        State: ready\n"
	"    I_T nexus information:\n"
	"        I_T nexus: 3\n"
	"            Initiator: iqn.2008-11.org.linux-kvm: alias: none\n"
	"            Connection: 0\n"
	"                IP Address: 127.0.0.1\n"
	"    LUN information:\n"
	"        LUN: 0\n"
	"            Type: controller\n"
	"            Backing store type: null\n"
	"            Backing store path: None\n"
	"            Backing store flags: \n"
	"        LUN: 1\n"
	"            Type: disk\n"
	"            Size: 17 MB, Block size: 512\n"
	"            Backing store type: rackdisk\n"
	"            Backing store path: /var/lib/rackdisk/disks/d1\n"
	"            Backing store flags: \n"
	"    Account information:\n"
	"        u1\n"
	"        back (outgoing)\n"
	"    ACL information:\n"
	"        iqn.2026-01.example:host-a\n"
	"        iqn.2026-01.example:host-b\n"
	"Target 12: iqn.2001-04.com.example:other\n"
	"    System information:\n"
	"        Driver: iscsi\n"
	"        State: ready\n"
	"    I_T nexus information:\n"
	"    LUN information:\n"
	"        LUN: 0\n"
	"            Backing store path: None\n"
	"    Account information:\n"
	"    ACL information:\n";

static void test_parse_show(void **state)
{
	struct tgtmgr_target *t = NULL;
	size_t n = 0;

	assert_int_equal(tgtmgr_parse_show(show, &t, &n, NULL, 0), 0);
	assert_int_equal(n, 2);
	assert_int_equal(t[0].tid, 1);
	assert_string_equal(t[0].name, "iqn.2026-11.io.rackdisk:d1");
	assert_string_equal(t[0].backing, "/var/lib/rackdisk/disks/d1");
	assert_int_equal(t[0].nsessions, 1);
	/* access: the incoming account, and the ACL (reconcile compares them to the record) */
	assert_int_equal(t[0].naccounts, 1);
	assert_string_equal(t[0].account, "u1");
	assert_int_equal(t[0].nacl, 2);
	assert_string_equal(t[0].acl[0], "iqn.2026-01.example:host-a");
	assert_string_equal(t[0].acl[1], "iqn.2026-01.example:host-b");
	assert_int_equal(t[1].tid, 12);
	assert_string_equal(t[1].name, "iqn.2001-04.com.example:other");
	assert_string_equal(t[1].backing, "");
	assert_int_equal(t[1].nsessions, 0);
	assert_int_equal(t[1].naccounts, 0);
	assert_int_equal(t[1].nacl, 0);
	free(t);
}

static void test_parse_show_empty_and_garbage(void **state)
{
	struct tgtmgr_target *t = NULL;
	size_t n = 7;

	assert_int_equal(tgtmgr_parse_show("", &t, &n, NULL, 0), 0);
	assert_int_equal(n, 0);
	free(t);
	assert_int_equal(tgtmgr_parse_show("Target x\n", &t, &n, NULL, 0), -EINVAL);
}

/* The first target of `show` with text in place of its session's alias. */
static char *with_alias(const char *alias)
{
	const char *at = strstr(show, "alias: none\n");
	size_t pre = (size_t)(at - show) + 7, len = strlen(show) + strlen(alias) + 1;
	char *t = malloc(len);

	assert_non_null(at);
	assert_non_null(t);
	snprintf(t, len, "%.*s%s%s", (int)pre, show, alias, at + 11);
	return t;
}

/*
 * tgtd prints an initiator's name and alias as they came: an alias with line breaks adds
 * lines to the listing. Each injection below used to be taken as real: a fake "Target 12"
 * naming d1's path (the reconcile removed the real target 12 as stale or mismatched), a
 * second "LUN: 1" for target 1 with another path, a target with no ACL section. Every one
 * is refused now, with a reason; an alias without line breaks is just text.
 */
static void test_parse_show_refuses_lines_an_initiator_injected(void **state)
{
	static const char *const bad[] = {
		/* a whole fake target with a tid that exists further down */
		"x\n            Connection: 0\n                IP Address: 10.0.0.9\n"
		"    LUN information:\n    Account information:\n    ACL information:\n"
		"        ALL\n"
		"Target 12: iqn.2026-11.io.rackdisk:fake\n    System information:\n"
		"        Driver: iscsi\n        State: ready\n    I_T nexus information:\n"
		"        I_T nexus: 9\n            Initiator: y alias: z",
		/* the same, with a fresh tid but the name of the target further down */
		"x\n            Connection: 0\n                IP Address: 10.0.0.9\n"
		"    LUN information:\n    Account information:\n    ACL information:\n"
		"Target 77: iqn.2001-04.com.example:other\n    System information:\n"
		"        Driver: iscsi\n        State: ready\n    I_T nexus information:\n"
		"        I_T nexus: 9\n            Initiator: y alias: z",
		/* the LUN section started early: the session's real lines land in it */
		"x\n    LUN information:\n        LUN: 1\n"
		"            Backing store path: /var/lib/rackdisk/disks/d2",
		/* a target line alone: target 1 ends without its sections */
		"x\nTarget 5: iqn.2026-11.io.rackdisk:d5",
		/* a line at no indent tgt uses in that section */
		"x\n      Backing store path: /x",
		/* a Connection line that is not one */
		"x\n            Connection: 0    LUN information:",
	};
	struct tgtmgr_target *t = NULL;
	char why[256];
	size_t n = 0;

	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		char *text = with_alias(bad[i]);

		why[0] = '\0';
		assert_int_equal(tgtmgr_parse_show(text, &t, &n, why, sizeof(why)), -EINVAL);
		assert_true(why[0] != '\0');
		free(text);
	}
	/* a second "LUN: 1" in one target, and a LUN field twice in one LUN */
	{
		char *text = with_alias("none");
		char *l1 = strstr(text, "        LUN: 1\n");
		char *dup = malloc(strlen(text) + 64);

		assert_non_null(l1);
		assert_int_equal(tgtmgr_parse_show(text, &t, &n, NULL, 0), 0);
		free(t);
		sprintf(dup, "%.*s        LUN: 1\n%s", (int)(l1 - text), text, l1);
		assert_int_equal(tgtmgr_parse_show(dup, &t, &n, NULL, 0), -EINVAL);
		sprintf(dup, "%.*s            Type: disk\n%s", (int)(l1 - text + 15), text,
			l1 + 15);
		assert_int_equal(tgtmgr_parse_show(dup, &t, &n, NULL, 0), -EINVAL);
		free(dup);
		free(text);
	}
	/* an alias that is only odd text parses, as tgt prints it */
	{
		char *text = with_alias("Target 12: LUN: 1 (outgoing) ACL information:");

		assert_int_equal(tgtmgr_parse_show(text, &t, &n, NULL, 0), 0);
		assert_int_equal(n, 2);
		assert_int_equal(t[0].nsessions, 1);
		assert_string_equal(t[1].name, "iqn.2001-04.com.example:other");
		free(t);
		free(text);
	}
}

static void test_parse_stat_sums_sessions(void **state)
{
	const char *stat =
		"tgt lun sid rd_subm(bytes,cmds) rd_done(bytes,cmds) wr_subm(bytes,cmds) "
		"wr_done(bytes,cmds) errs\n"
		"  1   0   3            0      0            0      0            0      0 "
		"           0      0    0\n"
		"  1   1   3      1048576    256      1048576    256         4096      1 "
		"        4096      1    0\n"
		"  1   1   4       524288    128       524288    127            0      0 "
		"           0      0    2\n"
		"  2   1   5          512      1          512      1            0      0 "
		"           0      0    0\n";
	struct tgtmgr_lun_stats st;

	assert_int_equal(tgtmgr_parse_stat(stat, 1, 1, &st), 0);
	assert_true(st.read_bytes == 1572864);
	assert_true(st.read_ops == 383);
	assert_true(st.write_bytes == 4096);
	assert_true(st.write_ops == 1);
	assert_true(st.errors == 2);
	assert_int_equal(tgtmgr_parse_stat(stat, 1, 5, &st), 0);
	assert_true(st.read_bytes == 0 && st.read_ops == 0);
	assert_int_equal(tgtmgr_parse_stat(stat, 2, 1, &st), 0);
	assert_true(st.read_bytes == 512 && st.read_ops == 1);
	assert_int_equal(tgtmgr_parse_stat(stat, -1, 1, &st), 0);
	assert_true(st.read_bytes == 1573376);
}

/* After a run of over a minute the backoff starts over at 1 s. The supervisor computes it
 * before it logs "restarting in N ms" (it logged the grown delay, then waited 1 s). */
static void test_restart_delay(void **state)
{
	assert_int_equal(tgtmgr_restart_delay(1000, 10), 1000);
	assert_int_equal(tgtmgr_restart_delay(8000, 5000), 8000);
	assert_int_equal(tgtmgr_restart_delay(30000, 60000), 30000);
	assert_int_equal(tgtmgr_restart_delay(30000, 60001), 1000);
	assert_int_equal(tgtmgr_restart_delay(8000, 3600000), 1000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_show),
		cmocka_unit_test(test_parse_show_empty_and_garbage),
		cmocka_unit_test(test_parse_show_refuses_lines_an_initiator_injected),
		cmocka_unit_test(test_parse_stat_sums_sessions),
		cmocka_unit_test(test_restart_delay),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
