/*
 * test_directory.c - the Redis chunk directory and fetch leases against a real
 * redis-server on a free loopback port: registration and ids, holder sets, heartbeats,
 * the pipelined bulk announce, password and database from the URL, Redis going away
 * (calls fail fast) and coming back (the directory recovers by re-announcing), and
 * leases (exclusive, released by the announce, renewed, expired when the holder dies
 * or stalls).
 */
#include <fcntl.h>
#include <sys/resource.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <unistd.h>

#include <cmocka.h>
#include <hiredis/hiredis.h>

#include "cluster/directory.h"
#include "cluster/directory_int.h" /* white-box: test_broken_during_reconnect_is_not_ready */
#include "cluster_fixture.h"
#include "common/log.h"
#include "tests/unit/stderr_hold.h"
#include "delay_proxy.h"

#define CHUNK 4096

static struct fx_redis redis;

/* Creates a directory with o on url (NULL: the test's Redis), advertising a port of its own. */
static struct directory *dir_create(struct directory_opts *o, const char *url)
{
	char def[128], addr[64];
	struct directory *d = NULL;

	fx_redis_url(&redis, 0, def, sizeof(def));
	snprintf(addr, sizeof(addr), "127.0.0.1:%d", 10000 + o->node_name[0]);
	o->url = url ? url : def;
	o->advertise = addr;
	assert_int_equal(directory_create(o, &d), 0);
	return d;
}

static struct directory *dir_new(const char *name, const char *rack, const char *url)
{
	struct directory_opts o = {
		.node_name = name, .rack = rack, .prefix = "t:",
		.heartbeat_ttl_ms = 1500, .heartbeat_interval_ms = 300,
		.lease_ttl_ms = 600, .lease_renew_ms = 150, .announce_batch = 1000,
	};

	return dir_create(&o, url);
}

/* dir_new with an announce batch of 1 and the given TTLs (renewals at a third). */
static struct directory *dir_new_slow(const char *name, uint32_t lease_ttl, uint32_t hb_ttl)
{
	struct directory_opts o = {
		.node_name = name, .rack = "r1", .prefix = "t:",
		.heartbeat_ttl_ms = hb_ttl, .heartbeat_interval_ms = hb_ttl / 3,
		.lease_ttl_ms = lease_ttl, .lease_renew_ms = lease_ttl / 3, .announce_batch = 1,
	};

	return dir_create(&o, NULL);
}

/* A command on c (a plain connection of the test's); its reply is dropped. */
static void redis_do(redisContext *c, const char *fmt, ...)
{
	redisReply *r;
	va_list ap;

	va_start(ap, fmt);
	r = redisvCommand(c, fmt, ap);
	va_end(ap);
	assert_non_null(r);
	freeReplyObject(r);
}

static int setup(void **state)
{
	memset(&redis, 0, sizeof(redis));
	return fx_redis_start(&redis);
}

static void log_capture_abort(void);

static int teardown(void **state)
{
	log_capture_abort();
	fx_redis_stop(&redis);
	fx_rm_rf(redis.dir);
	return 0;
}

static void test_parse_url(void **state)
{
	struct directory_url u;

	assert_int_equal(directory_parse_url("redis://127.0.0.1:6380/3", &u), 0);
	assert_string_equal(u.host, "127.0.0.1");
	assert_int_equal(u.port, 6380);
	assert_int_equal(u.db, 3);
	assert_string_equal(u.password, "");
	assert_int_equal(directory_parse_url("redis://:s3cr:et@h:1/0", &u), 0);
	assert_string_equal(u.password, "s3cr:et");
	assert_string_equal(u.user, "");
	assert_string_equal(u.host, "h");
	assert_int_equal(directory_parse_url("redis://app:pw@h", &u), 0);
	assert_string_equal(u.user, "app");
	assert_string_equal(u.password, "pw");
	assert_int_equal(u.port, 6379);
	assert_int_equal(u.db, 0);
	assert_int_equal(directory_parse_url("redis://pw@h/2", &u), 0);
	assert_string_equal(u.password, "pw");
	assert_int_equal(u.db, 2);
	assert_int_equal(directory_parse_url("unix:///run/redis.sock", &u), 0);
	assert_string_equal(u.socket, "/run/redis.sock");
	assert_int_equal(directory_parse_url("unix://relative", &u), -EINVAL);
	assert_int_equal(directory_parse_url("http://h:1", &u), -EINVAL);
	assert_int_equal(directory_parse_url("redis://", &u), -EINVAL);
	assert_int_equal(directory_parse_url("redis://h:0", &u), -EINVAL);
	assert_int_equal(directory_parse_url("redis://h:99999", &u), -EINVAL);
	assert_int_equal(directory_parse_url("redis://h:12x", &u), -EINVAL);
	assert_int_equal(directory_parse_url("redis://h:1/x", &u), -EINVAL);
	assert_int_equal(directory_parse_url("", &u), -EINVAL);
	/* user and password are percent-decoded, as redis-cli reads them: a password with
	 * '@' or '/' can only be written so (sent as typed, it never authenticated) */
	assert_int_equal(directory_parse_url("redis://app:p%40ss%2fw%3Ard@h:1", &u), 0);
	assert_string_equal(u.user, "app");
	assert_string_equal(u.password, "p@ss/w:rd");
	assert_string_equal(u.host, "h");
	assert_int_equal(directory_parse_url("redis://a%2Bb:pw@h", &u), 0);
	assert_string_equal(u.user, "a+b");
	assert_int_equal(directory_parse_url("redis://app:p%4@h", &u), -EINVAL);
	assert_int_equal(directory_parse_url("redis://app:p%zz@h", &u), -EINVAL);
	assert_int_equal(directory_parse_url("redis://app:p%00@h", &u), -EINVAL);
	/* a user with an empty password sent no AUTH at all, silently */
	assert_int_equal(directory_parse_url("redis://app:@h", &u), -EINVAL);
	assert_int_equal(directory_parse_url("redis://@h", &u), -EINVAL);
}

/* An IPv6 host is written in brackets, as in any URL, and reaches getaddrinfo without
 * them (it kept them, and never resolved); bare, its colons were taken for the port's. */
static void test_parse_url_ipv6(void **state)
{
	struct directory_url u;

	assert_int_equal(directory_parse_url("redis://[::1]:6380/3", &u), 0);
	assert_string_equal(u.host, "::1");
	assert_int_equal(u.port, 6380);
	assert_int_equal(u.db, 3);
	assert_int_equal(directory_parse_url("redis://[fd00:1::2]", &u), 0);
	assert_string_equal(u.host, "fd00:1::2");
	assert_int_equal(u.port, 6379);
	assert_int_equal(directory_parse_url("redis://app:p:w@[::1]:7000", &u), 0);
	assert_string_equal(u.user, "app");
	assert_string_equal(u.password, "p:w");
	assert_string_equal(u.host, "::1");
	assert_int_equal(u.port, 7000);
	assert_int_equal(directory_parse_url("redis://::1", &u), -EINVAL);
	assert_int_equal(directory_parse_url("redis://::1:6379", &u), -EINVAL);
	assert_int_equal(directory_parse_url("redis://fd00::2/0", &u), -EINVAL);
	assert_int_equal(directory_parse_url("redis://[::1", &u), -EINVAL);
	assert_int_equal(directory_parse_url("redis://[]:1", &u), -EINVAL);
	assert_int_equal(directory_parse_url("redis://[::1]x", &u), -EINVAL);
	assert_int_equal(directory_parse_url("redis://[::1]:", &u), -EINVAL);
	assert_int_equal(directory_parse_url("redis://[h]:1", &u), -EINVAL);
	assert_int_equal(directory_parse_url("redis://h]:1", &u), -EINVAL);
}

/* Whether this machine has IPv6 loopback (a container may not). */
static bool ipv6_loopback(void)
{
	struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT};
	int s = socket(AF_INET6, SOCK_STREAM, 0);
	bool ok = s >= 0 && bind(s, (struct sockaddr *)&a, sizeof(a)) == 0;

	if (s >= 0)
		close(s);
	return ok;
}

/* A directory on redis://[::1]:PORT connects (to a Redis listening on ::1) and works. */
static void test_connects_over_ipv6(void **state)
{
	struct fx_redis r = {.ipv6 = true};
	struct directory_opts o = {.node_name = "v6", .advertise = "[::1]:7480", .prefix = "v6:"};
	struct directory *a = NULL;
	struct chunk_hash h;
	uint8_t buf[CHUNK];
	char url[128], hex[HASH_HEX_LEN + 1];
	redisContext *c;
	redisReply *rep;

	if (!ipv6_loopback())
		skip();
	assert_int_equal(fx_redis_start(&r), 0);
	snprintf(url, sizeof(url), "redis://[::1]:%d/0", r.port);
	o.url = url;
	assert_int_equal(directory_create(&o, &a), 0);
	assert_int_equal(directory_wait_ready(a, 5000), 0);
	fx_chunk(6, buf, sizeof(buf), &h);
	assert_int_equal(directory_announce(a, &h), 0);
	c = redisConnect("::1", r.port);
	assert_true(c && !c->err);
	hash_to_hex(&h, hex);
	rep = redisCommand(c, "SISMEMBER v6:chunk:%s %lld", hex, (long long)directory_node_id(a));
	assert_true(rep && rep->type == REDIS_REPLY_INTEGER && rep->integer == 1);
	freeReplyObject(rep);
	redisFree(c);
	directory_destroy(a);
	fx_redis_stop(&r);
	fx_rm_rf(r.dir);
}

static void test_bad_options(void **state)
{
	struct directory_opts o = {.url = "redis://127.0.0.1:1/0", .node_name = "../x",
				   .advertise = "127.0.0.1:1"};
	struct directory *d = NULL;

	assert_int_equal(directory_create(&o, &d), -EINVAL);
	o.node_name = "ok";
	o.advertise = "has space:1";
	assert_int_equal(directory_create(&o, &d), -EINVAL);
	o.advertise = "127.0.0.1:1";
	o.url = "redis:/nope";
	assert_int_equal(directory_create(&o, &d), -EINVAL);
}

static void test_register_ids(void **state)
{
	struct directory *a = dir_new("a1", "r1", NULL), *b = dir_new("b1", "r1", NULL);
	int64_t ida, idb;

	assert_int_equal(directory_wait_ready(a, 5000), 0);
	assert_int_equal(directory_wait_ready(b, 5000), 0);
	ida = directory_node_id(a);
	idb = directory_node_id(b);
	assert_true(ida >= 1 && idb >= 1);
	assert_int_not_equal(ida, idb);
	/* a restarted node keeps its id */
	directory_destroy(a);
	a = dir_new("a1", "r1", NULL);
	assert_int_equal(directory_wait_ready(a, 5000), 0);
	assert_int_equal(directory_node_id(a), ida);
	directory_destroy(a);
	directory_destroy(b);
}

