/*
 * test_config.c - rackdiskd's INI configuration: defaults, every key, and every kind of
 * bad file giving a one-line error that names the file and line.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "appliance/config.h"
#include "common/util.h"

#define MINIMAL "[node]\nname = a1\n[seed]\nurl = http://seed.example/repo\n"

static struct config cfg;
static char err[1024];

static int load(const char *text)
{
	err[0] = '\0';
	return config_load_string("t.conf", text, &cfg, err, sizeof(err));
}

/* A bad file: -EINVAL, and the message names the file (and line when given) and
 * contains needle. */
static void assert_bad(const char *text, int line, const char *needle)
{
	char where[64];

	assert_int_equal(load(text), -EINVAL);
	if (line > 0)
		snprintf(where, sizeof(where), "t.conf:%d: ", line);
	else
		snprintf(where, sizeof(where), "t.conf: ");
	if (strncmp(err, where, strlen(where)))
		fail_msg("expected '%s' prefix in: %s", where, err);
	if (!strstr(err, needle))
		fail_msg("expected '%s' in: %s", needle, err);
	assert_null(strchr(err, '\n'));
}

static void test_minimal_gets_defaults(void **state)
{
	assert_int_equal(load(MINIMAL), 0);
	assert_string_equal(cfg.node_name, "a1");
	assert_string_equal(cfg.rack, "default");
	assert_string_equal(cfg.state_dir, "/var/lib/rackdisk");
	assert_string_equal(cfg.cache_dir, "/var/lib/rackdisk/cache");
	assert_true(cfg.cache_size == 64 * GiB);
	assert_string_equal(cfg.seed_url, "http://seed.example/repo");
	assert_int_equal(cfg.seed_workers, 8);
	assert_string_equal(cfg.redis, "");
	assert_string_equal(cfg.cluster_listen.host, "0.0.0.0");
	assert_int_equal(cfg.cluster_listen.port, 7480);
	assert_string_equal(cfg.portal.host, "0.0.0.0");
	assert_int_equal(cfg.portal.port, 3260);
	assert_true(cfg.tgtd_spawn);
	assert_int_equal(cfg.control_port, 0);
	assert_string_equal(cfg.iqn_prefix, "iqn.2026-11.io.rackdisk");
	assert_true(cfg.io_timeout_ms == 30000);
	assert_string_equal(cfg.ipc_socket, "/var/lib/rackdisk/tgtd.ipc");
	assert_string_equal(cfg.api_listen.host, "127.0.0.1");
	assert_int_equal(cfg.api_listen.port, 7470);
	assert_int_equal(cfg.log_level, LOG_LVL_INFO);
}

static void test_design_example_parses(void **state)
{
	/* DESIGN.md section 8's minimal file, inline comments included. */
	const char *text =
		"[node]\nname = a1                       ; unique in the cluster\nrack = r1\n"
		"state_dir = /var/lib/rackdisk   ; disk records and overlays\n\n"
		"[cache]\ndir = /var/lib/rackdisk/cache\nsize = 64G\n\n"
		"[seed]\nurl = http://seed.example/repo  ; the published repository\n\n"
		"[cluster]\nredis = redis://127.0.0.1:6379/0  ; empty: standalone, seed only\n"
		"listen = 0.0.0.0:7480             ; peer chunk server\n"
		"advertise = 10.0.0.5:7480\ntoken_file = /etc/rackdisk/cluster.token\n\n"
		"[iscsi]\nportal = 0.0.0.0:3260\ntgtd = spawn                    ; spawn\n"
		"control_port = 0                ; tgtd management port (tgtadm -C)\n"
		"iqn_prefix = iqn.2026-11.io.rackdisk\n\n[api]\nlisten = 127.0.0.1:7470\n";

	assert_int_equal(load(text), 0);
	assert_string_equal(cfg.rack, "r1");
	assert_string_equal(cfg.redis, "redis://127.0.0.1:6379/0");
	assert_string_equal(cfg.cluster_advertise.host, "10.0.0.5");
	assert_int_equal(cfg.cluster_advertise.port, 7480);
	assert_string_equal(cfg.token_file, "/etc/rackdisk/cluster.token");
	assert_string_equal(cfg.seed_url, "http://seed.example/repo");
}