static void test_announce_lookup_withdraw(void **state)
{
	struct directory *a = dir_new("a2", "r1", NULL), *b = dir_new("b2", "r2", NULL);
	struct directory_holder hd[4];
	struct directory_node nodes[8];
	struct chunk_hash h, other;
	uint8_t buf[CHUNK];
	int n, i, found = 0;

	fx_chunk(1, buf, sizeof(buf), &h);
	fx_chunk(2, buf, sizeof(buf), &other);
	assert_int_equal(directory_wait_ready(a, 5000), 0);
	assert_int_equal(directory_wait_ready(b, 5000), 0);
	assert_int_equal(directory_lookup(b, &h, hd, 4), 0);
	assert_int_equal(directory_announce(a, &h), 0);
	n = directory_lookup(b, &h, hd, 4);
	assert_int_equal(n, 1);
	assert_int_equal(hd[0].node_id, directory_node_id(a));
	assert_string_equal(hd[0].name, "a2");
	assert_string_equal(hd[0].rack, "r1");
	assert_string_equal(hd[0].addr, "127.0.0.1:10097");
	/* a node never lists itself */
	assert_int_equal(directory_lookup(a, &h, hd, 4), 0);
	assert_int_equal(directory_lookup(b, &other, hd, 4), 0);
	assert_int_equal(directory_announce(b, &h), 0);
	assert_int_equal(directory_lookup(a, &h, hd, 4), 1);
	assert_string_equal(hd[0].name, "b2");

	n = directory_list_nodes(b, nodes, 8);
	assert_true(n >= 2);
	for (i = 0; i < n; i++)
		if (!strcmp(nodes[i].name, "a2")) {
			found++;
			assert_true(nodes[i].alive);
			assert_string_equal(nodes[i].rack, "r1");
			assert_string_equal(nodes[i].addr, "127.0.0.1:10097");
		}
	assert_int_equal(found, 1);

	assert_int_equal(directory_withdraw(a, &h), 0);
	assert_int_equal(directory_lookup(b, &h, hd, 4), 0);
	/* lazy repair: a (without a store) answered a peer 404 for h, and drops its entry */
	assert_int_equal(directory_announce(a, &h), 0);
	assert_int_equal(directory_lookup(b, &h, hd, 4), 1);
	assert_int_equal(directory_not_held(a, &h), 0);
	assert_int_equal(directory_lookup(b, &h, hd, 4), 0);
	/* a holder whose heartbeat is gone is ignored */
	assert_int_equal(directory_announce(a, &h), 0);
	assert_int_equal(directory_lookup(b, &h, hd, 4), 1);
	directory_leave(a);
	assert_int_equal(directory_lookup(b, &h, hd, 4), 0);
	directory_destroy(a);
	directory_destroy(b);
}

/*
 * The longest fields an appliance may be configured with (a name and a rack of 128
 * characters, an address of 127) go through the heartbeat to a peer's lookup and listing
 * whole: a rack past 64 characters made every lookup skip that holder, silently, and left
 * the rack blank in the node list.
 */
static void test_longest_name_rack_and_address_are_listed(void **state)
{
	char name[129], rack[129], addr[128], url[128];
	struct directory_opts o = {
		.prefix = "t:", .heartbeat_ttl_ms = 1500,
		.heartbeat_interval_ms = 300, .lease_ttl_ms = 600, .lease_renew_ms = 150,
	};
	struct directory *a = NULL, *b = dir_new("b3", "r1", NULL);
	struct directory_holder hd[4];
	struct directory_node nodes[8];
	struct directory_stats st;
	struct chunk_hash h;
	uint8_t buf[CHUNK];
	char hex[HASH_HEX_LEN + 1];
	redisContext *c;
	uint64_t bad;
	int n, i, found = 0;

	memset(name, 'n', 128);
	name[128] = '\0';
	memset(rack, 'r', 128);
	rack[128] = '\0';
	memset(addr, 'h', 121);
	snprintf(addr + 121, sizeof(addr) - 121, ":10001");
	assert_int_equal(strlen(addr), 127);
	fx_redis_url(&redis, 0, url, sizeof(url));
	o.url = url;
	o.node_name = name;
	o.rack = rack;
	o.advertise = addr;
	assert_int_equal(directory_create(&o, &a), 0);
	assert_int_equal(directory_wait_ready(a, 5000), 0);
	assert_int_equal(directory_wait_ready(b, 5000), 0);
	fx_chunk(3, buf, sizeof(buf), &h);
	assert_int_equal(directory_announce(a, &h), 0);
	n = directory_lookup(b, &h, hd, 4);
	assert_int_equal(n, 1);
	assert_int_equal(hd[0].node_id, directory_node_id(a));
	assert_string_equal(hd[0].name, name);
	assert_string_equal(hd[0].rack, rack);
	assert_string_equal(hd[0].addr, addr);
	/* a holder whose heartbeat cannot be read is not asked, but counted */
	c = redisConnect("127.0.0.1", redis.port);
	assert_non_null(c);
	hash_to_hex(&h, hex);
	redis_do(c, "SADD t:chunk:%s 77", hex);
	redis_do(c, "SET t:alive:77 no-spaces PX 60000");
	redisFree(c);
	directory_get_stats(b, &st);
	bad = st.bad_nodes;
	assert_int_equal(directory_lookup(b, &h, hd, 4), 1);
	assert_string_equal(hd[0].name, name);
	directory_get_stats(b, &st);
	assert_int_equal(st.bad_nodes, bad + 1);

	n = directory_list_nodes(b, nodes, 8);
	assert_int_equal(n, 2);
	for (i = 0; i < n; i++)
		if (!strcmp(nodes[i].name, name)) {
			found++;
			assert_string_equal(nodes[i].rack, rack);
			assert_string_equal(nodes[i].addr, addr);
		}
	assert_int_equal(found, 1);
	directory_destroy(a);
	directory_destroy(b);
}

/* An error reply inside list_nodes' pipeline (a stray key of the wrong type) fails that
 * call only: the connection's next commands still get their own replies. */
static void test_list_nodes_error_reply_keeps_pipeline(void **state)
{
	struct directory *a = dir_new("a9", "r1", NULL), *b = dir_new("b9", "r2", NULL);
	struct directory_holder hd[4];
	struct directory_node nodes[8];
	struct chunk_hash h, free_h;
	uint8_t buf[CHUNK];
	int64_t holder = -1;
	redisContext *c;
	redisReply *rep;

	fx_chunk(9, buf, sizeof(buf), &h);
	fx_chunk(10, buf, sizeof(buf), &free_h);
	assert_int_equal(directory_wait_ready(a, 5000), 0);
	assert_int_equal(directory_wait_ready(b, 5000), 0);
	assert_int_equal(directory_announce(a, &h), 0);
	c = redisConnect("127.0.0.1", redis.port);
	assert_non_null(c);
	assert_int_equal(c->err, 0);
	rep = redisCommand(c, "HSET t:nodes:byname ghost 99");
	freeReplyObject(rep);
	rep = redisCommand(c, "SET t:node:99 not-a-hash");
	freeReplyObject(rep);
	rep = redisCommand(c, "SET t:alive:99 1");
	freeReplyObject(rep);
	/* listed after the ghost (a small hash keeps insertion order): replies follow its */
	rep = redisCommand(c, "HDEL t:nodes:byname a9");
	freeReplyObject(rep);
	rep = redisCommand(c, "HSET t:nodes:byname a9 %lld", (long long)directory_node_id(a));
	freeReplyObject(rep);
	redisFree(c);

	assert_int_equal(directory_list_nodes(b, nodes, 8), -EIO);
	/* each of these would read a stale reply if list_nodes left one unread */
	assert_int_equal(directory_lookup(b, &h, hd, 4), 1);
	assert_int_equal(hd[0].node_id, directory_node_id(a));
	assert_int_equal(directory_node_alive(b, directory_node_id(a)), 1);
	assert_int_equal(directory_lease_acquire(b, &free_h, now_ns() + 5000000000ULL, &holder),
			 0);
	assert_int_equal(directory_lease_holder(a, &free_h, &holder), 0);
	assert_int_equal(holder, directory_node_id(b));
	assert_int_equal(directory_lease_release(b, &free_h), 0);
	assert_int_equal(directory_list_nodes(b, nodes, 8), -EIO);
	assert_int_equal(directory_lookup(b, &h, hd, 4), 1);
	directory_destroy(a);
	directory_destroy(b);
}

/* Node entries written into Redis by someone else: a name that is not a node name (a
 * quote and a newline that injected Prometheus samples, a byte that is not UTF-8 that made
 * the node vanish from GET peers, one too long) is left out of the list; a bad address or
 * rack is shown empty. Each is counted. */
static void test_list_nodes_refuses_malformed_entries(void **state)
{
	struct directory *b = dir_new("b8", "r1", NULL);
	struct directory_node nodes[8];
	struct directory_stats st;
	char longname[200];
	redisContext *c;
	redisReply *rep;
	int n, i, seen_ok = 0, seen_b = 0;

	assert_int_equal(directory_wait_ready(b, 5000), 0);
	c = redisConnect("127.0.0.1", redis.port);
	assert_non_null(c);
	assert_int_equal(c->err, 0);
	memset(longname, 'n', sizeof(longname) - 1);
	longname[sizeof(longname) - 1] = '\0';
	rep = redisCommand(c, "HSET t:nodes:byname %s 71 %b 72 %s 73 %b 74 okay 75", 
			   "ev\"il\nrackdisk_up 0", "bad\xff", (size_t)4, longname, "nu\0l",
			   (size_t)4);
	assert_non_null(rep);
	freeReplyObject(rep);
	rep = redisCommand(c, "HSET t:node:75 name okay addr %s rack %s", "1.2.3.4:7480\"x\n",
			   "r\"1");
	freeReplyObject(rep);
	redisFree(c);

	n = directory_list_nodes(b, nodes, 8);
	assert_int_equal(n, 2);
	for (i = 0; i < n; i++) {
		assert_true(name_is_valid(nodes[i].name));
		if (!strcmp(nodes[i].name, "okay")) {
			seen_ok++;
			assert_int_equal(nodes[i].node_id, 75);
			assert_string_equal(nodes[i].addr, "");
			assert_string_equal(nodes[i].rack, "");
		} else if (!strcmp(nodes[i].name, "b8")) {
			seen_b++;
			assert_string_equal(nodes[i].rack, "r1");
		}
	}
	assert_int_equal(seen_ok, 1);
	assert_int_equal(seen_b, 1);
	directory_get_stats(b, &st);
	assert_int_equal(st.bad_nodes, 5); /* 4 names, 1 record */
	/* a full array still means "ask again with more room": bad entries do not count */
	assert_int_equal(directory_list_nodes(b, nodes, 1), 1);
	directory_destroy(b);
}

static void test_heartbeat_expires(void **state)
{
	struct directory *b = dir_new("b3", "r1", NULL), *a;
	struct directory_holder hd[4];
	struct chunk_hash h;
	uint8_t buf[CHUNK];
	int i, status = -1;
	int64_t holder = -1;
	pid_t pid;

	fx_chunk(3, buf, sizeof(buf), &h);
	assert_int_equal(directory_wait_ready(b, 5000), 0);
	/* node a3 in a child process: announces, takes a lease, lives past the TTL, crashes */
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		a = dir_new("a3", "r1", NULL);
		if (directory_wait_ready(a, 5000) || directory_announce(a, &h) ||
		    directory_lease_acquire(a, &h, now_ns() + 60000 * 1000000ULL, &holder))
			_exit(1);
		fx_sleep_ms(2000); /* beyond the 1.5 s TTL: the heartbeat thread keeps it */
		_exit(0); /* a crash: no leave, no release */
	}
	fx_sleep_ms(1800);
	/* alive beyond its first TTL: the heartbeat thread refreshes it */
	assert_int_equal(directory_lookup(b, &h, hd, 4), 1);
	assert_string_equal(hd[0].name, "a3");
	assert_int_equal(waitpid(pid, &status, 0), pid);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	/* crashed without leaving: gone once the heartbeat TTL runs out, lease too */
	for (i = 0; i < 60; i++) {
		if (directory_lookup(b, &h, hd, 4) == 0 &&
		    directory_lease_holder(b, &h, &holder) == 0 && holder == 0)
			break;
		fx_sleep_ms(50);
	}
	assert_true(i < 60);
	directory_destroy(b);
}

/* Store hooks that follow a directory that may come and go (a node restarting). */
static struct directory *hooked;

static void hook_announce(void *arg, const struct chunk_hash *h)
{
	if (hooked)
		directory_announce(hooked, h);
}

static void hook_withdraw(void *arg, const struct chunk_hash *h)
{
	if (hooked)
		directory_withdraw(hooked, h);
}

static void test_bulk_announce(void **state)
{
	char sdir[64];
	struct directory *a, *b;
	struct chunkstore_hooks hk = {.announce = hook_announce};
	struct chunkstore *cs = fx_store_open(sdir, hk);
	struct directory_holder hd[4];
	struct directory_stats st;
	static uint8_t buf[CHUNK];
	struct chunk_hash *hs;
	unsigned i, n = 2500;

	assert_non_null(cs);
	hs = calloc(n, sizeof(*hs));
	assert_non_null(hs);
	/* a store filled while no directory is attached (as before a restart) */
	for (i = 0; i < n; i++) {
		fx_chunk(1000 + i, buf, sizeof(buf), &hs[i]);
		assert_int_equal(chunkstore_insert(cs, &hs[i], buf, sizeof(buf)), 0);
	}
	a = dir_new("a4", "r1", NULL);
	directory_attach_store(a, cs);
	hooked = a;
	b = dir_new("b4", "r1", NULL);
	assert_int_equal(directory_wait_ready(a, 5000), 0);
	assert_int_equal(directory_wait_ready(b, 5000), 0);
	for (i = 0; i < n; i++)
		assert_int_equal(directory_lookup(b, &hs[i], hd, 4), 1);
	directory_get_stats(a, &st);
	assert_true(st.bulk_announced >= n);
	/* pipelined: a few round trips, not one per chunk (batch 1000) */
	assert_true(st.commands < 50);
	hooked = NULL;
	directory_destroy(a);
	directory_destroy(b);
	chunkstore_close(cs);
	fx_rm_rf(sdir);
	free(hs);
}

/*
 * A store attached while the first connect is between its announce (which found no
 * store) and becoming ready was announced by neither: directory_attach_store saw "not
 * ready" and skipped it, the connect's announce had run before. The directory thread is
 * held in that window by stderr: a pipe filled to the brim blocks the log line the
 * connect writes after its announce. No assertion runs while stderr is that pipe (cmocka
 * reports failures there).
 */
static void test_store_attached_during_first_connect_is_announced(void **state)
{
	char sdir[64];
	struct chunkstore_hooks hk = {0};
	struct chunkstore *cs = fx_store_open(sdir, hk);
	struct directory *a, *b;
	struct directory_holder hd[4];
	struct directory_stats st = {0};
	static uint8_t buf[CHUNK];
	struct stderr_hold hold;
	struct chunk_hash h;
	bool ready_early, held;
	int i;

	assert_non_null(cs);
	fx_chunk(7, buf, sizeof(buf), &h);
	assert_int_equal(chunkstore_insert(cs, &h, buf, sizeof(buf)), 0);
	log_init("test_directory", LOG_LVL_INFO, 0); /* the connect's line is info */
	assert_int_equal(stderr_hold(&hold), 0);
	a = dir_new("a9", "r1", NULL);
	/* Registered (the reconnect count rises before the announce), then parked in the
	 * log line after it, or at the latest in the blocked write the line becomes. */
	for (i = 0; i < 500 && !st.reconnects; i++) {
		usleep(10000);
		directory_get_stats(a, &st);
	}
	held = stderr_hold_wait_blocked(5000);
	ready_early = directory_wait_ready(a, 0) == 0;
	directory_attach_store(a, cs);
	stderr_hold_restore(&hold);
	log_init("test_directory", LOG_LVL_WARN, 0);
	/* drain until the thread's line has gone through and it is ready */
	for (i = 0; i < 500 && directory_wait_ready(a, 0) != 0; i++) {
		stderr_hold_drain(&hold);
		usleep(10000);
	}
	stderr_hold_close(&hold);

	assert_true(st.reconnects >= 1);
	assert_true(held);
	assert_false(ready_early); /* the thread was held in the window */
	assert_int_equal(directory_wait_ready(a, 5000), 0);
	b = dir_new("b9", "r1", NULL);
	assert_int_equal(directory_wait_ready(b, 5000), 0);
	assert_int_equal(directory_lookup(b, &h, hd, 4), 1);
	assert_string_equal(hd[0].name, "a9");
	directory_destroy(a);
	directory_destroy(b);
	chunkstore_close(cs);
	fx_rm_rf(sdir);
}

static void test_password_and_db(void **state)
{
	struct fx_redis r = {0};
	char url[160];
	struct directory *a;
	struct directory_stats st;
	struct chunk_hash h;
	uint8_t buf[CHUNK];
	redisContext *c;
	redisReply *rep;
	uint64_t t0;

	snprintf(r.password, sizeof(r.password), "pw-%d", getpid());
	assert_int_equal(fx_redis_start(&r), 0);
	fx_chunk(5, buf, sizeof(buf), &h);
	snprintf(url, sizeof(url), "redis://:%s@127.0.0.1:%d/3", r.password, r.port);
	{
		struct directory_opts o = {.url = url, .node_name = "p1", .advertise = "x:1",
					   .prefix = "pp:"};

		assert_int_equal(directory_create(&o, &a), 0);
	}
	assert_int_equal(directory_wait_ready(a, 5000), 0);
	assert_int_equal(directory_announce(a, &h), 0);
	c = redisConnect("127.0.0.1", r.port);
	assert_non_null(c);
	rep = redisCommand(c, "AUTH %s", r.password);
	freeReplyObject(rep);
	rep = redisCommand(c, "SELECT 3");
	freeReplyObject(rep);
	rep = redisCommand(c, "KEYS pp:chunk:*");
	assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
	assert_int_equal(rep->elements, 1);
	freeReplyObject(rep);
	rep = redisCommand(c, "SELECT 0");
	freeReplyObject(rep);
	rep = redisCommand(c, "DBSIZE");
	assert_int_equal(rep->integer, 0);
	freeReplyObject(rep);
	redisFree(c);
	directory_destroy(a);

	/* a wrong password never gets ready, and calls fail fast meanwhile */
	snprintf(url, sizeof(url), "redis://:wrong@127.0.0.1:%d/3", r.port);
	{
		struct directory_opts o = {.url = url, .node_name = "p2", .advertise = "x:1"};

		assert_int_equal(directory_create(&o, &a), 0);
	}
	assert_int_equal(directory_wait_ready(a, 700), -ETIMEDOUT);
	t0 = now_ns();
	assert_int_equal(directory_announce(a, &h), -ENOTCONN);
	assert_true(fx_ms_since(t0) < 1000);
	directory_get_stats(a, &st);
	assert_false(st.connected);
	assert_true(st.fast_fails >= 1);
	directory_destroy(a);
	fx_redis_stop(&r);
	fx_rm_rf(r.dir);
}

/* stderr into a file while a test runs a directory: the log lines it writes. */
struct log_capture {
	char path[64];
	int saved;
};

/* The capture under way, if any: a failed assertion leaves it to teardown() to end. */
static struct log_capture *capturing;

static void log_capture_start(struct log_capture *lc)
{
	int fd;

	snprintf(lc->path, sizeof(lc->path), "/tmp/rd-log-XXXXXX");
	fd = mkstemp(lc->path);
	assert_true(fd >= 0);
	fflush(stderr);
	lc->saved = dup(STDERR_FILENO);
	assert_true(lc->saved >= 0);
	assert_int_equal(dup2(fd, STDERR_FILENO), STDERR_FILENO);
	close(fd);
	capturing = lc;
}

/* stderr restored, the capture dropped (teardown, after a failed assertion). */
static void log_capture_abort(void)
{
	if (!capturing)
		return;
	fflush(stderr);
	dup2(capturing->saved, STDERR_FILENO);
	close(capturing->saved);
	unlink(capturing->path);
	capturing = NULL;
}

/* stderr restored; the number of captured lines that contain needle (each echoed). */
static unsigned log_capture_end(struct log_capture *lc, const char *needle)
{
	char line[1024];
	unsigned n = 0;
	FILE *f;

	fflush(stderr);
	assert_int_equal(dup2(lc->saved, STDERR_FILENO), STDERR_FILENO);
	close(lc->saved);
	capturing = NULL;
	f = fopen(lc->path, "r");
	assert_non_null(f);
	while (fgets(line, sizeof(line), f)) {
		fputs(line, stderr);
		n += strstr(line, needle) != NULL;
	}
	fclose(f);
	unlink(lc->path);
	return n;
}

/*
 * What Redis refuses at every reconnect (about once a second here, every 300 ms) is
 * logged at most every 5 s, as every directory failure is, and counted: a wrong password
 * (AUTH) and a read-only replica (the registration) each logged a warning per attempt.
 */
static void test_refusals_at_reconnect_are_logged_sparingly(void **state)
{
	struct fx_redis r = {0};
	struct directory_opts o = {
		.node_name = "w1", .advertise = "127.0.0.1:1", .heartbeat_ttl_ms = 1500,
		.heartbeat_interval_ms = 300,
	};
	struct directory_stats st;
	struct log_capture lc;
	struct directory *a;
	char url[160];
	redisContext *c;
	unsigned lines;

	snprintf(r.password, sizeof(r.password), "pw-%d", getpid());
	assert_int_equal(fx_redis_start(&r), 0);
	snprintf(url, sizeof(url), "redis://:wrong@127.0.0.1:%d/0", r.port);
	o.url = url;
	log_capture_start(&lc);
	assert_int_equal(directory_create(&o, &a), 0);
	fx_sleep_ms(3000);
	directory_get_stats(a, &st);
	directory_destroy(a);
	lines = log_capture_end(&lc, "directory:");
	fx_redis_stop(&r);
	fx_rm_rf(r.dir);
	assert_true(lines >= 1);
	assert_true(lines <= 2);
	assert_true(st.errors >= 5); /* every refusal counted */
	assert_false(st.connected);

	/* the registration refused: a read-only replica (of a master that is not there) */
	c = redisConnect("127.0.0.1", redis.port);
	assert_true(c && !c->err);
	redis_do(c, "REPLICAOF 127.0.0.1 %d", fx_free_port());
	fx_redis_url(&redis, 0, url, sizeof(url));
	log_capture_start(&lc);
	assert_int_equal(directory_create(&o, &a), 0);
	fx_sleep_ms(3000);
	directory_get_stats(a, &st);
	directory_destroy(a);
	lines = log_capture_end(&lc, "directory:");
	redis_do(c, "REPLICAOF NO ONE");
	redisFree(c);
	assert_true(lines >= 1);
	assert_true(lines <= 2);
	assert_true(st.errors >= 5);
	assert_false(st.connected);
}

static void test_redis_down_and_back(void **state)
{
	char sdir[64];
	struct directory *a = dir_new("a6", "r1", NULL), *b = dir_new("b6", "r1", NULL);
	struct chunkstore *cs = fx_store_open(sdir, directory_store_hooks(a));
	struct directory_holder hd[4];
	struct directory_stats st;
	static uint8_t buf[CHUNK];
	struct chunk_hash hs[20], late;
	uint64_t t0;
	int i;

	assert_non_null(cs);
	directory_attach_store(a, cs);
	assert_int_equal(directory_wait_ready(a, 5000), 0);
	assert_int_equal(directory_wait_ready(b, 5000), 0);
	for (i = 0; i < 20; i++) {
		fx_chunk(2000 + i, buf, sizeof(buf), &hs[i]);
		assert_int_equal(chunkstore_insert(cs, &hs[i], buf, sizeof(buf)), 0);
	}
	assert_int_equal(directory_lookup(b, &hs[7], hd, 4), 1);

	fx_redis_stop(&redis);
	/* every call fails fast; the store keeps working (insert while down) */
	for (i = 0; i < 20; i++) {
		int64_t holder;

		t0 = now_ns();
		assert_true(directory_lookup(b, &hs[i], hd, 4) < 0);
		assert_true(directory_lease_acquire(b, &hs[i], now_ns() + 1000000000ULL,
						    &holder) < 0);
		assert_true(fx_ms_since(t0) < 1500);
	}
	fx_chunk(2100, buf, sizeof(buf), &late);
	assert_int_equal(chunkstore_insert(cs, &late, buf, sizeof(buf)), 0);
	directory_get_stats(b, &st);
	assert_false(st.connected);
	assert_true(st.errors >= 20);

	/* Redis returns empty: the directory recovers by re-announcing the whole store */
	assert_int_equal(fx_redis_start(&redis), 0);
	assert_int_equal(directory_wait_ready(a, 8000), 0);
	assert_int_equal(directory_wait_ready(b, 8000), 0);
	for (i = 0; i < 20; i++)
		assert_int_equal(directory_lookup(b, &hs[i], hd, 4), 1);
	assert_int_equal(directory_lookup(b, &late, hd, 4), 1);
	assert_string_equal(hd[0].name, "a6");
	directory_get_stats(a, &st);
	assert_true(st.reconnects >= 2);
	directory_destroy(a);
	directory_destroy(b);
	chunkstore_close(cs);
	fx_rm_rf(sdir);
}