static void test_every_key_is_applied(void **state)
{
	const char *text =
		"[node]\nname = n-2\nrack = rack.7\nstate_dir = /srv/rd\nlog_level = debug\n"
		"[cache]\ndir = /ssd/cache\nsize = 1.5G\nverify_on_open = yes\ndirect_io = on\n"
		"[seed]\nurl = file:///repo\nworkers = 3\nretry_initial_ms = 5\n"
		"retry_max_ms = 50\nrequest_timeout_ms = 1000\nreadahead = 0\n"
		"[cluster]\nredis =\nlisten = [::1]:9000\nadvertise =\ntoken_file =\nreadahead = 32\n"
		"[iscsi]\nportal = 127.0.0.1:13260\ntgtd = external\ncontrol_port = 32767\n"
		"iqn_prefix = iqn.2001-04.com.example:rack\nio_timeout_ms = 2500\n"
		"advertise = storage.example\ntgtd_path = /opt/tgtd\ntgtadm_path = /opt/tgtadm\n"
		"ipc_socket = /run/tgt.sock\ndirect_io = true\n"
		"[api]\nlisten = 0.0.0.0:8080\nmax_body = 1M\n";

	assert_int_equal(load(text), 0);
	assert_string_equal(cfg.node_name, "n-2");
	assert_string_equal(cfg.rack, "rack.7");
	assert_string_equal(cfg.state_dir, "/srv/rd");
	assert_int_equal(cfg.log_level, LOG_LVL_DEBUG);
	assert_string_equal(cfg.cache_dir, "/ssd/cache");
	assert_true(cfg.cache_size == 3 * GiB / 2);
	assert_true(cfg.cache_verify_on_open && cfg.cache_direct_io);
	assert_string_equal(cfg.seed_url, "file:///repo");
	assert_int_equal(cfg.seed_workers, 3);
	assert_true(cfg.seed_retry_initial_ms == 5 && cfg.seed_retry_max_ms == 50);
	assert_true(cfg.seed_request_timeout_ms == 1000);
	assert_int_equal(cfg.seed_readahead, 0);
	assert_int_equal(cfg.cluster_readahead, 32);
	assert_string_equal(cfg.cluster_listen.host, "::1");
	assert_int_equal(cfg.cluster_listen.port, 9000);
	assert_string_equal(cfg.cluster_advertise.host, "");
	assert_false(cfg.tgtd_spawn);
	assert_int_equal(cfg.control_port, 32767);
	assert_string_equal(cfg.iqn_prefix, "iqn.2001-04.com.example:rack");
	assert_true(cfg.io_timeout_ms == 2500);
	assert_string_equal(cfg.iscsi_advertise, "storage.example");
	assert_string_equal(cfg.tgtd_path, "/opt/tgtd");
	assert_string_equal(cfg.tgtadm_path, "/opt/tgtadm");
	assert_string_equal(cfg.ipc_socket, "/run/tgt.sock");
	assert_true(cfg.direct_io);
	assert_int_equal(cfg.api_listen.port, 8080);
	assert_true(cfg.api_max_body == MiB);
}

#define CLUSTER MINIMAL "[cluster]\nredis = redis://127.0.0.1:6379/0\ntoken_file = /etc/t\n"

static void test_cluster_defaults(void **state)
{
	assert_int_equal(load(MINIMAL), 0);
	assert_string_equal(cfg.cluster_prefix, "rackdisk:");
	assert_int_equal(cfg.lease_wait_ms, 10000);
	assert_int_equal(cfg.lease_ttl_ms, 3000);
	assert_int_equal(cfg.heartbeat_ttl_ms, 10000);
	assert_int_equal(cfg.peer_timeout_ms, 5000);
	assert_int_equal(cfg.cluster_readahead, 16);
	/* standalone: nothing is derived, a wildcard listen is fine */
	assert_string_equal(cfg.cluster_advertise.host, "");
}

static void test_cluster_keys_applied(void **state)
{
	assert_int_equal(load(CLUSTER "listen = 10.1.2.3:7481\nprefix = rd:test:\n"
				      "lease_wait_ms = 1\nlease_ttl_ms = 300\n"
				      "heartbeat_ttl_ms = 1000\npeer_timeout_ms = 750\n"
				      "[node]\nrack = r9\n"),
			 0);
	assert_string_equal(cfg.redis, "redis://127.0.0.1:6379/0");
	assert_string_equal(cfg.token_file, "/etc/t");
	assert_string_equal(cfg.cluster_prefix, "rd:test:");
	assert_int_equal(cfg.lease_wait_ms, 1);
	assert_int_equal(cfg.lease_ttl_ms, 300);
	assert_int_equal(cfg.heartbeat_ttl_ms, 1000);
	assert_int_equal(cfg.peer_timeout_ms, 750);
	assert_string_equal(cfg.rack, "r9");
	assert_int_equal(load(MINIMAL "[cluster]\nredis = redis://[::1]:6380/2\n"
				      "token_file = /etc/t\nlisten = 10.1.2.3:7481\n"),
			 0);
	assert_string_equal(cfg.redis, "redis://[::1]:6380/2");
}

static void test_cluster_advertise_derived(void **state)
{
	/* a specific listen address is what peers dial */
	assert_int_equal(load(CLUSTER "listen = 127.0.0.1:17480\n"), 0);
	assert_string_equal(cfg.cluster_advertise.host, "127.0.0.1");
	assert_int_equal(cfg.cluster_advertise.port, 17480);
	/* an explicit one wins */
	assert_int_equal(load(CLUSTER "listen = 0.0.0.0:7480\nadvertise = rd-a1.lan:7480\n"), 0);
	assert_string_equal(cfg.cluster_advertise.host, "rd-a1.lan");
	/* a wildcard listen (the default too) cannot be dialled */
	assert_bad(CLUSTER, 0, "advertise is required when listen (0.0.0.0)");
	assert_bad(CLUSTER "listen = [::]:7480\n", 0, "advertise is required");
	assert_bad(CLUSTER "listen = 0.0.0.0:7480\nadvertise =\n", 0, "advertise is required");
	assert_bad(CLUSTER "advertise = 0.0.0.0:7480\n", 0, "not the wildcard");
}

static void test_cluster_bad_values(void **state)
{
	assert_bad(CLUSTER "advertise = 1.2.3.4\n", 8, "[cluster] advertise");
	assert_bad(CLUSTER "prefix = a b\n", 8, "[cluster] prefix = 'a b' is not valid");
	assert_bad(CLUSTER "prefix =\n", 8, "[cluster] prefix");
	assert_bad(CLUSTER "lease_ttl_ms = 299\n", 8, "from 300");
	assert_bad(CLUSTER "heartbeat_ttl_ms = 999\n", 8, "from 1000");
	assert_bad(CLUSTER "peer_timeout_ms = 50\n", 8, "from 100");
	assert_bad(CLUSTER "lease_wait_ms = -1\n", 8, "integer");
	/* 0 was accepted and then meant the default, 10 s of waiting */
	assert_bad(CLUSTER "lease_wait_ms = 0\n", 8, "from 1 to 600000");
	assert_bad(MINIMAL "[cluster]\ntoken_file = token\n", 6, "absolute path");
	assert_bad(MINIMAL "[cluster]\nredis = redis://r\nadvertise = r:1\ntoken_file =\n", 0,
		   "token_file is required");
}

static void test_external_tgtd_keeps_default_ipc(void **state)
{
	assert_int_equal(load(MINIMAL "[iscsi]\ntgtd = external\n"), 0);
	assert_string_equal(cfg.ipc_socket, "");
}

static void test_unknown_key_and_section(void **state)
{
	assert_bad(MINIMAL "[cache]\nsize = 1G\nsise = 2G\n", 7, "unknown key 'sise' in [cache]");
	assert_bad(MINIMAL "[chache]\nsize = 1G\n", 5, "unknown section [chache]");
	assert_bad("name = a1\n" MINIMAL, 1, "outside any [section]");
	/* a section with no keys: inih reports only keys, so this passed unnoticed */
	assert_bad(MINIMAL "[bogus]\n", 5, "unknown section [bogus]");
	assert_bad(MINIMAL "  [bogus]  ; a comment\n[cache]\nsize = 1G\n", 5,
		   "unknown section [bogus]");
}

/* inih reads a line into 200 bytes; the rest of a longer line was parsed as a line of
 * its own, or blamed on the next line. A long line is an error naming its line. */