static void test_lease_exclusive_and_released_by_announce(void **state)
{
	struct directory *a = dir_new("a7", "r1", NULL), *b = dir_new("b7", "r1", NULL);
	struct chunk_hash h;
	uint8_t buf[CHUNK];
	int64_t holder = -1;
	uint64_t far = now_ns() + 60000 * 1000000ULL;

	fx_chunk(7, buf, sizeof(buf), &h);
	assert_int_equal(directory_wait_ready(a, 5000), 0);
	assert_int_equal(directory_wait_ready(b, 5000), 0);
	assert_int_equal(directory_lease_acquire(a, &h, far, &holder), 0);
	assert_int_equal(directory_lease_acquire(b, &h, far, &holder), -EBUSY);
	assert_int_equal(holder, directory_node_id(a));
	/* renewed by a's thread well past its TTL (600 ms) */
	fx_sleep_ms(1500);
	assert_int_equal(directory_lease_acquire(b, &h, far, &holder), -EBUSY);
	/* b cannot release or break a live lease that is not its own */
	assert_int_equal(directory_lease_release(b, &h), -ENOENT);
	assert_int_equal(directory_lease_break(b, &h, directory_node_id(b)), -ENOENT);
	assert_int_equal(directory_lease_holder(b, &h, &holder), 0);
	assert_int_equal(holder, directory_node_id(a));
	/* the announce releases it in the same round trip */
	assert_int_equal(directory_announce(a, &h), 0);
	assert_int_equal(directory_lease_holder(b, &h, &holder), 0);
	assert_int_equal(holder, 0);
	assert_int_equal(directory_lease_acquire(b, &h, far, &holder), 0);
	assert_int_equal(directory_lease_release(b, &h), 0);
	directory_destroy(a);
	directory_destroy(b);
}

static void test_lease_stalled_holder_expires(void **state)
{
	struct directory *a = dir_new("a8", "r1", NULL), *b = dir_new("b8", "r1", NULL);
	struct directory_stats st;
	struct chunk_hash h;
	uint8_t buf[CHUNK];
	int64_t holder = -1;
	uint64_t t0;
	int rc = -1, i;

	fx_chunk(8, buf, sizeof(buf), &h);
	assert_int_equal(directory_wait_ready(a, 5000), 0);
	assert_int_equal(directory_wait_ready(b, 5000), 0);
	/* a's fetch may run 300 ms; after that a stops holding the lease */
	assert_int_equal(directory_lease_acquire(a, &h, now_ns() + 300 * 1000000ULL, &holder),
			 0);
	t0 = now_ns();
	for (i = 0; i < 100; i++) {
		rc = directory_lease_acquire(b, &h, now_ns() + 60000 * 1000000ULL, &holder);
		if (rc == 0)
			break;
		assert_int_equal(rc, -EBUSY);
		fx_sleep_ms(50);
	}
	assert_int_equal(rc, 0);
	/* hold time 300 ms + renew period 150 ms, far below the 5 s the loop allows */
	assert_true(fx_ms_since(t0) < 2000);
	directory_get_stats(a, &st);
	assert_true(st.leases_expired >= 1);
	directory_destroy(a);
	directory_destroy(b);
}

/* PTTL of key on c: -2 when the key is gone. */
static long long pttl(redisContext *c, const char *key)
{
	redisReply *r = redisCommand(c, "PTTL %s", key);
	long long v;

	assert_non_null(r);
	assert_int_equal(r->type, REDIS_REPLY_INTEGER);
	v = r->integer;
	freeReplyObject(r);
	return v;
}

/*
 * A re-announce after a reconnect takes a while on a large store (here one SADD per
 * round trip over many chunks: longer than a lease's TTL). The directory thread used to
 * make it before anything else, so meanwhile it renewed no lease and wrote no heartbeat:
 * other nodes then took over our leases (and fetched those chunks from the seed too) or
 * took us for dead. Both keys must live throughout.
 */
static void test_reannounce_keeps_heartbeat_and_leases(void **state)
{
	char sdir[64], hex[HASH_HEX_LEN + 1], lkey[128], akey[64];
	struct chunkstore_hooks hk = {0};
	struct chunkstore *cs = fx_store_open(sdir, hk);
	struct directory_stats st;
	static uint8_t buf[CHUNK];
	struct chunk_hash h, x;
	struct directory *a;
	redisContext *c;
	redisReply *r;
	uint64_t t0, took = 0, probe;
	uint32_t lease_ttl, hb_ttl;
	int64_t holder;
	unsigned i, n = 30000;

	assert_non_null(cs);
	for (i = 0; i < n; i++) {
		fx_chunk(50000 + i, buf, sizeof(buf), &x);
		assert_int_equal(chunkstore_insert(cs, &x, buf, sizeof(buf)), 0);
	}
	/* How long one such announce takes here: the TTLs are set well below it. */
	t0 = now_ns();
	a = dir_new_slow("p9", 300, 600);
	directory_attach_store(a, cs);
	assert_int_equal(directory_wait_ready(a, 60000), 0);
	probe = fx_ms_since(t0);
	directory_destroy(a);
	lease_ttl = (uint32_t)MAX(200, probe / 4);
	hb_ttl = (uint32_t)MAX(400, probe / 2);

	a = dir_new_slow("a9", lease_ttl, hb_ttl);
	directory_attach_store(a, cs);
	assert_int_equal(directory_wait_ready(a, 60000), 0);
	fx_chunk(9, buf, sizeof(buf), &h);
	assert_int_equal(directory_lease_acquire(a, &h, now_ns() + 120000 * 1000000ULL,
						 &holder), 0);
	hash_to_hex(&h, hex);
	snprintf(lkey, sizeof(lkey), "t:lease:%s", hex);
	snprintf(akey, sizeof(akey), "t:alive:%lld", (long long)directory_node_id(a));
	c = redisConnect("127.0.0.1", redis.port);
	assert_true(c && !c->err);
	directory_get_stats(a, &st);
	assert_int_equal(st.bulk_announced, n);
	/* drop a's connections, its node record gone (as in a FLUSHDB): it reconnects and
	 * re-announces all n chunks (a reconnect alone would not: Redis kept its entries) */
	r = redisCommand(c, "DEL t:node:%lld", (long long)directory_node_id(a));
	assert_non_null(r);
	freeReplyObject(r);
	r = redisCommand(c, "CLIENT KILL TYPE normal");
	assert_non_null(r);
	freeReplyObject(r);
	t0 = now_ns();
	do {
		assert_true(pttl(c, lkey) > 0);
		assert_true(pttl(c, akey) > 0);
		fx_sleep_ms(20);
		directory_get_stats(a, &st);
		if (st.bulk_announced >= 2 * n && !took)
			took = fx_ms_since(t0);
	} while ((!took || fx_ms_since(t0) < took + 2 * hb_ttl) && fx_ms_since(t0) < 60000);
	assert_true(took > 0);
	/* the re-announce outlasted the lease's TTL, or this proved nothing */
	if (took < 3 * lease_ttl / 2)
		fail_msg("the re-announce took %llu ms, the lease TTL is %u ms (the probe took "
			 "%llu ms)", (unsigned long long)took, lease_ttl,
			 (unsigned long long)probe);
	assert_true(st.reconnects >= 2);
	assert_int_equal(directory_lease_release(a, &h), 0);
	redisFree(c);
	directory_destroy(a);
	chunkstore_close(cs);
	fx_rm_rf(sdir);
}

static int first_fn(void *arg, const struct chunk_hash *h, uint32_t len)
{
	struct chunk_hash *first = arg;

	*first = *h;
	return 1; /* stop: the first one is enough */
}

/*
 * An error reply to one SADD of a bulk announce (here a key of the wrong type; in
 * production, Redis out of memory) used to end the announce there: every chunk after it
 * stayed unannounced until the next reconnect, while the node reported ready.
 */
static void test_bulk_announce_goes_on_after_an_error_reply(void **state)
{
	char sdir[64], hex[HASH_HEX_LEN + 1];
	struct chunkstore_hooks hk = {0};
	struct chunkstore *cs = fx_store_open(sdir, hk);
	struct directory_holder hd[4];
	static uint8_t buf[CHUNK];
	struct chunk_hash hs[10], first;
	struct directory *a, *b;
	redisContext *c;
	redisReply *r;
	int i, found = 0;

	assert_non_null(cs);
	for (i = 0; i < 10; i++) {
		fx_chunk(3000 + i, buf, sizeof(buf), &hs[i]);
		assert_int_equal(chunkstore_insert(cs, &hs[i], buf, sizeof(buf)), 0);
	}
	/* the first chunk the announce sends gets an error reply */
	assert_true(chunkstore_foreach(cs, first_fn, &first) >= 0);
	hash_to_hex(&first, hex);
	c = redisConnect("127.0.0.1", redis.port);
	assert_true(c && !c->err);
	r = redisCommand(c, "SET t:chunk:%s not-a-set", hex);
	assert_non_null(r);
	freeReplyObject(r);
	a = dir_new_slow("a10", 600, 1500); /* one SADD per batch */
	directory_attach_store(a, cs);
	b = dir_new("b10", "r1", NULL);
	assert_int_equal(directory_wait_ready(a, 5000), 0);
	assert_int_equal(directory_wait_ready(b, 5000), 0);
	for (i = 0; i < 10; i++) {
		if (!memcmp(&hs[i], &first, sizeof(first)))
			continue;
		assert_int_equal(directory_lookup(b, &hs[i], hd, 4), 1);
		found++;
	}
	assert_int_equal(found, 9);
	redisFree(c);
	directory_destroy(a);
	directory_destroy(b);
	chunkstore_close(cs);
	fx_rm_rf(sdir);
}

static uint64_t cpu_us(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000ULL +
		ru.ru_utime.tv_usec + ru.ru_stime.tv_usec;
}

/*
 * While Redis was unreachable the directory thread spun between its connection attempts
 * (its heartbeat timer, long due, made every wait zero): a whole core for as long as the
 * outage lasted. It sleeps until the next attempt now.
 */
static void test_no_busy_loop_while_redis_is_unreachable(void **state)
{
	char url[64];
	struct directory_opts o = {.node_name = "spin", .heartbeat_ttl_ms = 3000,
				   .heartbeat_interval_ms = 1000};
	struct directory *a;
	uint64_t c0, used;

	snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0", fx_free_port()); /* nobody */
	a = dir_create(&o, url);
	fx_sleep_ms(100);
	c0 = cpu_us();
	fx_sleep_ms(2000);
	used = cpu_us() - c0;
	directory_destroy(a);
	if (used > 300000)
		fail_msg("%llu ms of CPU in 2 s while Redis was unreachable",
			 (unsigned long long)used / 1000);
}

/* ---- a slow Redis: replies late, but within the command timeout ---- */

static struct directory *dir_via(const char *name, const struct fx_proxy *p)
{
	char url[128];
	struct directory_opts o = {
		.node_name = name, .rack = "r1", .prefix = "t:", .command_timeout_ms = 500,
		.connect_timeout_ms = 500, .heartbeat_ttl_ms = 2000, .heartbeat_interval_ms = 600,
		.lease_ttl_ms = 1500, .lease_renew_ms = 500,
	};

	snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0", p->port);
	return dir_create(&o, url);
}

struct looper {
	struct directory *d;
	unsigned seed;
	bool *stop;
	int rc;
	uint64_t ms;
};

/* One lookup, timed. */
static void *lookup_once(void *arg)
{
	struct looper *l = arg;
	struct directory_holder hd[4];
	uint8_t buf[64];
	struct chunk_hash h;
	uint64_t t0;

	fx_chunk(l->seed, buf, sizeof(buf), &h);
	t0 = now_ns();
	l->rc = directory_lookup(l->d, &h, hd, 4);
	l->ms = fx_ms_since(t0);
	return NULL;
}

/* Lookups until *stop, as the fetch workers of a busy node make them. */
static void *lookup_loop(void *arg)
{
	struct looper *l = arg;

	while (!__atomic_load_n(l->stop, __ATOMIC_RELAXED))
		lookup_once(l);
	return NULL;
}

/*
 * Every call shared one connection behind one lock, and only the reply had a timeout: ten
 * callers on a Redis answering in 200 ms queued for up to 2 s. A call now waits for its
 * turn no longer than the command timeout, and then goes to the seed (-EAGAIN, counted).
 */
static void test_wait_for_a_busy_connection_is_bounded(void **state)
{
	struct fx_proxy px = {.target = redis.port, .down_ms = 200};
	struct looper l[10];
	pthread_t t[10];
	struct directory_stats st;
	struct directory *a;
	uint64_t worst = 0;
	int i, busy = 0;

	assert_int_equal(fx_proxy_start(&px), 0);
	a = dir_via("a11", &px);
	assert_int_equal(directory_wait_ready(a, 5000), 0);
	for (i = 0; i < 10; i++) {
		l[i] = (struct looper){.d = a, .seed = 100 + i};
		assert_int_equal(pthread_create(&t[i], NULL, lookup_once, &l[i]), 0);
	}
	for (i = 0; i < 10; i++) {
		pthread_join(t[i], NULL);
		worst = MAX(worst, l[i].ms);
		if (l[i].rc == -EAGAIN)
			busy++;
		else
			assert_int_equal(l[i].rc, 0);
	}
	/* at most the command timeout for the turn, plus one 200 ms reply */
	if (worst > 1000)
		fail_msg("a lookup took %llu ms (command timeout 500 ms)",
			 (unsigned long long)worst);
	assert_true(busy >= 1);
	directory_get_stats(a, &st);
	assert_int_equal(st.busy_fails, busy);
	assert_true(st.connected); /* a busy connection is not a broken one */
	directory_destroy(a);
	fx_proxy_stop(&px);
}

/*
 * The heartbeat and the lease renewals queued behind the fetch workers' calls on the one
 * connection: with a dozen workers on a Redis answering in 200 ms, a live node's lease
 * expired (another node would take it over and fetch the chunk from the seed too) and
 * its heartbeat lapsed (peers would take it for dead). Both live throughout now.
 */
static void test_busy_connection_keeps_heartbeat_and_leases(void **state)
{
	struct fx_proxy px = {.target = redis.port, .down_ms = 200};
	char hex[HASH_HEX_LEN + 1], lkey[128], akey[64];
	struct looper l[12];
	pthread_t t[12];
	struct directory_stats st;
	struct directory *a;
	struct chunk_hash h;
	uint8_t buf[64];
	long long lease_ttl = 1, hb_ttl = 1;
	int64_t holder;
	bool stop = false;
	redisContext *c;
	uint64_t t0;
	int i;

	assert_int_equal(fx_proxy_start(&px), 0);
	a = dir_via("a12", &px);
	assert_int_equal(directory_wait_ready(a, 5000), 0);
	fx_chunk(12, buf, sizeof(buf), &h);
	assert_int_equal(directory_lease_acquire(a, &h, now_ns() + 60000 * 1000000ULL, &holder),
			 0);
	hash_to_hex(&h, hex);
	snprintf(lkey, sizeof(lkey), "t:lease:%s", hex);
	snprintf(akey, sizeof(akey), "t:alive:%lld", (long long)directory_node_id(a));
	c = redisConnect("127.0.0.1", redis.port);
	assert_true(c && !c->err);
	for (i = 0; i < 12; i++) {
		l[i] = (struct looper){.d = a, .seed = 200 + i, .stop = &stop};
		assert_int_equal(pthread_create(&t[i], NULL, lookup_loop, &l[i]), 0);
	}
	/* 5 s: more than three lease TTLs and two heartbeat TTLs */
	t0 = now_ns();
	while (fx_ms_since(t0) < 5000 && lease_ttl > 0 && hb_ttl > 0) {
		lease_ttl = pttl(c, lkey);
		hb_ttl = pttl(c, akey);
		fx_sleep_ms(50);
	}
	__atomic_store_n(&stop, true, __ATOMIC_RELAXED);
	for (i = 0; i < 12; i++)
		pthread_join(t[i], NULL);
	directory_get_stats(a, &st);
	if (lease_ttl <= 0 || hb_ttl <= 0)
		fail_msg("after %llu ms the lease's PTTL is %lld, the heartbeat's %lld "
			 "(renewed %llu)", (unsigned long long)fx_ms_since(t0), lease_ttl, hb_ttl,
			 (unsigned long long)st.leases_renewed);
	assert_true(st.leases_renewed >= 5);
	assert_int_equal(st.leases_expired, 0);
	assert_int_equal(directory_lease_release(a, &h), 0);
	redisFree(c);
	directory_destroy(a);
	fx_proxy_stop(&px);
}

/* ---- two appliances configured with the same node name ---- */

static struct directory *dir_named(const char *name, const char *advertise)
{
	char url[128];
	struct directory_opts o = {
		.url = url, .node_name = name, .advertise = advertise, .rack = "r1",
		.prefix = "t:", .heartbeat_ttl_ms = 1500, .heartbeat_interval_ms = 300,
		.lease_ttl_ms = 600, .lease_renew_ms = 150,
	};
	struct directory *d = NULL;

	fx_redis_url(&redis, 0, url, sizeof(url));
	assert_int_equal(directory_create(&o, &d), 0);
	return d;
}

static bool name_conflict(struct directory *d)
{
	struct directory_stats st;

	directory_get_stats(d, &st);
	return st.name_conflict;
}

/*
 * Two appliances given one node name shared one node id: both won every lease (both
 * fetched from the seed), either could withdraw or release the other's entries, and the
 * heartbeat's address flipped between them; nothing was logged. The second one, at
 * another address, now stays out (and says why) until the first has gone.
 */
static void test_same_name_at_another_address_stays_out(void **state)
{
	struct directory *a = dir_named("twin", "127.0.0.1:1111"), *b, *c;
	struct directory_holder hd[4];
	struct chunk_hash h;
	uint8_t buf[64];
	int64_t holder = 0, ida;
	int i;

	fx_chunk(21, buf, sizeof(buf), &h);
	c = dir_named("other", "127.0.0.1:3333");
	assert_int_equal(directory_wait_ready(a, 5000), 0);
	assert_int_equal(directory_wait_ready(c, 5000), 0);
	ida = directory_node_id(a);
	b = dir_named("twin", "127.0.0.1:2222");
	assert_int_equal(directory_wait_ready(b, 1500), -ETIMEDOUT);
	assert_true(name_conflict(b));
	assert_false(name_conflict(a));
	assert_int_equal(directory_node_id(b), -1);
	/* only a holds the lease, and b cannot touch a's holder entries */
	assert_int_equal(directory_lease_acquire(a, &h, now_ns() + 60000 * 1000000ULL, &holder),
			 0);
	assert_int_not_equal(directory_lease_acquire(b, &h, now_ns() + 60000 * 1000000ULL,
						     &holder), 0);
	assert_int_equal(directory_announce(a, &h), 0);
	assert_int_not_equal(directory_withdraw(b, &h), 0);
	for (i = 0; i < 5; i++) { /* a few of b's retries: a's heartbeat stays a's */
		assert_int_equal(directory_lookup(c, &h, hd, 4), 1);
		assert_string_equal(hd[0].addr, "127.0.0.1:1111");
		fx_sleep_ms(200);
	}
	/* a leaves: b joins at its next try, under the name's id */
	directory_destroy(a);
	assert_int_equal(directory_wait_ready(b, 3000), 0);
	assert_false(name_conflict(b));
	assert_int_equal(directory_node_id(b), ida);
	directory_destroy(b);
	directory_destroy(c);
}

/*
 * The same name at the same address is this appliance restarted (its old heartbeat may
 * still be live after a crash): it joins at once. Should the old process still run, it
 * finds its heartbeat replaced, leaves, and can no longer renew or free the leases, or
 * delete the heartbeat, of the new one.
 */
static void test_same_name_same_address_joins_and_the_old_one_leaves(void **state)
{
	struct directory *a = dir_named("re", "127.0.0.1:4444"), *b;
	char hex[HASH_HEX_LEN + 1], lkey[128], akey[64];
	struct directory_holder hd[4];
	struct chunk_hash h;
	uint8_t buf[64];
	int64_t holder = 0;
	redisContext *c;
	uint64_t t0;

	fx_chunk(22, buf, sizeof(buf), &h);
	hash_to_hex(&h, hex);
	snprintf(lkey, sizeof(lkey), "t:lease:%s", hex);
	assert_int_equal(directory_wait_ready(a, 5000), 0);
	snprintf(akey, sizeof(akey), "t:alive:%lld", (long long)directory_node_id(a));
	assert_int_equal(directory_lease_acquire(a, &h, now_ns() + 60000 * 1000000ULL, &holder),
			 0);
	t0 = now_ns();
	b = dir_named("re", "127.0.0.1:4444");
	assert_int_equal(directory_wait_ready(b, 5000), 0);
	assert_true(fx_ms_since(t0) < 1000); /* at once, not after the old heartbeat's TTL */
	assert_int_equal(directory_node_id(b), directory_node_id(a));
	/* b's fetch of h takes over the lease of its "previous run"; a's release of its own
	 * leaves b's alone */
	assert_int_equal(directory_lease_acquire(b, &h, now_ns() + 60000 * 1000000ULL, &holder),
			 0);
	c = redisConnect("127.0.0.1", redis.port);
	assert_true(c && !c->err);
	directory_lease_release(a, &h);
	assert_true(pttl(c, lkey) > 0);
	/* a notices at its next heartbeat and stays out */
	for (t0 = now_ns(); !name_conflict(a) && fx_ms_since(t0) < 3000;)
		fx_sleep_ms(20);
	assert_true(name_conflict(a));
	assert_int_equal(directory_wait_ready(a, 700), -ETIMEDOUT);
	assert_int_equal(directory_lookup(a, &h, hd, 4), -ENOTCONN); /* reads: the seed */
	assert_false(name_conflict(b));
	/* and its leave does not delete b's heartbeat */
	directory_leave(a);
	assert_true(pttl(c, akey) > 0);
	assert_int_equal(directory_lease_holder(b, &h, &holder), 0);
	assert_int_equal(holder, directory_node_id(b));
	assert_int_equal(directory_lease_release(b, &h), 0);
	redisFree(c);
	directory_destroy(a);
	directory_destroy(b);
}

static int last_fn(void *arg, const struct chunk_hash *h, uint32_t len)
{
	struct chunk_hash *last = arg;

	*last = *h;
	return 0;
}