static void test_long_line(void **state)
{
	char text[1024], url[400];

	memset(url, 'a', sizeof(url) - 1);
	url[sizeof(url) - 1] = '\0';
	snprintf(text, sizeof(text), "[node]\nname = a1\n[seed]\nurl = http://seed.example/%s\n",
		 url);
	assert_bad(text, 4, "line too long (at most 198 characters)");
	/* a URL ending in ?x=1 whose tail inih read as a key */
	snprintf(text, sizeof(text), "[node]\nname = a1\n[seed]\nurl = http://s.example/%.*s?x=1\n"
		 "[cache]\nsize = 1G\n", 180, url);
	assert_bad(text, 4, "line too long");
	/* the longest line that fits, last in the file and without its newline too */
	snprintf(text, sizeof(text), "[node]\nname = a1\n[seed]\nurl = http://s.example/%.*s\n",
		 198 - 23, url);
	assert_int_equal(load(text), 0);
	text[strlen(text) - 1] = '\0';
	assert_int_equal(load(text), 0);
}

static void test_repeated_key(void **state)
{
	assert_bad(MINIMAL "[node]\nname = a2\n", 6, "[node] name is given twice");
}

static void test_bad_sizes(void **state)
{
	assert_bad(MINIMAL "[cache]\nsize = lots\n", 6, "[cache] size = 'lots' is not a size");
	assert_bad(MINIMAL "[cache]\nsize = -1G\n", 6, "is not a size");
	assert_bad(MINIMAL "[cache]\nsize = 10X\n", 6, "is not a size");
	assert_bad(MINIMAL "[cache]\nsize =\n", 6, "is not a size");
	assert_bad(MINIMAL "[api]\nmax_body = 10\n", 0, "[api] max_body");
}

/* A store smaller than the largest chunk (16M) could not hold some chunk: every read of it
 * would fail, as every read did with "size = 64" (the unit forgotten). 0 is no limit. */
static void test_cache_size_below_one_chunk_refused(void **state)
{
	assert_bad(MINIMAL "[cache]\nsize = 64\n", 6,
		   "[cache] size = '64' is smaller than the largest chunk (16M)");
	assert_bad(MINIMAL "[cache]\nsize = 1M\n", 6, "give 0 (no limit)");
	assert_bad(MINIMAL "[cache]\nsize = 16777215\n", 6, "smaller than the largest chunk");
	assert_int_equal(load(MINIMAL "[cache]\nsize = 16M\n"), 0);
	assert_true(cfg.cache_size == 16 * MiB);
	assert_int_equal(load(MINIMAL "[cache]\nsize = 0\n"), 0);
	assert_true(cfg.cache_size == 0);
}

static void test_seed_url_needs_a_host(void **state)
{
	assert_bad("[node]\nname = a1\n[seed]\nurl = http://\n", 4,
		   "[seed] url = 'http://' names no host");
	assert_bad("[node]\nname = a1\n[seed]\nurl = https:///repo\n", 4, "names no host");
	assert_bad("[node]\nname = a1\n[seed]\nurl = http://:8080/repo\n", 4, "url");
	assert_int_equal(load("[node]\nname = a1\n[seed]\nurl = http://seed:8080\n"), 0);
	assert_int_equal(load("[node]\nname = a1\n[seed]\nurl = https://[::1]/r\n"), 0);
	assert_int_equal(load("[node]\nname = a1\n[seed]\nurl = file:///repo\n"), 0);
}

/* [seed] url is read as the seed client and the CLI read it (images/repoloc.h): a
 * file://localhost/ URL is that directory; another scheme, a file:// URL of another host
 * or a relative directory is refused at load, not at the first pull. */
static void test_seed_url_spellings(void **state)
{
	assert_int_equal(load("[node]\nname = a1\n[seed]\nurl = file://localhost/repo\n"), 0);
	assert_string_equal(cfg.seed_url, "file://localhost/repo");
	assert_bad("[node]\nname = a1\n[seed]\nurl = s3://bucket/repo\n", 4, "[seed] url");
	assert_bad("[node]\nname = a1\n[seed]\nurl = file://otherhost/repo\n", 4, "url");
	assert_bad("[node]\nname = a1\n[seed]\nurl = file:repo\n", 4, "absolute directory");
}