/*
 * The bulk announce sends a snapshot of the store. A chunk evicted after the snapshot, its
 * withdraw done before the announce reached it, was announced anyway and stayed listed
 * for good: peers asked this node for a chunk it did not have. Here the last chunk the
 * announce sends is dropped (as a missing file is) while the announce is under way,
 * slowed by a proxy that holds each reply 1 ms.
 */
static void test_chunk_dropped_during_bulk_announce_is_not_listed(void **state)
{
	struct fx_proxy px = {.target = redis.port, .down_ms = 1};
	struct chunkstore_hooks hk = {.announce = hook_announce, .withdraw = hook_withdraw};
	char sdir[64], path[4096], url[128];
	struct chunkstore *cs = fx_store_open(sdir, hk);
	struct directory_opts o = {
		.url = url, .node_name = "a13", .advertise = "127.0.0.1:1313", .prefix = "t:",
		.heartbeat_ttl_ms = 3000, .heartbeat_interval_ms = 1000, .lease_ttl_ms = 600,
		.lease_renew_ms = 150, .announce_batch = 1,
	};
	struct directory_holder hd[4];
	struct directory_stats st = {0};
	static uint8_t buf[CHUNK];
	struct chunk_hash first, last;
	struct directory *a, *b;
	unsigned i, n = 1500;
	uint64_t t0;

	assert_non_null(cs);
	for (i = 0; i < n; i++) {
		fx_chunk(60000 + i, buf, sizeof(buf), &last);
		assert_int_equal(chunkstore_insert(cs, &last, buf, sizeof(buf)), 0);
	}
	assert_true(chunkstore_foreach(cs, first_fn, &first) >= 0);
	assert_true(chunkstore_foreach(cs, last_fn, &last) >= 0); /* sent last */
	assert_int_equal(fx_proxy_start(&px), 0);
	snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0", px.port);
	assert_int_equal(directory_create(&o, &a), 0);
	hooked = a;
	directory_attach_store(a, cs);
	for (t0 = now_ns(); st.bulk_announced < 10 && fx_ms_since(t0) < 10000;) {
		fx_sleep_ms(5);
		directory_get_stats(a, &st);
	}
	assert_true(st.bulk_announced >= 10 && st.bulk_announced < n / 2);
	chunkstore_path(cs, &last, path, sizeof(path));
	assert_int_equal(unlink(path), 0);
	assert_int_equal(chunkstore_recheck(cs, &last), 1); /* dropped: withdrawn */
	assert_false(chunkstore_contains(cs, &last));
	assert_int_equal(directory_wait_ready(a, 30000), 0);
	b = dir_new("b13", "r1", NULL);
	assert_int_equal(directory_wait_ready(b, 5000), 0);
	assert_int_equal(directory_lookup(b, &first, hd, 4), 1);
	assert_int_equal(directory_lookup(b, &last, hd, 4), 0);
	hooked = NULL;
	directory_destroy(a);
	directory_destroy(b);
	fx_proxy_stop(&px);
	chunkstore_close(cs);
	fx_rm_rf(sdir);
}

/*
 * The reconnect installed its new shared connection, let go of the lock, and only then
 * took the connection generation it compares before reporting ready: a caller that broke
 * the new connection in between left the directory ready with no connection, every call
 * failing with -ENOTCONN for good while it read connected. Here the directory thread is
 * parked (stderr held) in the log line of its registration, which a new node id makes;
 * the test then holds the thread's lock, so the thread stops at its next use of it, and
 * breaks the new connection as a caller does (dir_fail_locked under d->lock: the
 * connection dropped and conn_gen counted), by hand, as it holds the lock dir_set_broken
 * takes. The fixed thread takes the generation under d->lock before it installs the
 * connection, so it stops there still holding d->lock: no caller can break it meanwhile.
 */
static void test_broken_during_reconnect_is_not_ready(void **state)
{
	struct directory *a = dir_new("a14", "r1", NULL);
	char hex[HASH_HEX_LEN + 1];
	struct directory_holder hd[4];
	struct directory_stats st;
	struct stderr_hold hold;
	struct timespec ts;
	struct chunk_hash h;
	uint8_t buf[64];
	redisContext *c;
	redisReply *kill;
	uint64_t r0;
	bool held, broke = false;
	int i, rc = -1;

	fx_chunk(14, buf, sizeof(buf), &h);
	hash_to_hex(&h, hex);
	assert_int_equal(directory_wait_ready(a, 5000), 0);
	c = redisConnect("127.0.0.1", redis.port);
	assert_true(c && !c->err);
	/* an error reply, logged now: the heartbeat's failure below is not (rate limit) */
	redis_do(c, "SET t:chunk:%s not-a-set", hex);
	assert_int_equal(directory_lookup(a, &h, hd, 4), -EIO);
	redis_do(c, "DEL t:chunk:%s", hex);
	/* the next registration hands out a new id, and says so (a warning) */
	redis_do(c, "HDEL t:nodes:byname a14");
	directory_get_stats(a, &st);
	r0 = st.reconnects;
	assert_int_equal(stderr_hold(&hold), 0);
	kill = redisCommand(c, "CLIENT KILL TYPE normal");
	held = stderr_hold_wait_blocked(5000);
	pthread_mutex_lock(&a->thread_lock);
	stderr_hold_restore(&hold);
	for (i = 0; i < 100; i++) {
		stderr_hold_drain(&hold);
		directory_get_stats(a, &st);
		if (st.reconnects > r0)
			break;
		usleep(10000);
	}
	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += 1;
	if (st.reconnects > r0 && !pthread_mutex_clocklock(&a->lock, CLOCK_MONOTONIC, &ts)) {
		if (a->ctx)
			redisFree(a->ctx);
		a->ctx = NULL;
		a->ready = false;
		a->conn_gen++;
		broke = true;
		pthread_mutex_unlock(&a->lock);
	}
	pthread_mutex_unlock(&a->thread_lock);
	for (i = 0; i < 100; i++) {
		stderr_hold_drain(&hold);
		usleep(5000);
	}
	stderr_hold_close(&hold);
	assert_non_null(kill);
	freeReplyObject(kill);
	assert_true(held);
	/* ready again, and then with a connection the callers can use */
	for (i = 0; i < 100 && rc < 0; i++) {
		if (directory_wait_ready(a, 100) == 0)
			rc = directory_lookup(a, &h, hd, 4);
		fx_sleep_ms(20);
	}
	if (rc < 0)
		fail_msg("lookup: %s after the reconnect (ready: %d, the test broke the new "
			 "connection: %d)", strerror(-rc), directory_wait_ready(a, 0) == 0, broke);
	assert_int_equal(rc, 0);
	directory_get_stats(a, &st);
	assert_true(st.connected);
	redisFree(c);
	directory_destroy(a);
}

/*
 * directory_wait_ready() promises the attached store announced, but a store attached
 * while ready was announced after the thread had cleared its "announce due" flag, with
 * ready true all along: wait_ready returned while that announce was under way
 * (tests/tools/cluster_node.c attaches the store just before it waits). The announce is
 * slowed here by a proxy holding each reply 1 ms, one SADD per round trip.
 */
static void test_wait_ready_waits_for_a_late_store_announce(void **state)
{
	struct fx_proxy px = {.target = redis.port, .down_ms = 1};
	struct chunkstore_hooks hk = {0};
	char sdir[64], url[128];
	struct chunkstore *cs = fx_store_open(sdir, hk);
	struct directory_opts o = {
		.url = url, .node_name = "a15", .advertise = "127.0.0.1:1515", .prefix = "t:",
		.heartbeat_ttl_ms = 3000, .heartbeat_interval_ms = 1000, .lease_ttl_ms = 600,
		.lease_renew_ms = 150, .announce_batch = 1,
	};
	struct directory_stats st = {0};
	static uint8_t buf[CHUNK];
	struct chunk_hash h;
	struct directory *a;
	unsigned i, n = 1000;
	uint64_t t0;

	assert_non_null(cs);
	for (i = 0; i < n; i++) {
		fx_chunk(70000 + i, buf, sizeof(buf), &h);
		assert_int_equal(chunkstore_insert(cs, &h, buf, sizeof(buf)), 0);
	}
	assert_int_equal(fx_proxy_start(&px), 0);
	snprintf(url, sizeof(url), "redis://127.0.0.1:%d/0", px.port);
	assert_int_equal(directory_create(&o, &a), 0);
	assert_int_equal(directory_wait_ready(a, 5000), 0); /* no store yet */
	directory_attach_store(a, cs);
	for (t0 = now_ns(); st.bulk_announced < 10 && fx_ms_since(t0) < 10000;) {
		fx_sleep_ms(2);
		directory_get_stats(a, &st);
	}
	assert_true(st.bulk_announced >= 10 && st.bulk_announced < n);
	assert_int_equal(directory_wait_ready(a, 30000), 0);
	directory_get_stats(a, &st);
	assert_int_equal(st.bulk_announced, n);
	directory_destroy(a);
	fx_proxy_stop(&px);
	chunkstore_close(cs);
	fx_rm_rf(sdir);
}

/* The id Redis holds for node name in nodes:byname (-1: none, -2: not a number). */
static long long id_by_name(redisContext *c, const char *name)
{
	redisReply *r = redisCommand(c, "HGET t:nodes:byname %s", name);
	long long v = -1;
	char *end;

	assert_non_null(r);
	if (r->type == REDIS_REPLY_STRING) {
		v = strtoll(r->str, &end, 10);
		if (*end)
			v = -2;
	}
	freeReplyObject(r);
	return v;
}

/*
 * A new node name took INCR nodes:next and stored name -> id before looking whether the
 * id was in use: with nodes:next lost while nodes live, the new node got a live node's id
 * and was kept out as a "name conflict" for good, its log naming that other appliance. An
 * id stored for a name that is not a number made the registration answer nil: the node
 * never joined, and nothing was logged or counted. A new id is now one no node has (no
 * heartbeat, no record), stored once the node joins; a stored id that is not a positive
 * number, or whose record names another node (as the old code could leave), is replaced
 * (logged, counted in errors).
 */
static void test_register_skips_ids_in_use_and_replaces_bad_ones(void **state)
{
	struct directory *a = dir_new("a16", "r1", NULL), *b, *g, *x;
	struct directory_stats st;
	redisContext *c;
	int64_t ida;

	assert_int_equal(directory_wait_ready(a, 5000), 0);
	ida = directory_node_id(a);
	c = redisConnect("127.0.0.1", redis.port);
	assert_true(c && !c->err);
	/* nodes:next lost while a lives: the next INCR hands out a's id */
	redis_do(c, "DEL t:nodes:next");
	b = dir_new("b16", "r1", NULL);
	assert_int_equal(directory_wait_ready(b, 3000), 0);
	assert_false(name_conflict(b));
	assert_true(directory_node_id(b) >= 1);
	assert_int_not_equal(directory_node_id(b), ida);
	assert_int_equal(id_by_name(c, "b16"), directory_node_id(b));
	/* not a number */
	redis_do(c, "HSET t:nodes:byname g16 not-a-number");
	g = dir_new("g16", "r1", NULL);
	assert_int_equal(directory_wait_ready(g, 3000), 0);
	assert_true(directory_node_id(g) >= 1);
	assert_int_not_equal(directory_node_id(g), ida);
	assert_int_not_equal(directory_node_id(g), directory_node_id(b));
	assert_int_equal(id_by_name(c, "g16"), directory_node_id(g));
	directory_get_stats(g, &st);
	assert_true(st.errors >= 1);
	/* a's id stored for another name */
	redis_do(c, "HSET t:nodes:byname x16 %lld", (long long)ida);
	x = dir_new("x16", "r1", NULL);
	assert_int_equal(directory_wait_ready(x, 3000), 0);
	assert_false(name_conflict(x));
	assert_int_not_equal(directory_node_id(x), ida);
	assert_int_equal(id_by_name(c, "x16"), directory_node_id(x));
	/* and a, untouched, keeps its id across a restart */
	assert_false(name_conflict(a));
	directory_destroy(a);
	a = dir_new("a16", "r1", NULL);
	assert_int_equal(directory_wait_ready(a, 3000), 0);
	assert_int_equal(directory_node_id(a), ida);
	redisFree(c);
	directory_destroy(a);
	directory_destroy(b);
	directory_destroy(g);
	directory_destroy(x);
}

/*
 * A reconnect of the shared connection alone skipped the registration: after Redis
 * restarted empty, a node whose heartbeat connection had not noticed yet re-announced its
 * store under its old id, which Redis may have handed to another node meanwhile (which
 * could also take over its "<id>:<instance>" leases as its own). Every reconnect now
 * registers first. a's heartbeat comes every 5 s here, so a call of a's notices the
 * restart first.
 */
static void test_reconnect_after_an_empty_restart_registers_first(void **state)
{
	struct directory_opts o = {
		.node_name = "a17", .rack = "r1", .prefix = "t:", .heartbeat_ttl_ms = 15000,
		.heartbeat_interval_ms = 5000, .lease_ttl_ms = 600, .lease_renew_ms = 150,
	};
	struct directory *a = dir_create(&o, NULL), *b, *c;
	char sdir[64];
	struct chunkstore *cs = fx_store_open(sdir, directory_store_hooks(a));
	struct directory_holder hd[4];
	static uint8_t buf[CHUNK];
	struct chunk_hash h;
	int64_t ida;

	assert_non_null(cs);
	fx_chunk(17, buf, sizeof(buf), &h);
	assert_int_equal(chunkstore_insert(cs, &h, buf, sizeof(buf)), 0);
	directory_attach_store(a, cs);
	assert_int_equal(directory_wait_ready(a, 5000), 0);
	ida = directory_node_id(a);
	/* Redis restarts with nothing in it: c registers first and gets a's id */
	fx_redis_stop(&redis);
	assert_int_equal(fx_redis_start(&redis), 0);
	c = dir_new("c17", "r1", NULL);
	assert_int_equal(directory_wait_ready(c, 3000), 0);
	assert_int_equal(directory_node_id(c), ida);
	b = dir_new("b17", "r1", NULL);
	assert_int_equal(directory_wait_ready(b, 3000), 0);
	/* a's next call finds the shared connection broken: a reconnects (unless its
	 * heartbeat found it first, on a slow machine) */
	directory_lookup(a, &h, hd, 4);
	assert_int_equal(directory_wait_ready(a, 3000), 0);
	assert_int_not_equal(directory_node_id(a), directory_node_id(c));
	assert_int_equal(directory_lookup(b, &h, hd, 4), 1);
	assert_string_equal(hd[0].name, "a17");
	directory_destroy(a);
	directory_destroy(b);
	directory_destroy(c);
	chunkstore_close(cs);
	fx_rm_rf(sdir);
}

/* Keeps Redis busy: a script that runs for ms milliseconds, on a connection of its own. */
struct busy {
	unsigned ms;
	int rc;
};

static void *busy_redis(void *arg)
{
	static const char spin[] =
		"local t0 = redis.call('TIME') "
		"local s0 = t0[1] * 1000000 + t0[2] "
		"repeat local t = redis.call('TIME') "
		"until t[1] * 1000000 + t[2] - s0 >= tonumber(ARGV[1]) * 1000 "
		"return 0";
	struct busy *b = arg;
	redisContext *c = redisConnect("127.0.0.1", redis.port);
	redisReply *r = c && !c->err ? redisCommand(c, "EVAL %s 0 %u", spin, b->ms) : NULL;

	b->rc = r && r->type == REDIS_REPLY_INTEGER ? 0 : -1;
	if (r)
		freeReplyObject(r);
	if (c)
		redisFree(c);
	return NULL;
}

/* Waits (at most ms) until d has made more than r0 connections and is ready. */
static bool reconnected(struct directory *d, uint64_t r0, unsigned ms)
{
	struct directory_stats st;
	uint64_t t0 = now_ns();

	do {
		directory_get_stats(d, &st);
		if (st.reconnects > r0 && directory_wait_ready(d, 0) == 0)
			return true;
		fx_sleep_ms(10);
	} while (fx_ms_since(t0) < ms);
	return false;
}

/*
 * A reply timeout (Redis busy for a moment) drops the connection, and the reconnect
 * re-announced the whole store: about 3.6 s of Redis work per million chunks per
 * appliance, every appliance at once during a latency spike. A reconnect now announces in
 * full only when Redis lost this node's entries (another run_id: restarted; or the mark a
 * full announce leaves in the node record is gone) and otherwise syncs only the chunks
 * whose announce or withdraw failed meanwhile. Here a script keeps Redis busy 900 ms: a
 * lookup times out (500 ms), and a chunk stored and one dropped meanwhile are synced
 * after. A connection killed with Redis intact announces nothing in bulk either; the node
 * record deleted (FLUSHDB, say) makes the node announce in full again.
 */
static void test_timeout_reconnect_replays_instead_of_reannouncing(void **state)
{
	struct chunkstore_hooks hk = {.announce = hook_announce, .withdraw = hook_withdraw};
	char sdir[64], path[4096];
	struct chunkstore *cs = fx_store_open(sdir, hk);
	struct directory_holder hd[4];
	struct directory_stats st;
	static uint8_t buf[CHUNK];
	struct chunk_hash h, late, gone;
	struct busy busy = {.ms = 900, .rc = -1};
	struct directory *a, *b;
	redisContext *c;
	redisReply *rep;
	pthread_t t;
	unsigned i, n = 2000;
	uint64_t r0;

	assert_non_null(cs);
	for (i = 0; i < n; i++) {
		fx_chunk(80000 + i, buf, sizeof(buf), &h);
		assert_int_equal(chunkstore_insert(cs, &h, buf, sizeof(buf)), 0);
		if (i == 0)
			gone = h;
	}
	a = dir_new("a18", "r1", NULL);
	hooked = a;
	directory_attach_store(a, cs);
	b = dir_new("b18", "r1", NULL);
	assert_int_equal(directory_wait_ready(a, 5000), 0);
	assert_int_equal(directory_wait_ready(b, 5000), 0);
	directory_get_stats(a, &st);
	assert_int_equal(st.bulk_announced, n);
	r0 = st.reconnects;

	assert_int_equal(pthread_create(&t, NULL, busy_redis, &busy), 0);
	fx_sleep_ms(100);
	assert_int_equal(directory_lookup(a, &h, hd, 4), -ENOTCONN); /* the reply timed out */
	/* while a is reconnecting: one chunk stored, one dropped (announce, withdraw fail) */
	fx_chunk(89999, buf, sizeof(buf), &late);
	assert_int_equal(chunkstore_insert(cs, &late, buf, sizeof(buf)), 0);
	chunkstore_path(cs, &gone, path, sizeof(path));
	assert_int_equal(unlink(path), 0);
	assert_int_equal(chunkstore_recheck(cs, &gone), 1);
	pthread_join(t, NULL);
	assert_int_equal(busy.rc, 0);
	assert_true(reconnected(a, r0, 5000));
	assert_int_equal(directory_lookup(b, &late, hd, 4), 1);
	assert_int_equal(directory_lookup(b, &gone, hd, 4), 0);
	assert_int_equal(directory_lookup(b, &h, hd, 4), 1);
	directory_get_stats(a, &st);
	assert_int_equal(st.bulk_announced, n); /* not 2n */
	assert_true(st.replayed >= 2);

	/* a connection killed, Redis intact: nothing announced in bulk either */
	r0 = st.reconnects;
	c = redisConnect("127.0.0.1", redis.port);
	assert_true(c && !c->err);
	redis_do(c, "CLIENT KILL TYPE normal");
	directory_lookup(a, &h, hd, 4);
	assert_true(reconnected(a, r0, 5000));
	directory_get_stats(a, &st);
	assert_int_equal(st.bulk_announced, n);

	/* the node record gone (a FLUSHDB would take the holder sets too): in full again */
	redis_do(c, "DEL t:node:%lld", (long long)directory_node_id(a));
	for (r0 = now_ns(); st.bulk_announced < 2 * n && fx_ms_since(r0) < 5000;) {
		fx_sleep_ms(10);
		directory_get_stats(a, &st);
	}
	assert_int_equal(st.bulk_announced, 2 * n); /* the store still holds n chunks */
	assert_int_equal(directory_wait_ready(a, 5000), 0);
	rep = redisCommand(c, "EXISTS t:node:%lld", (long long)directory_node_id(a));
	assert_true(rep && rep->type == REDIS_REPLY_INTEGER && rep->integer == 1);
	freeReplyObject(rep);
	hooked = NULL;
	redisFree(c);
	directory_destroy(a);
	directory_destroy(b);
	chunkstore_close(cs);
	fx_rm_rf(sdir);
}

/*
 * A Redis restarted from a snapshot still has this node's record and the mark of its
 * last full announce, but not what was announced after the snapshot: another run_id makes
 * the node announce in full all the same.
 */
/* A store in a new temporary directory holding chunk seed: *h its hash. */
static struct chunkstore *store_with(char dir[64], unsigned seed, struct chunk_hash *h)
{
	struct chunkstore_hooks hk = {0};
	struct chunkstore *cs = fx_store_open(dir, hk);
	static uint8_t buf[CHUNK];

	assert_non_null(cs);
	fx_chunk(seed, buf, sizeof(buf), h);
	assert_int_equal(chunkstore_insert(cs, h, buf, sizeof(buf)), 0);
	return cs;
}

/* Whether *h's only holder, looked up from d, is named name (and not node id not). */
static bool held_only_by(struct directory *d, const struct chunk_hash *h, const char *name,
			 int64_t not)
{
	struct directory_holder hd[4];

	return directory_lookup(d, h, hd, 4) == 1 && !strcmp(hd[0].name, name) &&
	       hd[0].node_id != not;
}

/*
 * After a FLUSHALL a node kept its old id until its next heartbeat, while a node that
 * registered again meanwhile could be given that id: the first one's withdraws then
 * removed the other's entries and its announces listed chunks under the other's id;
 * and at its heartbeat, finding the other's heartbeat under the id, it took that for a
 * second appliance with its name, logged a name conflict and stayed out. Here a1 and a2
 * (ids 1 and 2) have a slow heartbeat, b1 and b2 a fast one: after the FLUSHALL b1 and
 * b2 register again first and get ids 1 and 2. a1 then writes under its old id (and
 * finds it lost doing so); a2 finds it lost at its heartbeat. Both register again under
 * new ids, without a conflict, and announce their stores in full.
 */