/* libinih's multiline mode took an indented line for the continuation of the value
 * above it ("[node] name is given twice"): an indented key is an ordinary key. */
static void test_indented_key_is_a_key(void **state)
{
	assert_int_equal(load("[node]\nname = a\n  rack = r1\n\t[seed]\n\turl = http://s/\n"),
			 0);
	assert_string_equal(cfg.node_name, "a");
	assert_string_equal(cfg.rack, "r1");
	assert_string_equal(cfg.seed_url, "http://s/");
	/* a value broken over two lines is not one value any more */
	assert_bad(MINIMAL "[node]\nrack = r1\n  r2\n", 7, "syntax error");
}

static void test_bad_portals_and_addresses(void **state)
{
	assert_bad(MINIMAL "[iscsi]\nportal = 0.0.0.0\n", 6, "must be HOST:PORT");
	assert_bad(MINIMAL "[iscsi]\nportal = 0.0.0.0:0\n", 6, "port from 1 to 65535");
	assert_bad(MINIMAL "[iscsi]\nportal = 0.0.0.0:65536\n", 6, "HOST:PORT");
	assert_bad(MINIMAL "[iscsi]\nportal = :3260\n", 6, "HOST:PORT");
	assert_bad(MINIMAL "[iscsi]\nportal = a b:3260\n", 6, "HOST:PORT");
	assert_bad(MINIMAL "[iscsi]\nportal = [::1:3260\n", 6, "HOST:PORT");
	assert_bad(MINIMAL "[iscsi]\nportal = host:32x\n", 6, "HOST:PORT");
	assert_bad(MINIMAL "[api]\nlisten = localhost\n", 6, "[api] listen");
	assert_bad(MINIMAL "[cluster]\nlisten = 1.2.3.4:-1\n", 6, "[cluster] listen");
}

static void test_missing_required(void **state)
{
	assert_bad("[seed]\nurl = http://x/\n", 0, "[node] name is required");
	assert_bad("[node]\nname = a1\n", 0, "[seed] url is required");
	assert_bad(MINIMAL "[cluster]\nredis = redis://127.0.0.1:6379/0\n", 0,
		   "token_file is required");
	assert_bad("", 0, "[node] name is required");
}

static void test_bad_names_and_values(void **state)
{
	assert_bad("[node]\nname = ../x\n", 2, "[node] name = '../x' is not valid");
	assert_bad("[node]\nname = a/b\n", 2, "is not valid");
	assert_bad("[node]\nname = .hidden\n", 2, "is not valid");
	assert_bad(MINIMAL "[node]\nrack = r 1\n", 6, "[node] rack");
	assert_bad(MINIMAL "[node]\nstate_dir = relative/dir\n", 6, "absolute path");
	assert_bad(MINIMAL "[node]\nstate_dir = /srv/a,b\n", 0, "must not contain ','");
	assert_bad(MINIMAL "[node]\nlog_level = loud\n", 6, "debug, info, warn or error");
	assert_bad(MINIMAL "[iscsi]\ntgtd = maybe\n", 6, "spawn or external");
	assert_bad(MINIMAL "[iscsi]\ncontrol_port = 40000\n", 6, "from 0 to 32767");
	assert_bad(MINIMAL "[iscsi]\ncontrol_port = 1x\n", 6, "integer");
	assert_bad(MINIMAL "[iscsi]\niqn_prefix = rackdisk\n", 6, "iqn.YYYY-MM");
	assert_bad(MINIMAL "[iscsi]\niqn_prefix = iqn.2026-11.IO.Rackdisk\n", 6, "lowercase");
	assert_bad(MINIMAL "[iscsi]\nio_timeout_ms = 0\n", 6, "from 100");
	assert_bad(MINIMAL "[seed]\nworkers = 0\n", 6, "[seed] workers = '0' must be an integer");
	assert_bad("[node]\nname = a1\n[seed]\nurl = ftp://x/\n", 4, "http://");
	assert_bad("[node]\nname = a1\n[seed]\nurl = http://x/\nworkers = 0\n", 5,
		   "from 1 to 256");
	assert_bad(MINIMAL "[cache]\ndirect_io = perhaps\n", 6, "true or false");
	assert_bad(MINIMAL "[cluster]\nredis = http://r/\n", 6, "redis://");
	/* Once passed by a prefix check, then refused by the directory at start (and the
	 * daemon crashed on that path): every URL the directory cannot parse is refused. */
	assert_bad(MINIMAL "[cluster]\nredis = redis://127.0.0.1:notaport/x\n", 6, "port 1-65535");
	assert_bad(MINIMAL "[cluster]\nredis = redis://127.0.0.1:6379/zero\n", 6, "redis://");
	assert_bad(MINIMAL "[cluster]\nredis = redis://:6379\n", 6, "redis://");
	/* an IPv6 host is bracketed; "::1" bare read as host ":" and port 1 */
	assert_bad(MINIMAL "[cluster]\nredis = redis://::1\n", 6, "an IPv6 HOST in brackets");
	assert_bad(MINIMAL "[cluster]\nredis = unix://relative.sock\n", 6, "unix:///PATH");
	/* 0 looked like "off" (as [seed] readahead = 0 is) but meant a window of 1 */
	assert_bad(MINIMAL "[cluster]\nreadahead = 0\n", 6, "from 1 to 1024");
	assert_bad("[node]\nname = a1\n[seed]\nurl = http://x/\nretry_initial_ms = 500\n"
		   "retry_max_ms = 100\n",
		   0, "retry_max_ms is smaller");
}

static void test_syntax_error_line(void **state)
{
	assert_bad(MINIMAL "[iscsi\n", 5, "syntax error");
	assert_bad(MINIMAL "[cache]\njust words\n", 6, "syntax error");
}

static void test_first_error_wins(void **state)
{
	/* Two problems: the message is about the first line that has one. */
	assert_bad(MINIMAL "[cache]\nbogus = 1\n[iscsi]\nportal = x\n", 6, "unknown key 'bogus'");
}

static void test_long_state_dir_refused(void **state)
{
	char text[512], dir[120];

	memset(dir, 'd', sizeof(dir) - 1);
	dir[0] = '/';
	dir[sizeof(dir) - 1] = '\0';
	snprintf(text, sizeof(text), MINIMAL "[node]\nstate_dir = %s\n", dir);
	/* named as itself, not as the tgtd socket path derived from it */
	assert_bad(text, 0, "[node] state_dir '/ddd");
	assert_bad(text, 0, "is too long");
}

static void test_file_errors(void **state)
{
	char path[] = "/tmp/rdcfgXXXXXX";
	int fd = mkstemp(path);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, MINIMAL "[api]\nlisten = nope\n", strlen(MINIMAL) + 20),
			 (ssize_t)(strlen(MINIMAL) + 20));
	close(fd);
	assert_int_equal(config_load(path, &cfg, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, path));
	assert_non_null(strstr(err, ":6: [api] listen"));
	unlink(path);
	assert_int_equal(config_load("/nonexistent/rd.conf", &cfg, err, sizeof(err)), -ENOENT);
	assert_non_null(strstr(err, "/nonexistent/rd.conf: cannot open"));
}