static void test_flush_does_not_let_an_old_id_write_over_a_new_owner(void **state)
{
	struct directory_opts slow = {
		.rack = "r1", .prefix = "t:", .heartbeat_ttl_ms = 20000,
		.heartbeat_interval_ms = 6000, .lease_ttl_ms = 600, .lease_renew_ms = 150,
	};
	struct directory *a1, *a2, *b1, *b2, *bx, *by;
	struct log_capture lc;
	struct chunk_hash s1, s2, h, h2;
	struct chunkstore *cs1, *cs2;
	struct directory_stats st;
	char dir1[64], dir2[64];
	static uint8_t buf[CHUNK];
	int64_t id1, id2;
	redisContext *c;
	uint64_t t0;

	cs1 = store_with(dir1, 901, &s1);
	cs2 = store_with(dir2, 902, &s2);
	slow.node_name = "a1";
	a1 = dir_create(&slow, NULL);
	directory_attach_store(a1, cs1);
	assert_int_equal(directory_wait_ready(a1, 5000), 0);
	slow.node_name = "a2";
	a2 = dir_create(&slow, NULL);
	directory_attach_store(a2, cs2);
	assert_int_equal(directory_wait_ready(a2, 5000), 0);
	b1 = dir_new("b1", "r1", NULL);
	b2 = dir_new("b2", "r1", NULL);
	assert_int_equal(directory_wait_ready(b1, 5000), 0);
	assert_int_equal(directory_wait_ready(b2, 5000), 0);
	id1 = directory_node_id(a1);
	id2 = directory_node_id(a2);
	assert_int_equal(id1, 1);
	assert_int_equal(id2, 2);

	c = redisConnect("127.0.0.1", redis.port);
	assert_true(c && !c->err);
	log_capture_start(&lc);
	redis_do(c, "FLUSHALL");
	/* b1 and b2 notice at their next heartbeat (300 ms) and take ids 1 and 2 */
	for (t0 = now_ns(); fx_ms_since(t0) < 3000; fx_sleep_ms(10))
		if (directory_node_id(b1) + directory_node_id(b2) == 3 &&
		    directory_wait_ready(b1, 0) == 0 && directory_wait_ready(b2, 0) == 0)
			break;
	assert_int_equal(directory_node_id(b1) + directory_node_id(b2), 3);
	assert_true(fx_ms_since(t0) < 3000); /* long before a1's and a2's next heartbeat */
	bx = directory_node_id(b1) == id1 ? b1 : b2; /* now has a1's old id */
	by = bx == b1 ? b2 : b1;

	/* a1's withdraw under its old id leaves bx's entry alone */
	fx_chunk(903, buf, sizeof(buf), &h);
	assert_int_equal(directory_announce(bx, &h), 0);
	assert_true(held_only_by(by, &h, bx == b1 ? "b1" : "b2", -1));
	assert_int_not_equal(directory_withdraw(a1, &h), 0);
	assert_true(held_only_by(by, &h, bx == b1 ? "b1" : "b2", -1));
	/* and its announce lists nothing under bx's id: refused, or under a1's new id */
	fx_chunk(904, buf, sizeof(buf), &h2);
	directory_announce(a1, &h2);
	{
		struct directory_holder hd[4];
		int n = directory_lookup(by, &h2, hd, 4);

		assert_true(n == 0 || (n == 1 && !strcmp(hd[0].name, "a1") &&
				       hd[0].node_id != id1));
	}

	/* both register again, under new ids, and announce their stores in full */
	assert_int_equal(directory_wait_ready(a1, 5000), 0);
	assert_true(directory_node_id(a1) > 2);
	for (t0 = now_ns(); fx_ms_since(t0) < 10000; fx_sleep_ms(20))
		if (directory_node_id(a2) > 2 && directory_wait_ready(a2, 0) == 0)
			break;
	assert_true(directory_node_id(a2) > 2);
	assert_int_equal(directory_wait_ready(a2, 5000), 0);
	assert_true(held_only_by(b1, &s1, "a1", id1));
	assert_true(held_only_by(b1, &s2, "a2", id2));
	/* no name conflict was taken for one, at any time */
	assert_int_equal(log_capture_end(&lc, "node name"), 0);
	directory_get_stats(a1, &st);
	assert_false(st.name_conflict);
	directory_get_stats(a2, &st);
	assert_false(st.name_conflict);
	assert_int_equal(st.node_id, directory_node_id(a2));

	redisFree(c);
	directory_destroy(a1);
	directory_destroy(a2);
	directory_destroy(b1);
	directory_destroy(b2);
	chunkstore_close(cs1);
	chunkstore_close(cs2);
	fx_rm_rf(dir1);
	fx_rm_rf(dir2);
}

static void test_restart_from_a_snapshot_reannounces(void **state)
{
	struct chunkstore_hooks hk = {.announce = hook_announce, .withdraw = hook_withdraw};
	char sdir[64];
	struct chunkstore *cs = fx_store_open(sdir, hk);
	struct directory_holder hd[4];
	struct directory_stats st;
	static uint8_t buf[CHUNK];
	struct chunk_hash h, late;
	struct directory *a, *b;
	redisContext *c;
	unsigned i, n = 100;
	uint64_t r0;

	assert_non_null(cs);
	for (i = 0; i < n; i++) {
		fx_chunk(90000 + i, buf, sizeof(buf), &h);
		assert_int_equal(chunkstore_insert(cs, &h, buf, sizeof(buf)), 0);
	}
	a = dir_new("a19", "r1", NULL);
	hooked = a;
	directory_attach_store(a, cs);
	assert_int_equal(directory_wait_ready(a, 5000), 0);
	c = redisConnect("127.0.0.1", redis.port);
	assert_true(c && !c->err);
	redis_do(c, "SAVE");
	redisFree(c);
	/* announced after the snapshot: lost with the restart */
	fx_chunk(90999, buf, sizeof(buf), &late);
	assert_int_equal(chunkstore_insert(cs, &late, buf, sizeof(buf)), 0);
	directory_get_stats(a, &st);
	r0 = st.reconnects;
	fx_redis_stop(&redis);
	assert_int_equal(fx_redis_start(&redis), 0); /* loads the snapshot (dump.rdb) */
	directory_lookup(a, &h, hd, 4);
	assert_true(reconnected(a, r0, 5000));
	b = dir_new("b19", "r1", NULL);
	assert_int_equal(directory_wait_ready(b, 5000), 0);
	assert_int_equal(directory_lookup(b, &late, hd, 4), 1);
	directory_get_stats(a, &st);
	assert_int_equal(st.bulk_announced, 2 * n + 1);
	hooked = NULL;
	directory_destroy(a);
	directory_destroy(b);
	chunkstore_close(cs);
	fx_rm_rf(sdir);
}

/*
 * Lease values read from Redis were taken on trust: "0:x" read as node 0, which callers
 * take for "you hold it" while the lease stayed someone else's; a value with no id read
 * as holder -1, never alive, whose break never matched (a waiter spun on it); a lease key
 * without a TTL never expired, holding up every fetch of its chunk. A value that is not
 * "<id>:<instance>" with id >= 1, or one without a TTL, is free now: acquiring takes it,
 * directory_lease_holder() reads 0, breaking deletes it; and a break deletes a valid
 * one only while its holder's heartbeat is gone, checked in the same script.
 */
static void test_malformed_or_immortal_lease_is_free(void **state)
{
	static const char *const bad[] = {"0:x", "garbage", "-3:x", "7", ":abc", "12x:abc",
					  "1234567890123456789012:abc"};
	struct directory *a = dir_new("a20", "r1", NULL), *b = dir_new("b20", "r1", NULL);
	uint64_t far = now_ns() + 60000 * 1000000ULL;
	char hex[HASH_HEX_LEN + 1];
	struct chunk_hash h;
	uint8_t buf[64];
	int64_t holder;
	redisContext *c;
	redisReply *r;
	size_t i;

	assert_int_equal(directory_wait_ready(a, 5000), 0);
	assert_int_equal(directory_wait_ready(b, 5000), 0);
	c = redisConnect("127.0.0.1", redis.port);
	assert_true(c && !c->err);
	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		fx_chunk(200 + i, buf, sizeof(buf), &h);
		hash_to_hex(&h, hex);
		redis_do(c, "SET t:lease:%s %s PX 60000", hex, bad[i]);
		assert_int_equal(directory_lease_holder(b, &h, &holder), 0);
		assert_int_equal(holder, 0);
		assert_int_equal(directory_lease_acquire(b, &h, far, &holder), 0);
		assert_int_equal(directory_lease_holder(a, &h, &holder), 0);
		if (holder != directory_node_id(b))
			fail_msg("lease \"%s\": held by %lld after b took it", bad[i],
				 (long long)holder);
		assert_int_equal(directory_lease_release(b, &h), 0);
	}
	/* a's, valid but with no TTL (as if its expiry was lost): free although a lives */
	fx_chunk(300, buf, sizeof(buf), &h);
	hash_to_hex(&h, hex);
	redis_do(c, "SET t:lease:%s %lld:0123456789abcdef", hex, (long long)directory_node_id(a));
	assert_int_equal(directory_lease_holder(b, &h, &holder), 0);
	assert_int_equal(holder, 0);
	assert_int_equal(directory_lease_acquire(b, &h, far, &holder), 0);
	assert_int_equal(directory_lease_holder(a, &h, &holder), 0);
	assert_int_equal(holder, directory_node_id(b));
	assert_int_equal(directory_lease_release(b, &h), 0);
	/* breaking: one nobody can hold goes, whoever it names; a live holder's stays; a
	 * dead one's goes */
	redis_do(c, "SET t:lease:%s junk PX 60000", hex);
	assert_int_equal(directory_lease_break(b, &h, 99), 0);
	redis_do(c, "SET t:lease:%s %lld:0123456789abcdef PX 60000", hex,
		 (long long)directory_node_id(a));
	assert_int_equal(directory_lease_break(b, &h, directory_node_id(a)), -ENOENT);
	assert_int_equal(directory_lease_holder(b, &h, &holder), 0);
	assert_int_equal(holder, directory_node_id(a));
	redis_do(c, "SET t:lease:%s 99:0123456789abcdef PX 60000", hex);
	assert_int_equal(directory_lease_break(b, &h, 99), 0);
	r = redisCommand(c, "EXISTS t:lease:%s", hex);
	assert_true(r && r->type == REDIS_REPLY_INTEGER && r->integer == 0);
	freeReplyObject(r);
	redisFree(c);
	directory_destroy(a);
	directory_destroy(b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_parse_url),
		cmocka_unit_test(test_parse_url_ipv6),
		cmocka_unit_test(test_connects_over_ipv6),
		cmocka_unit_test(test_bad_options),
		cmocka_unit_test_setup_teardown(test_register_ids, setup, teardown),
		cmocka_unit_test_setup_teardown(test_announce_lookup_withdraw, setup, teardown),
		cmocka_unit_test_setup_teardown(test_longest_name_rack_and_address_are_listed,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_list_nodes_refuses_malformed_entries, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_list_nodes_error_reply_keeps_pipeline, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_heartbeat_expires, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bulk_announce, setup, teardown),
		cmocka_unit_test_setup_teardown(test_store_attached_during_first_connect_is_announced,
						setup, teardown),
		cmocka_unit_test(test_password_and_db),
		cmocka_unit_test_setup_teardown(test_refusals_at_reconnect_are_logged_sparingly,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_redis_down_and_back, setup, teardown),
		cmocka_unit_test_setup_teardown(test_lease_exclusive_and_released_by_announce,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_lease_stalled_holder_expires, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_reannounce_keeps_heartbeat_and_leases, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_bulk_announce_goes_on_after_an_error_reply,
						setup, teardown),
		cmocka_unit_test(test_no_busy_loop_while_redis_is_unreachable),
		cmocka_unit_test_setup_teardown(test_wait_for_a_busy_connection_is_bounded, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_busy_connection_keeps_heartbeat_and_leases,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_same_name_at_another_address_stays_out, setup,
						teardown),
		cmocka_unit_test_setup_teardown(
			test_same_name_same_address_joins_and_the_old_one_leaves, setup, teardown),
		cmocka_unit_test_setup_teardown(test_chunk_dropped_during_bulk_announce_is_not_listed,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_broken_during_reconnect_is_not_ready, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_wait_ready_waits_for_a_late_store_announce,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_register_skips_ids_in_use_and_replaces_bad_ones,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_reconnect_after_an_empty_restart_registers_first,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_timeout_reconnect_replays_instead_of_reannouncing,
						setup, teardown),
		cmocka_unit_test_setup_teardown(
			test_flush_does_not_let_an_old_id_write_over_a_new_owner, setup, teardown),
		cmocka_unit_test_setup_teardown(test_restart_from_a_snapshot_reannounces, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_malformed_or_immortal_lease_is_free, setup,
						teardown),
	};

	log_init("test_directory", LOG_LVL_WARN, 0);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