/* Programs: tgtadm always, tgtd when spawned; missing, a directory, not executable. */
static void test_check_programs(void **state)
{
	char dir[] = "/tmp/rdprogXXXXXX", prog[64], noexec[64], text[512];

	assert_non_null(mkdtemp(dir));
	snprintf(prog, sizeof(prog), "%s/prog", dir);
	snprintf(noexec, sizeof(noexec), "%s/noexec", dir);
	assert_int_equal(write_file_atomic(prog, "#!/bin/sh\n", 10), 0);
	assert_int_equal(chmod(prog, 0755), 0);
	assert_int_equal(write_file_atomic(noexec, "#!/bin/sh\n", 10), 0);
	assert_int_equal(chmod(noexec, 0644), 0);

	snprintf(text, sizeof(text), MINIMAL "[iscsi]\ntgtd_path = %s\ntgtadm_path = %s\n",
		 prog, prog);
	assert_int_equal(load(text), 0);
	assert_int_equal(config_check_programs(&cfg, err, sizeof(err)), 0);

	snprintf(text, sizeof(text), MINIMAL "[iscsi]\ntgtd_path = %s/none\ntgtadm_path = %s\n",
		 dir, prog);
	assert_int_equal(load(text), 0);
	assert_int_equal(config_check_programs(&cfg, err, sizeof(err)), -ENOENT);
	assert_non_null(strstr(err, "[iscsi] tgtd_path '"));
	assert_non_null(strstr(err, "/none' cannot be executed: No such file or directory"));
	/* an external tgtd's path is not ours to run */
	snprintf(text, sizeof(text),
		 MINIMAL "[iscsi]\ntgtd = external\ntgtd_path = %s/none\ntgtadm_path = %s\n",
		 dir, prog);
	assert_int_equal(load(text), 0);
	assert_int_equal(config_check_programs(&cfg, err, sizeof(err)), 0);

	snprintf(text, sizeof(text), MINIMAL "[iscsi]\ntgtd_path = %s\ntgtadm_path = %s\n",
		 prog, dir);
	assert_int_equal(load(text), 0);
	assert_int_equal(config_check_programs(&cfg, err, sizeof(err)), -EISDIR);
	assert_non_null(strstr(err, "[iscsi] tgtadm_path '"));
	snprintf(text, sizeof(text), MINIMAL "[iscsi]\ntgtd_path = %s\ntgtadm_path = %s\n",
		 prog, noexec);
	assert_int_equal(load(text), 0);
	/* (root too needs an x bit to run a file) */
	assert_int_equal(config_check_programs(&cfg, err, sizeof(err)), -EACCES);
	assert_non_null(strstr(err, "cannot be executed: Permission denied"));
	unlink(prog);
	unlink(noexec);
	rmdir(dir);
}

static void test_parse_addr(void **state)
{
	struct config_addr a;
	char buf[300];

	assert_int_equal(config_parse_addr("[fe80::1]:3260", &a), 0);
	assert_string_equal(a.host, "fe80::1");
	assert_string_equal(config_addr_str(&a, buf, sizeof(buf)), "[fe80::1]:3260");
	assert_int_equal(config_parse_addr("seed.example:80", &a), 0);
	assert_string_equal(config_addr_str(&a, buf, sizeof(buf)), "seed.example:80");
	assert_int_equal(config_parse_addr("x:", &a), -EINVAL);
	assert_int_equal(config_parse_addr("", &a), -EINVAL);
	assert_int_equal(config_parse_addr("1.2.3.4:99999", &a), -EINVAL);
}

static void test_iqn_valid(void **state)
{
	assert_true(config_iqn_valid("iqn.2026-11.io.rackdisk"));
	assert_true(config_iqn_valid("iqn.2001-04.com.example:storage"));
	assert_false(config_iqn_valid("iqn.2026-1.io.rackdisk"));
	assert_false(config_iqn_valid("iqn.2026-11io.rackdisk"));
	assert_false(config_iqn_valid("iqn.2026-11.io.rack disk"));
	assert_false(config_iqn_valid("iqn.2026-11.io.rackdisk:"));
	assert_false(config_iqn_valid("eui.0123456789abcdef"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_minimal_gets_defaults),
		cmocka_unit_test(test_design_example_parses),
		cmocka_unit_test(test_every_key_is_applied),
		cmocka_unit_test(test_cluster_defaults),
		cmocka_unit_test(test_cluster_keys_applied),
		cmocka_unit_test(test_cluster_advertise_derived),
		cmocka_unit_test(test_cluster_bad_values),
		cmocka_unit_test(test_external_tgtd_keeps_default_ipc),
		cmocka_unit_test(test_unknown_key_and_section),
		cmocka_unit_test(test_long_line),
		cmocka_unit_test(test_repeated_key),
		cmocka_unit_test(test_bad_sizes),
		cmocka_unit_test(test_cache_size_below_one_chunk_refused),
		cmocka_unit_test(test_seed_url_needs_a_host),
		cmocka_unit_test(test_seed_url_spellings),
		cmocka_unit_test(test_indented_key_is_a_key),
		cmocka_unit_test(test_bad_portals_and_addresses),
		cmocka_unit_test(test_missing_required),
		cmocka_unit_test(test_bad_names_and_values),
		cmocka_unit_test(test_syntax_error_line),
		cmocka_unit_test(test_first_error_wins),
		cmocka_unit_test(test_long_state_dir_refused),
		cmocka_unit_test(test_file_errors),
		cmocka_unit_test(test_check_programs),
		cmocka_unit_test(test_parse_addr),
		cmocka_unit_test(test_iqn_valid),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
