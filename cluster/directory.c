/*
 * directory.c - the Redis chunk directory: connection, node registration, heartbeat,
 * chunk holder sets (see directory.h for the keys). Leases are in lease.c.
 *
 * Invariants (soft state: they hold while Redis is up; after an outage the reconnect
 * path restores them):
 *  1. This node's id is in P chunk:<h> only after chunk h is durably in its store
 *     (the store calls the announce hook after the insert) and is removed before the
 *     chunk's file is removed (withdraw hook). The bulk announce, which sends a
 *     snapshot of the store, withdraws again after each batch what left the store
 *     meanwhile (withdraw_gone_locked). A withdraw lost to an outage (or to a busy
 *     connection) leaves a stale entry; this node removes it when it answers a peer
 *     404 (directory_not_held). Only the node itself removes its entries: it alone
 *     can tell, under the connection's lock, that it has not fetched the chunk again.
 *     And only under its own id: each announce and withdraw is checked, in the same
 *     script, against our node record (lua_holder_write), so after a FLUSHDB, until
 *     we register again, ours never land under an id Redis has given another node.
 *  2. P alive:<id> exists only while this node runs: it has a TTL and only the
 *     directory thread refreshes it; directory_leave() deletes it.
 *  3. After every (re)connection the node registers (same name -> same id, a new id
 *     if Redis lost ours) before anything is announced (the id is published with the
 *     new shared connection; a lost one is -1 meanwhile), and, before
 *     directory_wait_ready() reports ready, re-announces its whole store if Redis may
 *     have lost its entries (new run_id, new id, or no mark of our last full announce
 *     in P node:<id>), else re-sends what failed meanwhile (dir_replay); a store
 *     attached later is announced before it reports ready again. Only the directory
 *     thread connects, registers and bulk-announces.
 *  4. No call waits longer than twice the command timeout: at most command_ms for its
 *     turn on the callers' shared connection (then -EAGAIN, counted as busy_fails) and
 *     command_ms for the reply. While that connection is down, calls fail at once with
 *     -ENOTCONN (fast_fails). Either way callers go to the seed.
 *  5. The heartbeat and the lease renewals never wait for the callers: the directory
 *     thread sends them on a connection of its own (hk), so a busy node is not taken
 *     for dead and keeps its leases. The thread never blocks on the shared connection
 *     for longer than a short turn, between which it keeps up that housekeeping.
 *
 * Locks, in the order they nest: lock (the shared connection) -> thread_lock (the
 * thread's state, never held across I/O); lock -> the chunk store's lock (the bulk
 * announce and the replay ask the store under lock). pending_lock (failed announces
 * and withdraws) is a leaf, taken with or without the others. The store calls its
 * hooks without its lock.
 */
#include "cluster/directory.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/time.h>

#include "cluster/directory_int.h"
#include "common/log.h"
#include "common/util.h"

#define LOG_EVERY_NS (5ULL * 1000000000ULL)

/* ---- URL ---- */

static int copy_span(char *dst, size_t cap, const char *s, size_t n)
{
	if (n >= cap)
		return -EINVAL;
	memcpy(dst, s, n);
	dst[n] = '\0';
	return 0;
}

int directory_parse_url(const char *url, struct directory_url *out)
{
	const char *p, *at, *hostend, *colon;
	char num[16];

	memset(out, 0, sizeof(*out));
	out->port = 6379;
	if (url && strncmp(url, "unix://", 7) == 0) {
		if (url[7] != '/' || copy_span(out->socket, sizeof(out->socket), url + 7,
					       strlen(url + 7)))
			return -EINVAL;
		return 0;
	}
	if (!url || strncmp(url, "redis://", 8) != 0)
		return -EINVAL;
	p = url + 8;
	hostend = p + strcspn(p, "/");
	at = memrchr(p, '@', hostend - p);
	if (at) {
		/* userinfo: [user]:password, or a bare password (as redis-cli reads it) */
		colon = memchr(p, ':', at - p);
		if (colon) {
			if (copy_span(out->user, sizeof(out->user), p, colon - p) ||
			    copy_span(out->password, sizeof(out->password), colon + 1,
				      at - colon - 1))
				return -EINVAL;
		} else if (copy_span(out->password, sizeof(out->password), p, at - p)) {
			return -EINVAL;
		}
		/* a user without a password would silently send no AUTH at all */
		/* percent-decoded, as redis-cli reads them: a password with '@', ':' or '/'
		 * can only be written so */
		if (pct_decode(out->user) || pct_decode(out->password) || !out->password[0])
			return -EINVAL;
		p = at + 1;
	}
	if (*p == '[') {
		/* an IPv6 address, bracketed as in any URL: its colons are not the port's */
		const char *close = memchr(p, ']', hostend - p);

		if (!close || close == p + 1 ||
		    copy_span(out->host, sizeof(out->host), p + 1, close - p - 1) ||
		    !strchr(out->host, ':') || strchr(out->host, '['))
			return -EINVAL;
		colon = close + 1;
		if (colon != hostend && *colon != ':')
			return -EINVAL;
	} else {
		colon = memrchr(p, ':', hostend - p);
		if (!colon)
			colon = hostend;
		/* "redis://::1" would be host ":" and port 1: an IPv6 host needs brackets */
		if (colon == p || copy_span(out->host, sizeof(out->host), p, colon - p) ||
		    strpbrk(out->host, ":[]"))
			return -EINVAL;
	}
	if (colon != hostend) {
		char *end;
		long port;

		if (copy_span(num, sizeof(num), colon + 1, hostend - colon - 1) || !num[0])
			return -EINVAL;
		port = strtol(num, &end, 10);
		if (*end || port < 1 || port > 65535)
			return -EINVAL;
		out->port = (int)port;
	}
	if (*hostend == '/' && hostend[1]) {
		char *end;
		long db = strtol(hostend + 1, &end, 10);

		if (*end || db < 0 || db > 1000000 || end == hostend + 1)
			return -EINVAL;
		out->db = (int)db;
	}
	return 0;
}

/* ---- commands ---- */

void dir_chunk_key(const struct directory *d, const char *kind, const struct chunk_hash *h,
		   char *buf, size_t len)
{
	char hex[HASH_HEX_LEN + 1];

	hash_to_hex(h, hex);
	snprintf(buf, len, "%s%s%s", d->prefix, kind, hex);
}

/* Logs a failure at most every LOG_EVERY_NS, with the number of silenced ones. */
static void dir_log_rl(struct directory *d, const char *what, const char *why)
{
	uint64_t now = now_ns();
	uint64_t last = __atomic_load_n(&d->last_log_ns, __ATOMIC_RELAXED);

	if (last && now - last < LOG_EVERY_NS) {
		__atomic_fetch_add(&d->suppressed, 1, __ATOMIC_RELAXED);
		return;
	}
	if (!__atomic_compare_exchange_n(&d->last_log_ns, &last, now, false, __ATOMIC_RELAXED,
					 __ATOMIC_RELAXED))
		return;
	log_warn("directory: %s: %s (%llu similar messages suppressed); using the seed", what,
		 why, (unsigned long long)__atomic_exchange_n(&d->suppressed, 0, __ATOMIC_RELAXED));
}

/*
 * Whether a line about malformed entries in Redis (written by another client, or by an
 * appliance of another version) may be logged now: at most every LOG_EVERY_NS, whatever
 * call met them, so a lookup per read cannot flood the log.
 */
static bool dir_bad_log_due(struct directory *d)
{
	uint64_t now = now_ns();
	uint64_t last = __atomic_load_n(&d->last_bad_node_log_ns, __ATOMIC_RELAXED);

	if (last && now - last < LOG_EVERY_NS)
		return false;
	return __atomic_compare_exchange_n(&d->last_bad_node_log_ns, &last, now, false,
					   __ATOMIC_RELAXED, __ATOMIC_RELAXED);
}

/* Marks the directory not ready (a connection broke) and wakes the thread to reconnect. */
static void dir_set_broken(struct directory *d)
{
	pthread_mutex_lock(&d->thread_lock);
	d->ready = false;
	d->conn_gen++;
	__atomic_store_n(&d->st.connected, false, __ATOMIC_RELAXED);
	pthread_cond_signal(&d->thread_cond);
	pthread_mutex_unlock(&d->thread_lock);
}

static void dir_drop_ctx(struct directory *d, redisContext **c, const char *what)
{
	char why[128];

	snprintf(why, sizeof(why), "%s", *c && (*c)->errstr[0] ? (*c)->errstr :
		 "connection lost");
	if (*c) {
		redisFree(*c);
		*c = NULL;
	}
	DIR_STAT_ADD(d, errors, 1);
	dir_log_rl(d, what, why);
	dir_set_broken(d);
}

/* The shared connection broke (or timed out): drop it so calls fail fast until reconnect. */
void dir_fail_locked(struct directory *d, const char *what)
{
	dir_drop_ctx(d, &d->ctx, what);
}

/* The thread's own connection broke: the thread reconnects both (dir_reconnect). */
void dir_hk_fail(struct directory *d, const char *what)
{
	dir_drop_ctx(d, &d->hk, what);
}

/* Takes d->lock within ms: 0, or -ETIMEDOUT. */
static int dir_lock_within(struct directory *d, uint32_t ms)
{
	struct timespec ts;
	uint64_t t;

	if (pthread_mutex_trylock(&d->lock) == 0)
		return 0;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	t = (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec + ms * 1000000ULL;
	ts.tv_sec = t / 1000000000ULL;
	ts.tv_nsec = t % 1000000000ULL;
	return pthread_mutex_clocklock(&d->lock, CLOCK_MONOTONIC, &ts) ? -ETIMEDOUT : 0;
}

/*
 * Takes d->lock for a caller, waiting for its turn on the shared connection at most the
 * command timeout (invariant 4): the callers behind a slow Redis would otherwise queue
 * without bound. -EAGAIN when it stayed busy that long; the caller goes to the seed.
 */
int dir_lock(struct directory *d)
{
	if (dir_lock_within(d, d->command_ms) == 0)
		return 0;
	DIR_STAT_ADD(d, busy_fails, 1);
	DIR_STAT_ADD(d, errors, 1);
	dir_log_rl(d, "redis", "the connection stayed busy for the command timeout");
	return -EAGAIN;
}

static int dir_check_reply(struct directory *d, redisReply *r, redisReply **out)
{
	if (r->type == REDIS_REPLY_ERROR) {
		DIR_STAT_ADD(d, errors, 1);
		dir_log_rl(d, "command", r->str);
		freeReplyObject(r);
		return -EIO;
	}
	if (out)
		*out = r;
	else
		freeReplyObject(r);
	return 0;
}

/* d->lock held: a call refused at once, without a connection or (for one that writes
 * under our id) without an id; the caller goes to the seed. */
static int dir_fast_fail_locked(struct directory *d)
{
	DIR_STAT_ADD(d, fast_fails, 1);
	DIR_STAT_ADD(d, errors, 1);
	dir_log_rl(d, "redis", d->ctx ? "not registered" : "not connected");
	return -ENOTCONN;
}

static int dir_vcommand_locked(struct directory *d, redisReply **out, const char *fmt,
			       va_list ap)
{
	redisReply *r;

	if (!d->ctx)
		return dir_fast_fail_locked(d);
	DIR_STAT_ADD(d, commands, 1);
	r = redisvCommand(d->ctx, fmt, ap);
	if (!r) {
		dir_fail_locked(d, "redis command");
		return -ENOTCONN;
	}
	return dir_check_reply(d, r, out);
}

int dir_command_locked(struct directory *d, redisReply **out, const char *fmt, ...)
{
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = dir_vcommand_locked(d, out, fmt, ap);
	va_end(ap);
	return rc;
}

int dir_command(struct directory *d, redisReply **out, const char *fmt, ...)
{
	va_list ap;
	int rc;

	rc = dir_lock(d);
	if (rc)
		return rc;
	va_start(ap, fmt);
	rc = dir_vcommand_locked(d, out, fmt, ap);
	va_end(ap);
	pthread_mutex_unlock(&d->lock);
	return rc;
}

/* The next reply on connection *c (pipelined commands); a broken one is dropped. */
static int ctx_reply(struct directory *d, redisContext **c, const char *what,
		     redisReply **out)
{
	void *r = NULL;

	if (!*c)
		return -ENOTCONN;
	if (redisGetReply(*c, &r) != REDIS_OK || !r) {
		dir_drop_ctx(d, c, what);
		return -ENOTCONN;
	}
	return dir_check_reply(d, r, out);
}

int dir_pipeline_reply_locked(struct directory *d, redisReply **out)
{
	return ctx_reply(d, &d->ctx, "redis pipeline", out);
}

int dir_hk_reply(struct directory *d, redisReply **out)
{
	return ctx_reply(d, &d->hk, "redis (heartbeat)", out);
}

/* ---- connection and registration (directory thread only) ---- */

/*
 * Registration, atomic: the id of this node's name (a new one for a new name), unless a
 * live heartbeat under that id belongs to another process (its instance differs) that
 * is not our own previous run: that is, it advertises another address, or we registered
 * before (ARGV[7] = 1: a heartbeat replaced since was not ours). Then it returns that
 * heartbeat's value, and the caller does not join.
 * A stored id is ours only if it is a positive number whose record, if any, names us: the
 * id of a record naming another node, or garbage, is replaced (and returned as bad, for
 * the log). A new id is one no node has, neither a heartbeat nor a record (nodes:next
 * may have been lost while nodes live), and the name's entry is written only then.
 * Returns {id, bad, listed, run_id}: bad, the stored value replaced ('' if none); listed,
 * 1 when the node record still holds the mark of this process's last full announce
 * (ARGV[8], our instance: dir_mark_listed), so Redis kept our entries unless it restarted
 * from a snapshot, which run_id tells ('' when INFO is refused, by an ACL say).
 */
static const char lua_register[] =
	"local p = ARGV[2] "
	"local raw = redis.call('HGET', KEYS[1], ARGV[1]) "
	"local id = raw and #raw <= 15 and string.match(raw, '^[1-9]%d*$') and tonumber(raw) "
	"if id then "
	"  local owner = redis.call('HGET', p .. 'node:' .. id, 'name') "
	"  if owner and owner ~= ARGV[1] then id = nil end "
	"end "
	"local bad = (raw and not id) and raw or '' "
	"if id then "
	"  local v = redis.call('GET', p .. 'alive:' .. id) "
	"  if v and v ~= ARGV[5] then "
	"    local _, addr = string.match(v, '^(%S+) (%S+)') "
	"    if addr ~= ARGV[4] or ARGV[7] == '1' then return v end "
	"  end "
	"else "
	"  for i = 1, 100000 do "
	"    local n = redis.call('INCR', KEYS[2]) "
	"    if redis.call('EXISTS', p .. 'alive:' .. n, p .. 'node:' .. n) == 0 then "
	"      id = n "
	"      break "
	"    end "
	"  end "
	"  if not id then return redis.error_reply('no free node id') end "
	"  redis.call('HSET', KEYS[1], ARGV[1], id) "
	"end "
	"local node = p .. 'node:' .. id "
	"local listed = redis.call('HGET', node, 'listed') == ARGV[8] and 1 or 0 "
	"redis.call('HSET', node, 'name', ARGV[1], 'addr', ARGV[4], 'rack', ARGV[3]) "
	"redis.call('SET', p .. 'alive:' .. id, ARGV[5], 'PX', ARGV[6]) "
	"local info = redis.pcall('INFO', 'server') "
	"local run = type(info) == 'string' and string.match(info, 'run_id:(%x+)') or '' "
	"return {id, bad, listed, run}";

/* The mark of a full announce: this process's instance in our node record (if it is
 * still ours: a record gone since, with our entries, must not come back as a mark). */
static const char lua_mark_listed[] =
	"if redis.call('HGET', KEYS[1], 'name') ~= ARGV[1] then return 0 end "
	"redis.call('HSET', KEYS[1], 'listed', ARGV[2]) "
	"return 1";

/*
 * The heartbeat, unless our id is not ours anymore: our node record (KEYS[2]) is gone,
 * with our entries (FLUSHDB, say): -1; or it names another node (ARGV[3] is our name),
 * to which Redis gave our id since: -2. Or unless the key holds another process's value
 * under our name (then that value): an appliance with our name registered meanwhile.
 */
static const char lua_heartbeat[] =
	"local owner = redis.call('HGET', KEYS[2], 'name') "
	"if not owner then return -1 end "
	"if owner ~= ARGV[3] then return -2 end "
	"local v = redis.call('GET', KEYS[1]) "
	"if v and v ~= ARGV[1] then return v end "
	"redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) "
	"return 0";

/*
 * A holder write, SADD or SREM (ARGV[1]) of our id (ARGV[2]) in KEYS[1], only while our
 * node record (KEYS[2]) names us (ARGV[3]); else, as lua_heartbeat, -1 (the record is
 * gone: FLUSHDB) or -2 (it names the node Redis gave our id to since), whose entries
 * ours would add to or remove.
 */
static const char lua_holder_write[] =
	"local owner = redis.call('HGET', KEYS[2], 'name') "
	"if not owner then return -1 end "
	"if owner ~= ARGV[3] then return -2 end "
	"return redis.call(ARGV[1], KEYS[1], ARGV[2])";

/* Why our id is lost, by lua_heartbeat's and lua_holder_write's negative replies. */
static const char *id_lost_why(long long rc)
{
	return rc == -1 ? "its node record is gone from Redis" :
			  "its node record names another node, which Redis gave it to";
}

/*
 * A command on a connection being set up (AUTH, SELECT). An error reply (a wrong
 * password, an unknown database) comes back at every reconnect, about once a second:
 * logged rate-limited and counted like any directory failure.
 */
static int ctx_cmd(struct directory *d, redisContext *c, long long *ival, const char *fmt, ...)
{
	va_list ap;
	redisReply *r;
	int rc = 0;

	va_start(ap, fmt);
	r = redisvCommand(c, fmt, ap);
	va_end(ap);
	if (!r)
		return -ENOTCONN;
	if (r->type == REDIS_REPLY_ERROR) {
		DIR_STAT_ADD(d, errors, 1);
		dir_log_rl(d, "redis", r->str);
		rc = -EIO;
	} else if (ival) {
		*ival = r->type == REDIS_REPLY_INTEGER ? r->integer : -1;
	}
	freeReplyObject(r);
	return rc;
}

static void ms_to_tv(uint32_t ms, struct timeval *tv)
{
	tv->tv_sec = ms / 1000;
	tv->tv_usec = (ms % 1000) * 1000;
}

/* A new connection, authenticated and on the right database; NULL on failure (logged). */
static redisContext *dir_open(struct directory *d)
{
	struct timeval tv;
	redisContext *c;

	ms_to_tv(d->connect_ms, &tv);
	c = d->url.socket[0] ? redisConnectUnixWithTimeout(d->url.socket, tv) :
		redisConnectWithTimeout(d->url.host, d->url.port, tv);
	if (!c || c->err) {
		dir_log_rl(d, "connect", c ? c->errstr : "out of memory");
		goto fail;
	}
	ms_to_tv(d->command_ms, &tv);
	if (redisSetTimeout(c, tv) != REDIS_OK)
		goto fail;
	redisEnableKeepAlive(c);
	if (d->url.password[0]) {
		int rc = d->url.user[0] ?
			ctx_cmd(d, c, NULL, "AUTH %s %s", d->url.user, d->url.password) :
			ctx_cmd(d, c, NULL, "AUTH %s", d->url.password);
		if (rc)
			goto fail;
	}
	if (d->url.db && ctx_cmd(d, c, NULL, "SELECT %d", d->url.db))
		goto fail;
	return c;
fail:
	if (c)
		redisFree(c);
	return NULL;
}

/* The address in a heartbeat value ("rack addr name instance") into buf. */
static void alive_addr(const char *v, size_t len, char *buf, size_t cap)
{
	const char *s1 = memchr(v, ' ', len), *s2;

	s2 = s1 ? memchr(s1 + 1, ' ', len - (s1 + 1 - v)) : NULL;
	if (!s2 || copy_span(buf, cap, s1 + 1, s2 - s1 - 1))
		snprintf(buf, cap, "?");
}

/*
 * Another live process holds our name: not joining. Logged when it starts and then once
 * a minute (the thread retries at every heartbeat interval), counted in name_conflict.
 */
static void dir_name_conflict(struct directory *d, const char *v, size_t len, bool displaced)
{
	uint64_t now = now_ns();
	char other[128];

	alive_addr(v, len, other, sizeof(other));
	if (!__atomic_load_n(&d->st.name_conflict, __ATOMIC_RELAXED) ||
	    now - d->conflict_log_ns >= 60000000000ULL) {
		if (displaced)
			log_error("directory: the appliance at %s has registered node name \"%s\" "
				  "too (this one advertises %s): node names must be unique in the "
				  "cluster; leaving, trying to join again every %u ms (reads go to "
				  "the seed meanwhile)", other, d->name, d->advertise,
				  d->hb_interval_ms);
		else
			log_error("directory: node name \"%s\" is in use by the live appliance "
				  "at %s (this one advertises %s): node names must be unique in the "
				  "cluster; not joining, trying again every %u ms (reads go to the "
				  "seed meanwhile)", d->name, other, d->advertise,
				  d->hb_interval_ms);
		d->conflict_log_ns = now;
	}
	__atomic_store_n(&d->st.name_conflict, true, __ATOMIC_RELAXED);
	/* the other one, under our id, may have withdrawn chunks we hold: all again */
	d->full_due = true;
	/* not a member: announces, withdraws and leases fail fast, so ours never touch
	 * the other's entries under the id we would share */
	__atomic_store_n(&d->node_id, -1, __ATOMIC_RELAXED);
	__atomic_store_n(&d->st.node_id, -1, __ATOMIC_RELAXED);
	d->reg_id = -1;
}

/*
 * Our id (id) is not ours anymore in Redis (why): our node record is gone, or names the
 * node Redis gave the id to since. Calls that write under our id fail at once (-1) and
 * the directory thread registers again (and so announces the store in full: our entries
 * went with the record). Any thread; only the first to find id lost acts on it.
 */
static void dir_id_lost(struct directory *d, int64_t id, const char *why)
{
	int64_t cur = id;

	if (!__atomic_compare_exchange_n(&d->node_id, &cur, -1, false, __ATOMIC_RELAXED,
					 __ATOMIC_RELAXED))
		return;
	__atomic_store_n(&d->st.node_id, -1, __ATOMIC_RELAXED);
	DIR_STAT_ADD(d, errors, 1);
	log_warn("directory: node id %lld is not ours anymore: %s (Redis flushed?); registering "
		 "again and announcing the store in full", (long long)id, why);
	dir_set_broken(d);
}

/* What a registration found (lua_register). */
struct dir_reg {
	int64_t id;
	bool listed;                /* our last full announce's mark is in our node record */
	char run_id[48];            /* Redis's ("" when INFO is refused) */
};

/* The registration's reply into *reg (0), or -EPROTO. */
static int reg_parse(struct directory *d, const redisReply *r, struct dir_reg *reg)
{
	redisReply *const *e = r->element;

	if (r->type != REDIS_REPLY_ARRAY || r->elements != 4 || e[0]->type != REDIS_REPLY_INTEGER ||
	    e[0]->integer <= 0 || e[1]->type != REDIS_REPLY_STRING ||
	    e[2]->type != REDIS_REPLY_INTEGER || e[3]->type != REDIS_REPLY_STRING)
		return -EPROTO;
	reg->id = e[0]->integer;
	reg->listed = e[2]->integer == 1;
	if (copy_span(reg->run_id, sizeof(reg->run_id), e[3]->str, e[3]->len))
		reg->run_id[0] = '\0';
	if (e[1]->len) {
		log_warn("directory: Redis held \"%.64s\" as the node id of name \"%s\": not a "
			 "positive number, or another node's id; registered as node %lld",
			 e[1]->str, d->name, (long long)reg->id);
		DIR_STAT_ADD(d, errors, 1);
	}
	return 0;
}

/* Registers on c (the thread's own connection): 0 and *reg, -EADDRINUSE when another
 * live appliance has our name (see lua_register), or -errno. */
static int dir_register(struct directory *d, redisContext *c, struct dir_reg *reg)
{
	char k1[DIR_KEY_MAX], k2[DIR_KEY_MAX];
	redisReply *r;
	int rc = -EIO;

	snprintf(k1, sizeof(k1), "%snodes:byname", d->prefix);
	snprintf(k2, sizeof(k2), "%snodes:next", d->prefix);
	r = redisCommand(c, "EVAL %s 2 %s %s %s %s %s %s %s %u %d %s", lua_register, k1, k2,
			 d->name, d->prefix, d->rack, d->advertise, d->alive_value, d->hb_ttl_ms,
			 d->registered, d->instance);
	if (!r)
		return -ENOTCONN;
	if (r->type == REDIS_REPLY_STRING) {
		dir_name_conflict(d, r->str, r->len, false);
		rc = -EADDRINUSE;
	} else if (r->type == REDIS_REPLY_ERROR) {
		/* READONLY, an ACL, "no free node id": again at every reconnect */
		DIR_STAT_ADD(d, errors, 1);
		dir_log_rl(d, "registration", r->str);
	} else if (reg_parse(d, r, reg) == 0) {
		rc = 0;
	} else {
		DIR_STAT_ADD(d, errors, 1);
		dir_log_rl(d, "registration", "unexpected reply");
	}
	freeReplyObject(r);
	return rc;
}

static void dir_drop_all(struct directory *d);

/*
 * Registers on the thread's own connection, opened if it broke or never was. At every
 * (re)connection, not only when that connection broke (invariant 3): Redis may have
 * restarted empty since, unnoticed on this connection, and handed our id to another
 * node, under whose id an announce would then list our chunks (and who could take our
 * "<id>:<instance>" leases for its own). An existing connection that fails is replaced
 * once at once: it may be the one that missed a restart. 0 and *lost (Redis no longer
 * holds our entries, or may not: restarted, flushed, another id), -EADDRINUSE (another
 * live appliance has our name: both connections closed), or -errno (hk closed).
 */
static int dir_register_hk(struct directory *d, bool *lost)
{
	int64_t old = d->reg_id;
	struct dir_reg reg = {.id = -1};
	int rc = -ENOTCONN;

	if (d->hk) {
		rc = dir_register(d, d->hk, &reg);
		if (rc == -ENOTCONN)
			dir_hk_fail(d, "redis registration");
	}
	if (!d->hk) {
		d->hk = dir_open(d);
		if (!d->hk)
			return -ENOTCONN;
		rc = dir_register(d, d->hk, &reg);
	}
	if (rc == -EADDRINUSE)
		dir_drop_all(d);
	if (rc) {
		if (d->hk)
			redisFree(d->hk);
		d->hk = NULL;
		return rc;
	}
	if (old >= 0 && old != reg.id)
		log_warn("directory: node id changed from %lld to %lld (Redis lost its data?)",
			 (long long)old, (long long)reg.id);
	if (__atomic_exchange_n(&d->st.name_conflict, false, __ATOMIC_RELAXED))
		log_info("directory: node name \"%s\" is ours again: joining", d->name);
	if (!reg.run_id[0] && !d->run_id_warned) {
		log_warn("directory: Redis refused INFO (an ACL?): a Redis restarted from a "
			 "snapshot goes unnoticed, and entries announced after the snapshot stay "
			 "missing until the next full announce");
		d->run_id_warned = true;
	}
	*lost = !reg.listed || old != reg.id ||
		(reg.run_id[0] && d->run_id[0] && strcmp(reg.run_id, d->run_id));
	snprintf(d->run_id, sizeof(d->run_id), "%s", reg.run_id);
	d->reg_id = reg.id;
	/* published with the shared connection (dir_reconnect); another id meanwhile is
	 * not ours: none until then */
	if (directory_node_id(d) != reg.id) {
		__atomic_store_n(&d->node_id, -1, __ATOMIC_RELAXED);
		__atomic_store_n(&d->st.node_id, -1, __ATOMIC_RELAXED);
	}
	d->registered = true;
	return 0;
}

/* After a full announce: the mark in our node record that the registration looks for. */
static void dir_mark_listed(struct directory *d)
{
	char key[DIR_KEY_MAX];
	redisReply *r;

	if (!d->hk)
		return;
	snprintf(key, sizeof(key), "%snode:%lld", d->prefix, (long long)directory_node_id(d));
	DIR_STAT_ADD(d, commands, 1);
	r = redisCommand(d->hk, "EVAL %s 1 %s %s %s", lua_mark_listed, key, d->name,
			 d->instance);
	if (!r) {
		dir_hk_fail(d, "redis (heartbeat)");
		return;
	}
	dir_check_reply(d, r, NULL);
}

static int dir_lock_thread(struct directory *d);

/*
 * Out of the cluster (directory thread): both connections closed, so every call fails
 * fast and reads go to the seed until dir_reconnect() registers again.
 */
static void dir_drop_all(struct directory *d)
{
	if (d->hk)
		redisFree(d->hk);
	d->hk = NULL;
	if (!dir_lock_thread(d)) {
		if (d->ctx)
			redisFree(d->ctx);
		d->ctx = NULL;
		pthread_mutex_unlock(&d->lock);
	}
	dir_set_broken(d);
}

/*
 * On the thread's own connection: never queued behind the callers (invariant 5). Finding
 * another process's heartbeat under our id and name means an appliance with our name
 * registered meanwhile (a restart of ours would have stopped this process): we leave.
 * Our id gone from Redis, or given to another node (a FLUSHDB, then its registration),
 * is no conflict: we register again (dir_id_lost).
 */
static int dir_heartbeat(struct directory *d)
{
	char key[DIR_KEY_MAX], node[DIR_KEY_MAX];
	int64_t id = d->reg_id;
	redisReply *r;

	if (!d->hk || id < 0)
		return -ENOTCONN;
	snprintf(key, sizeof(key), "%salive:%lld", d->prefix, (long long)id);
	snprintf(node, sizeof(node), "%snode:%lld", d->prefix, (long long)id);
	DIR_STAT_ADD(d, commands, 1);
	r = redisCommand(d->hk, "EVAL %s 2 %s %s %s %u %s", lua_heartbeat, key, node,
			 d->alive_value, d->hb_ttl_ms, d->name);
	if (!r) {
		dir_hk_fail(d, "redis heartbeat");
		return -ENOTCONN;
	}
	if (r->type == REDIS_REPLY_STRING) {
		dir_name_conflict(d, r->str, r->len, true);
		freeReplyObject(r);
		dir_drop_all(d);
		return -EADDRINUSE;
	}
	if (r->type == REDIS_REPLY_INTEGER && r->integer < 0) {
		const char *why = id_lost_why(r->integer);

		freeReplyObject(r);
		d->reg_id = -1;
		dir_id_lost(d, id, why);
		/* again, in case a caller found it first or it was not published yet: no
		 * reconnect may report ready with it */
		dir_set_broken(d);
		return -ENOENT;
	}
	return dir_check_reply(d, r, NULL);
}

/* ---- holder sets ---- */

int64_t directory_node_id(struct directory *d)
{
	/* atomic, not under d->lock: callers must not queue for the connection to read it */
	return __atomic_load_n(&d->node_id, __ATOMIC_RELAXED);
}

/* Remembers v[0..n) for dir_replay(); past DIR_PENDING_MAX, a full announce instead. */
static void dir_pending_add(struct directory *d, const struct chunk_hash *v, size_t n)
{
	pthread_mutex_lock(&d->pending_lock);
	if (d->pending_overflow)
		goto out;
	if (d->npending + n > DIR_PENDING_MAX) {
		d->pending_overflow = true;
		free(d->pending);
		d->pending = NULL;
		d->npending = d->cap_pending = 0;
		goto out;
	}
	if (d->npending + n > d->cap_pending) {
		size_t cap = MAX(d->npending + n, d->cap_pending ? d->cap_pending * 2 : 64);
		struct chunk_hash *p = realloc(d->pending, cap * sizeof(*p));

		if (!p) {
			d->pending_overflow = true; /* as good as too many: all again */
			goto out;
		}
		d->pending = p;
		d->cap_pending = cap;
	}
	memcpy(d->pending + d->npending, v, n * sizeof(*v));
	d->npending += n;
out:
	pthread_mutex_unlock(&d->pending_lock);
}

/* True (and cleared) when too many failed for a replay: the store is owed a full announce. */
static bool dir_take_overflow(struct directory *d)
{
	bool over;

	pthread_mutex_lock(&d->pending_lock);
	over = d->pending_overflow;
	d->pending_overflow = false;
	pthread_mutex_unlock(&d->pending_lock);
	if (over)
		log_warn("directory: more than %d announces and withdraws failed: announcing the "
			 "store in full", DIR_PENDING_MAX);
	return over;
}

static bool dir_pending_any(struct directory *d)
{
	bool any;

	pthread_mutex_lock(&d->pending_lock);
	any = d->npending || d->pending_overflow;
	pthread_mutex_unlock(&d->pending_lock);
	return any;
}

/*
 * d->lock held, id read under it: appends the holder write op ("SADD" or "SREM") of
 * chunk *h under id, checked against our node record (lua_holder_write). Its reply goes
 * through holder_reply_locked().
 */
static void holder_append_locked(struct directory *d, const char *op,
				 const struct chunk_hash *h, int64_t id)
{
	char key[DIR_KEY_MAX], node[DIR_KEY_MAX];

	dir_chunk_key(d, "chunk:", h, key, sizeof(key));
	snprintf(node, sizeof(node), "%snode:%lld", d->prefix, (long long)id);
	redisAppendCommand(d->ctx, "EVAL %s 2 %s %s %s %lld %s", lua_holder_write, key, node, op,
			   (long long)id, d->name);
}

/* The reply of a holder write under id: 0 and *changed (the set changed), -ENOTCONN
 * when id was not ours anymore (dir_id_lost), or -errno. */
static int holder_reply_locked(struct directory *d, int64_t id, bool *changed)
{
	redisReply *r;
	int rc = dir_pipeline_reply_locked(d, &r);

	if (rc)
		return rc;
	if (r->type == REDIS_REPLY_INTEGER && r->integer < 0) {
		dir_id_lost(d, id, id_lost_why(r->integer));
		rc = -ENOTCONN;
	} else if (changed) {
		*changed = r->type == REDIS_REPLY_INTEGER && r->integer > 0;
	}
	freeReplyObject(r);
	return rc;
}

/*
 * dir_lock(), then this node's id, read under the lock because it goes with the
 * connection (dir_reconnect). 0 with d->lock held and *id >= 0; else the error, unlocked.
 */
static int dir_lock_registered(struct directory *d, int64_t *id)
{
	int rc = dir_lock(d);

	if (rc)
		return rc;
	*id = directory_node_id(d);
	if (d->ctx && *id >= 0)
		return 0;
	rc = dir_fast_fail_locked(d);
	pthread_mutex_unlock(&d->lock);
	return rc;
}

int directory_announce(struct directory *d, const struct chunk_hash *h)
{
	char lkey[DIR_KEY_MAX], lval[64];
	bool lease = dir_lease_forget(d, h);
	int64_t id;
	int rc, rc2 = 0;

	DIR_STAT_ADD(d, announces, 1);
	dir_chunk_key(d, "lease:", h, lkey, sizeof(lkey));
	rc = dir_lock_registered(d, &id);
	if (rc)
		goto out;
	/* one round trip: the holder entry, then (if ours) the lease release */
	DIR_STAT_ADD(d, commands, 1);
	holder_append_locked(d, "SADD", h, id);
	if (lease) {
		dir_lease_value(d, id, lval, sizeof(lval));
		redisAppendCommand(d->ctx, "EVAL %s 1 %s %s", dir_lua_release, lkey, lval);
	}
	rc = holder_reply_locked(d, id, NULL);
	if (lease && d->ctx) {
		rc2 = dir_pipeline_reply_locked(d, NULL);
		if (!rc2)
			DIR_STAT_ADD(d, leases_released, 1);
	}
	pthread_mutex_unlock(&d->lock);
out:
	/* not listed: the directory thread sends it again (the lease just expires) */
	if (rc)
		dir_pending_add(d, h, 1);
	return rc ? rc : rc2;
}

int directory_withdraw(struct directory *d, const struct chunk_hash *h)
{
	int64_t id;
	int rc;

	DIR_STAT_ADD(d, withdraws, 1);
	rc = dir_lock_registered(d, &id);
	if (rc)
		goto out;
	DIR_STAT_ADD(d, commands, 1);
	holder_append_locked(d, "SREM", h, id);
	rc = holder_reply_locked(d, id, NULL);
	pthread_mutex_unlock(&d->lock);
out:
	if (rc)
		dir_pending_add(d, h, 1);
	return rc;
}

int directory_not_held(struct directory *d, const struct chunk_hash *h)
{
	struct chunkstore *store;
	bool removed = false;
	int64_t id;
	int rc;

	rc = dir_lock_registered(d, &id);
	if (rc)
		return rc;
	pthread_mutex_lock(&d->thread_lock);
	store = d->store;
	pthread_mutex_unlock(&d->thread_lock);
	/* Asked under the connection's lock, as withdraw_gone_locked does: an insert since
	 * (found present: nothing to do) announces only after our SREM. */
	if (store && chunkstore_contains(store, h))
		goto out;
	DIR_STAT_ADD(d, commands, 1);
	holder_append_locked(d, "SREM", h, id);
	rc = holder_reply_locked(d, id, &removed);
	if (removed)
		DIR_STAT_ADD(d, stale_removed, 1);
out:
	pthread_mutex_unlock(&d->lock);
	return rc;
}

struct collect {
	struct chunk_hash *v;
	size_t n, cap;
};

static int collect_fn(void *arg, const struct chunk_hash *h, uint32_t len)
{
	struct collect *c = arg;

	if (c->n == c->cap) {
		size_t cap = c->cap ? c->cap * 2 : 4096;
		struct chunk_hash *v = realloc(c->v, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		c->v = v;
		c->cap = cap;
	}
	c->v[c->n++] = *h;
	return 0;
}

/*
 * The heartbeat and the lease renewals, each when due, on the thread's own connection.
 * The directory thread runs them between its waits, between the batches of a
 * re-announce, and while it waits for its turn on the shared connection: a re-announce
 * of a large store takes seconds (about 3.6 s per million chunks), and the callers may
 * keep that connection busy for as long, longer than a lease's TTL and the heartbeat's,
 * and neither may lapse meanwhile: other nodes would take over our leases and fetch
 * those chunks from the seed too, or take us for dead.
 */
static void dir_housekeep(struct directory *d)
{
	uint64_t now = now_ns();

	if (!d->hk)
		return;
	if (now >= d->next_hb_ns) {
		dir_heartbeat(d);
		d->next_hb_ns = now + d->hb_interval_ms * 1000000ULL;
	}
	if (d->hk && now >= d->next_renew_ns) {
		dir_leases_renew(d);
		d->next_renew_ns = now + d->lease_renew_ms * 1000000ULL;
	}
}

static bool dir_stopping(struct directory *d)
{
	bool stopping;

	pthread_mutex_lock(&d->thread_lock);
	stopping = d->stopping;
	pthread_mutex_unlock(&d->thread_lock);
	return stopping;
}

/*
 * Takes d->lock for the directory thread: in short turns, keeping up the housekeeping
 * between them (invariant 5), until it gets it (0) or the directory stops (-ESHUTDOWN).
 */
static int dir_lock_thread(struct directory *d)
{
	uint32_t turn = MIN(d->command_ms, MAX(d->lease_renew_ms / 4, 10u));

	while (dir_lock_within(d, turn)) {
		if (dir_stopping(d))
			return -ESHUTDOWN;
		dir_housekeep(d);
	}
	return 0;
}

/*
 * d->lock held, after a batch of SADDs for v[0..n): withdraws those no longer in store
 * (pipelined); 0 or -errno. A chunk evicted after the bulk announce's snapshot, whose
 * withdraw ran before its SADD, would otherwise stay listed for good (invariant 1). This
 * closes that window. Eviction takes a chunk out of the present state, which is what
 * chunkstore_contains() answers, before its withdraw hook runs (chunkstore.c invariant
 * 3): a chunk still present here has its withdraw sent after our SADD's reply came, so
 * it lands after it. And a chunk found gone here but inserted again since announces
 * itself on this connection only once we release it, after our SREM.
 */
static int withdraw_gone_locked(struct directory *d, struct chunkstore *store,
				const struct chunk_hash *v, size_t n, int64_t id)
{
	char key[DIR_KEY_MAX];
	size_t j, k = 0;
	int rc = 0;

	for (j = 0; j < n; j++) {
		if (chunkstore_contains(store, &v[j]))
			continue;
		dir_chunk_key(d, "chunk:", &v[j], key, sizeof(key));
		redisAppendCommand(d->ctx, "SREM %s %lld", key, (long long)id);
		k++;
	}
	if (!k)
		return 0;
	DIR_STAT_ADD(d, commands, 1);
	DIR_STAT_ADD(d, withdraws, k);
	for (j = 0; j < k && d->ctx; j++) {
		int r = dir_pipeline_reply_locked(d, NULL);

		rc = rc ? rc : r;
	}
	return d->ctx ? rc : -ENOTCONN;
}

/*
 * d->lock held: the shared connection is there, no connection broke since generation gen
 * and our id is still id. Otherwise what the thread sends for that generation (a bulk
 * announce, a replay) ends: the reconnect that follows registers and sends it again.
 */
static bool dir_current_locked(struct directory *d, uint64_t gen, int64_t id)
{
	bool same;

	pthread_mutex_lock(&d->thread_lock);
	same = d->conn_gen == gen;
	pthread_mutex_unlock(&d->thread_lock);
	return same && d->ctx && id >= 0 && directory_node_id(d) == id;
}

/*
 * Sends SADDs for v[0..n) (a snapshot of store) in pipelined batches of d->batch commands,
 * each followed by the withdraw of what the store lost meanwhile (directory thread).
 */
static int announce_batches(struct directory *d, struct chunkstore *store,
			    const struct chunk_hash *v, size_t n, uint64_t gen)
{
	int64_t id = directory_node_id(d);
	char key[DIR_KEY_MAX];
	size_t i = 0;
	int rc = 0;

	/* An error reply (Redis out of memory, say) fails that SADD, not the batches after
	 * it: they are all sent, and the first error returned. Only a lost connection, which
	 * the next reconnect's re-announce covers, ends the loop. */
	while (i < n && rc != -ENOTCONN) {
		size_t end = MIN(n, i + d->batch), j;
		int brc = 0;

		if (dir_lock_thread(d))
			return -ESHUTDOWN;
		/* all under the id of the start, on one connection */
		if (!dir_current_locked(d, gen, id)) {
			pthread_mutex_unlock(&d->lock);
			return -ENOTCONN;
		}
		DIR_STAT_ADD(d, commands, 1);
		for (j = i; j < end; j++) {
			dir_chunk_key(d, "chunk:", &v[j], key, sizeof(key));
			redisAppendCommand(d->ctx, "SADD %s %lld", key, (long long)id);
		}
		/* read every reply even after an error so the pipeline stays in step */
		for (j = i; j < end && d->ctx; j++) {
			int r = dir_pipeline_reply_locked(d, NULL);

			brc = brc ? brc : r;
		}
		if (d->ctx) {
			int r = withdraw_gone_locked(d, store, v + i, end - i, id);

			brc = brc ? brc : r;
		}
		if (!d->ctx)
			brc = -ENOTCONN;
		pthread_mutex_unlock(&d->lock);
		if (!brc)
			DIR_STAT_ADD(d, bulk_announced, end - i);
		if (brc == -ENOTCONN || !rc)
			rc = brc;
		i = end;
		dir_housekeep(d);
	}
	return rc;
}

/* Announces every chunk of store (NULL: none); the number announced, or -errno. */
static int announce_store(struct directory *d, struct chunkstore *store, uint64_t gen)
{
	struct collect c = {0};
	int rc;

	if (!store)
		return 0;
	/* copy the hashes out first: no network round trip while the store is iterating */
	rc = chunkstore_foreach(store, collect_fn, &c);
	if (rc < 0)
		goto out;
	rc = announce_batches(d, store, c.v, c.n, gen);
	if (!rc)
		rc = (int)MIN(c.n, (size_t)INT32_MAX);
out:
	free(c.v);
	return rc;
}

/*
 * The whole store announced (generation gen): then marked in our node record, so that a
 * reconnect that finds the mark (Redis kept our entries) only replays what failed. A
 * failed one is owed again.
 */
static int announce_full(struct directory *d, struct chunkstore *store, uint64_t gen)
{
	int n = announce_store(d, store, gen);

	d->full_due = n < 0;
	if (n >= 0)
		dir_mark_listed(d);
	return n;
}

/*
 * Syncs the holder entries of the chunks whose announce or withdraw failed with the
 * store's present state, in pipelined batches: SADD for a chunk in the store, SREM for one
 * not. Each batch is decided and sent under d->lock, as withdraw_gone_locked does, and for
 * the same reason an insert or eviction racing with it sends its own command after ours.
 * An error reply is logged and counted, not retried; what a broken connection kept from
 * being sent is kept for the next try. The number synced, or -errno.
 */
static int dir_replay(struct directory *d, uint64_t gen)
{
	int64_t id = directory_node_id(d);
	struct chunkstore *store;
	struct chunk_hash *v;
	char key[DIR_KEY_MAX];
	size_t n, i = 0, j;
	int rc = 0;

	pthread_mutex_lock(&d->pending_lock);
	v = d->pending;
	n = d->npending;
	d->pending = NULL;
	d->npending = d->cap_pending = 0;
	pthread_mutex_unlock(&d->pending_lock);
	pthread_mutex_lock(&d->thread_lock);
	store = d->store;
	pthread_mutex_unlock(&d->thread_lock);
	/* no store: nothing to sync with (and none of its chunks announced) */
	while (store && i < n) {
		size_t end = MIN(n, i + d->batch);
		bool broke;

		if (dir_lock_thread(d)) {
			rc = -ESHUTDOWN;
			break;
		}
		if (!dir_current_locked(d, gen, id)) {
			pthread_mutex_unlock(&d->lock);
			rc = -ENOTCONN;
			break;
		}
		DIR_STAT_ADD(d, commands, 1);
		for (j = i; j < end; j++) {
			dir_chunk_key(d, "chunk:", &v[j], key, sizeof(key));
			redisAppendCommand(d->ctx, "%s %s %lld",
					   chunkstore_contains(store, &v[j]) ? "SADD" : "SREM", key,
					   (long long)id);
		}
		for (j = i; j < end && d->ctx; j++)
			dir_pipeline_reply_locked(d, NULL);
		broke = !d->ctx;
		pthread_mutex_unlock(&d->lock);
		if (broke) {
			rc = -ENOTCONN;
			break;
		}
		DIR_STAT_ADD(d, replayed, end - i);
		i = end;
		dir_housekeep(d);
	}
	if (rc == -ENOTCONN)
		dir_pending_add(d, v + i, n - i);
	free(v);
	return rc ? rc : (int)MIN(i, (size_t)INT32_MAX);
}

static const char lua_lookup[] =
	"local ids = redis.call('SMEMBERS', KEYS[1]) "
	"local out = {} "
	"for _, id in ipairs(ids) do "
	"  if id ~= ARGV[2] then "
	"    local v = redis.call('GET', ARGV[1] .. id) "
	"    if v then out[#out + 1] = id; out[#out + 1] = v end "
	"  end "
	"end "
	"return out";

/* "rack addr name[ instance]" -> holder fields; -EINVAL when malformed. */
static int parse_alive(const char *v, size_t len, struct directory_holder *hd)
{
	const char *s1 = memchr(v, ' ', len), *s2, *s3;

	if (!s1)
		return -EINVAL;
	s2 = memchr(s1 + 1, ' ', len - (s1 + 1 - v));
	if (!s2)
		return -EINVAL;
	s3 = memchr(s2 + 1, ' ', len - (s2 + 1 - v));
	if (!s3)
		s3 = v + len;
	if (copy_span(hd->rack, sizeof(hd->rack), v, s1 - v) ||
	    copy_span(hd->addr, sizeof(hd->addr), s1 + 1, s2 - s1 - 1) ||
	    copy_span(hd->name, sizeof(hd->name), s2 + 1, s3 - s2 - 1))
		return -EINVAL;
	return 0;
}

int directory_lookup(struct directory *d, const struct chunk_hash *h,
		     struct directory_holder *out, int max)
{
	char key[DIR_KEY_MAX], alive[DIR_KEY_MAX];
	redisReply *r = NULL;
	int64_t bad_id = 0;
	int rc, n = 0, bad = 0;
	size_t i;

	DIR_STAT_ADD(d, lookups, 1);
	dir_chunk_key(d, "chunk:", h, key, sizeof(key));
	snprintf(alive, sizeof(alive), "%salive:", d->prefix);
	rc = dir_command(d, &r, "EVAL %s 1 %s %s %lld", lua_lookup, key, alive,
			 (long long)directory_node_id(d));
	if (rc)
		return rc;
	if (r->type != REDIS_REPLY_ARRAY) {
		rc = -EPROTO;
		goto out;
	}
	for (i = 0; i + 1 < r->elements && n < max; i += 2) {
		redisReply *id = r->element[i], *v = r->element[i + 1];

		if (id->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
			continue;
		out[n].node_id = strtoll(id->str, NULL, 10);
		if (out[n].node_id > 0 && !parse_alive(v->str, v->len, &out[n])) {
			n++;
			continue;
		}
		/* not asked: counted and logged, a holder is never dropped unseen */
		if (!bad++)
			bad_id = out[n].node_id;
	}
	if (bad) {
		DIR_STAT_ADD(d, bad_nodes, bad);
		if (dir_bad_log_due(d))
			log_warn("directory: %d holder%s of chunk %s with a malformed heartbeat "
				 "in %salive:<id> (e.g. id %lld): not asked for the chunk", bad,
				 bad == 1 ? "" : "s", key, d->prefix, (long long)bad_id);
	}
	DIR_STAT_ADD(d, lookup_holders, n);
	rc = n;
out:
	freeReplyObject(r);
	return rc;
}

int directory_node_alive(struct directory *d, int64_t node_id)
{
	char key[DIR_KEY_MAX];
	redisReply *r = NULL;
	int rc;

	snprintf(key, sizeof(key), "%salive:%lld", d->prefix, (long long)node_id);
	rc = dir_command(d, &r, "EXISTS %s", key);
	if (rc)
		return rc;
	rc = r->type == REDIS_REPLY_INTEGER && r->integer > 0;
	freeReplyObject(r);
	return rc;
}

/*
 * Node entries come from Redis, where any client may have written them: only what an
 * appliance writes (directory_create checks its own name, rack and address) is listed as
 * it is, since the fields go into JSON (which refuses bytes that are not UTF-8: such a
 * node vanished from GET peers) and into Prometheus labels (where a quote or a newline
 * injected samples). A bad name leaves the entry out; a bad address or rack is blanked.
 */
static bool addr_ok(const char *s)
{
	for (; *s; s++)
		if (*s <= ' ' || *s > '~' || *s == '"' || *s == '\\')
			return false;
	return true;
}

/*
 * A node record's address and rack into *n: false when one of them is not what an
 * appliance writes (too long for the field, or bytes addr_ok or name_is_valid refuse),
 * then shown empty.
 */
static bool node_from_hash(redisReply *r, struct directory_node *n)
{
	bool ok = true;
	size_t i;

	if (r->type != REDIS_REPLY_ARRAY)
		return true;
	for (i = 0; i + 1 < r->elements; i += 2) {
		redisReply *k = r->element[i], *v = r->element[i + 1];

		if (k->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING)
			continue;
		if (!strcmp(k->str, "addr"))
			ok = !copy_span(n->addr, sizeof(n->addr), v->str, v->len) && ok;
		else if (!strcmp(k->str, "rack"))
			ok = !copy_span(n->rack, sizeof(n->rack), v->str, v->len) && ok;
	}
	if (n->rack[0] && !name_is_valid(n->rack)) {
		n->rack[0] = '\0';
		ok = false;
	}
	if (!addr_ok(n->addr)) {
		n->addr[0] = '\0';
		ok = false;
	}
	return ok;
}

/* Logs a listing's malformed node entries, at most every LOG_EVERY_NS. */
static void dir_log_bad_nodes(struct directory *d, int bad, int64_t example_id)
{
	if (!dir_bad_log_due(d))
		return;
	log_warn("directory: %d malformed node entr%s in %snodes:byname or node:<id> (e.g. id "
		 "%lld): a name not 1 to 128 of A-Z a-z 0-9 . _ - is left out of the node list, "
		 "a bad address or rack is shown empty", bad, bad == 1 ? "y" : "ies", d->prefix,
		 (long long)example_id);
}

int directory_list_nodes(struct directory *d, struct directory_node *out, int max)
{
	char key[DIR_KEY_MAX];
	redisReply *r = NULL, *x;
	int64_t bad_id = 0;
	int rc, n = 0, i, bad = 0;

	snprintf(key, sizeof(key), "%snodes:byname", d->prefix);
	rc = dir_lock(d);
	if (rc)
		return rc;
	rc = dir_command_locked(d, &r, "HGETALL %s", key);
	if (rc)
		goto out;
	for (i = 0; i + 1 < (int)r->elements && n < max; i += 2) {
		memset(&out[n], 0, sizeof(out[n]));
		out[n].node_id = strtoll(r->element[i + 1]->str, NULL, 10);
		/* too long for the field (copy_span fails), a NUL inside, any other byte
		 * name_is_valid refuses: left out */
		if (copy_span(out[n].name, sizeof(out[n].name), r->element[i]->str,
			      r->element[i]->len) ||
		    strlen(out[n].name) != r->element[i]->len || !name_is_valid(out[n].name)) {
			if (!bad++)
				bad_id = out[n].node_id;
			continue;
		}
		n++;
	}
	/* pipelined: heartbeat TTL and record of every node */
	for (i = 0; i < n; i++) {
		redisAppendCommand(d->ctx, "PTTL %salive:%lld", d->prefix,
				   (long long)out[i].node_id);
		redisAppendCommand(d->ctx, "HGETALL %snode:%lld", d->prefix,
				   (long long)out[i].node_id);
	}
	/* Read every reply even after an error reply (a stray key of the wrong type, an ACL
	 * refusal): one left unread would answer the connection's next command. */
	for (i = 0; i < n; i++) {
		int r1 = dir_pipeline_reply_locked(d, &x), r2;

		if (!r1) {
			out[i].ttl_ms = x->type == REDIS_REPLY_INTEGER && x->integer >= 0 ?
						x->integer : -1;
			out[i].alive = out[i].ttl_ms >= 0;
			freeReplyObject(x);
		}
		r2 = dir_pipeline_reply_locked(d, &x);
		if (!r2) {
			if (!node_from_hash(x, &out[i]) && !bad++)
				bad_id = out[i].node_id;
			freeReplyObject(x);
		}
		rc = rc ? rc : r1 ? r1 : r2;
	}
	if (bad) {
		DIR_STAT_ADD(d, bad_nodes, bad);
		dir_log_bad_nodes(d, bad, bad_id);
	}
	if (!rc)
		rc = n;
out:
	pthread_mutex_unlock(&d->lock);
	if (r)
		freeReplyObject(r);
	return rc;
}

/* ---- the directory thread ---- */

/* Where Redis is, for the log: "host:port" ("[addr]:port" for IPv6), or the socket's path. */
static void dir_endpoint(const struct directory *d, char *buf, size_t len)
{
	if (d->url.socket[0])
		snprintf(buf, len, "%s (unix socket)", d->url.socket);
	else if (strchr(d->url.host, ':'))
		snprintf(buf, len, "[%s]:%d", d->url.host, d->url.port);
	else
		snprintf(buf, len, "%s:%d", d->url.host, d->url.port);
}

/*
 * Ready, unless a connection broke since generation gen was taken. Checked under d->lock
 * as well: the shared connection is there when ready is set, and a caller that breaks it
 * later (under d->lock too) clears ready after this.
 */
static void dir_set_ready(struct directory *d, uint64_t gen)
{
	if (dir_lock_thread(d))
		return;
	pthread_mutex_lock(&d->thread_lock);
	if (d->conn_gen == gen && d->ctx && d->hk) {
		d->ready = true;
		__atomic_store_n(&d->st.connected, true, __ATOMIC_RELAXED);
		pthread_cond_broadcast(&d->ready_cond);
	}
	pthread_mutex_unlock(&d->thread_lock);
	pthread_mutex_unlock(&d->lock);
}

/*
 * (Re)connects: the registration first, on the thread's own connection (opened again if
 * it broke), then a fresh shared connection, then the store (invariant 3): announced in
 * full when Redis lost our entries (or may have: dir_register_hk), when a full announce
 * is owed, or when a store was attached; otherwise only the chunks whose announce or
 * withdraw failed meanwhile are synced. A reply timeout (a slow Redis) drops a connection
 * as a lost one does, so that is the common case: a full announce costs Redis about 3.6 s
 * per million chunks, and every appliance would make one during a latency spike. Ready
 * only if neither connection broke meanwhile.
 */
static int dir_reconnect(struct directory *d)
{
	char where[300];
	redisContext *c, *old;
	struct chunkstore *store;
	bool lost = false, full;
	uint64_t gen;
	int n, k;

	n = dir_register_hk(d, &lost);
	if (n)
		return n;
	c = dir_open(d);
	if (!c)
		return -ENOTCONN;
	full = dir_take_overflow(d) || lost || d->full_due;
	if (dir_lock_thread(d)) {
		redisFree(c);
		return -ESHUTDOWN;
	}
	/* The generation of the new connection, taken before it is installed: a caller that
	 * breaks it does so under d->lock, so after this, and dir_set_ready sees it. (Taken
	 * after the lock was let go, a break in between passed for an older one's.) */
	pthread_mutex_lock(&d->thread_lock);
	gen = d->conn_gen;
	store = d->store;
	full = full || d->announce_due;
	d->announce_due = false; /* a store attached from now on is announced again */
	pthread_mutex_unlock(&d->thread_lock);
	old = d->ctx;
	d->ctx = c;
	/* the id with the connection: a caller that reads it under lock sends under the id
	 * just registered (-1 if the heartbeat found it lost already: then not ready) */
	__atomic_store_n(&d->node_id, d->reg_id, __ATOMIC_RELAXED);
	__atomic_store_n(&d->st.node_id, d->reg_id, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&d->lock);
	if (old)
		redisFree(old);
	DIR_STAT_ADD(d, reconnects, 1);

	n = full ? announce_full(d, store, gen) : 0;
	k = n < 0 ? 0 : dir_replay(d, gen);
	dir_endpoint(d, where, sizeof(where));
	if (n < 0 || k < 0)
		log_warn("directory: %s failed: %s", n < 0 ? "re-announce" : "replay",
			 strerror(n < 0 ? -n : -k));
	else if (full)
		log_info("directory: connected to %s as node %lld (%s), announced %d chunks",
			 where, (long long)directory_node_id(d), d->name, n + k);
	else
		log_info("directory: connected to %s as node %lld (%s); Redis kept our entries: "
			 "synced the %d chunks whose announce or withdraw had failed", where,
			 (long long)directory_node_id(d), d->name, k);
	dir_set_ready(d, gen);
	return 0;
}

/*
 * While ready, the store announced in full: one attached meanwhile, or after more
 * announces and withdraws failed than a replay takes. directory_wait_ready() waits for
 * this: the store is taken (announce_due cleared, so one attached meanwhile is announced
 * again) and announcing stays set until the announce is over.
 */
static void dir_announce_ready(struct directory *d)
{
	struct chunkstore *store;
	uint64_t gen;
	int n;

	pthread_mutex_lock(&d->thread_lock);
	store = d->store;
	gen = d->conn_gen;
	d->announce_due = false;
	d->announcing = true;
	pthread_mutex_unlock(&d->thread_lock);
	n = announce_full(d, store, gen);
	if (n < 0)
		log_warn("directory: announce of the store failed: %s", strerror(-n));
	pthread_mutex_lock(&d->thread_lock);
	d->announcing = false;
	pthread_cond_broadcast(&d->ready_cond);
	pthread_mutex_unlock(&d->thread_lock);
}

/* While ready: what failed to be announced or withdrawn (a busy connection) is synced. */
static void dir_sync_pending(struct directory *d)
{
	uint64_t gen;

	if (!dir_pending_any(d))
		return;
	if (dir_take_overflow(d)) {
		dir_announce_ready(d);
		return;
	}
	pthread_mutex_lock(&d->thread_lock);
	gen = d->conn_gen;
	pthread_mutex_unlock(&d->thread_lock);
	dir_replay(d, gen);
}

static void *dir_thread(void *arg)
{
	struct directory *d = arg;
	uint64_t next_connect = 0;

	pthread_mutex_lock(&d->thread_lock);
	while (!d->stopping) {
		bool ready = d->ready, due = d->announce_due;
		uint64_t now = now_ns(), wake;
		struct timespec ts;

		pthread_mutex_unlock(&d->thread_lock);
		if (!ready && now >= next_connect) {
			/* a name in use by another appliance is retried at the heartbeat
			 * interval: it is freed when that one's heartbeat expires */
			uint32_t retry_ms = dir_reconnect(d) == -EADDRINUSE ?
				d->hb_interval_ms : MIN(d->hb_interval_ms, 1000u);

			next_connect = now + retry_ms * 1000000ULL;
			/* the registration wrote a heartbeat, but a re-announce may have
			 * taken a while since: another one now */
			d->next_hb_ns = now_ns();
		} else if (ready && due) {
			dir_announce_ready(d);
		} else if (ready) {
			dir_sync_pending(d);
		}
		dir_housekeep(d);
		pthread_mutex_lock(&d->thread_lock);
		if (d->stopping)
			break;
		/* The housekeeping timers only count with a connection to do it on (else,
		 * long due, they would make the thread spin). The state is read again here:
		 * a connection may have broken since the top of the loop. */
		wake = d->hk ? MIN(d->next_hb_ns, d->next_renew_ns) : UINT64_MAX;
		if (!d->ready)
			wake = MIN(wake, next_connect);
		else if (d->announce_due)
			wake = 0;
		now = now_ns();
		if (wake > now) {
			/* the condition uses CLOCK_MONOTONIC (set in directory_create) */
			clock_gettime(CLOCK_MONOTONIC, &ts);
			uint64_t t = (uint64_t)ts.tv_sec * 1000000000ULL + ts.tv_nsec +
				MIN(wake - now, 1000000000ULL);
			ts.tv_sec = t / 1000000000ULL;
			ts.tv_nsec = t % 1000000000ULL;
			pthread_cond_timedwait(&d->thread_cond, &d->thread_lock, &ts);
		}
	}
	pthread_mutex_unlock(&d->thread_lock);
	return NULL;
}

/* ---- life cycle ---- */

static void on_announce(void *arg, const struct chunk_hash *h)
{
	directory_announce(arg, h);
}

static void on_withdraw(void *arg, const struct chunk_hash *h)
{
	directory_withdraw(arg, h);
}

struct chunkstore_hooks directory_store_hooks(struct directory *d)
{
	struct chunkstore_hooks hk = {.arg = d, .announce = on_announce, .withdraw = on_withdraw};

	return hk;
}

void directory_attach_store(struct directory *d, struct chunkstore *store)
{
	/* The thread announces it: at once if ready, else as part of its (re)connect, also
	 * when that connect's own announce ran before this. */
	pthread_mutex_lock(&d->thread_lock);
	d->store = store;
	d->announce_due = store != NULL;
	pthread_cond_signal(&d->thread_cond);
	pthread_mutex_unlock(&d->thread_lock);
}

/*
 * A random id for this process: in the heartbeat, so a second appliance configured with
 * our name is told apart from us (and from our own previous run), and in our lease
 * values, so no other process can renew or release our leases.
 */
static int dir_new_instance(struct directory *d)
{
	uint8_t b[8];
	size_t i;

	if (getrandom(b, sizeof(b), 0) != sizeof(b))
		return -errno;
	for (i = 0; i < sizeof(b); i++)
		snprintf(d->instance + 2 * i, 3, "%02x", b[i]);
	if (snprintf(d->alive_value, sizeof(d->alive_value), "%s %s %s %s", d->rack,
		     d->advertise, d->name, d->instance) >= (int)sizeof(d->alive_value))
		return -ENAMETOOLONG;
	return 0;
}

static bool field_ok(const char *s)
{
	return s && *s && strlen(s) <= DIRECTORY_ADDR_MAX && !strpbrk(s, " \t\r\n");
}

int directory_create(const struct directory_opts *o, struct directory **out)
{
	struct directory *d;
	pthread_condattr_t ca;
	int rc = -EINVAL;

	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->node_id = -1;
	d->reg_id = -1;
	d->st.node_id = -1;
	pthread_mutex_init(&d->lock, NULL);
	pthread_mutex_init(&d->lease_lock, NULL);
	pthread_mutex_init(&d->pending_lock, NULL);
	pthread_mutex_init(&d->thread_lock, NULL);
	d->full_due = true; /* the first connection announces the store in full */
	pthread_cond_init(&d->ready_cond, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&d->thread_cond, &ca);
	pthread_condattr_destroy(&ca);
	if (directory_parse_url(o->url, &d->url))
		goto fail;
	if (!name_is_valid(o->node_name) || !field_ok(o->advertise) ||
	    (o->rack && *o->rack && !name_is_valid(o->rack)))
		goto fail;
	if (o->prefix && (strlen(o->prefix) > 64 || strpbrk(o->prefix, " \t\r\n")))
		goto fail;
	rc = -ENOMEM;
	d->prefix = strdup(o->prefix ? o->prefix : "rackdisk:");
	d->name = strdup(o->node_name);
	d->rack = strdup(o->rack && *o->rack ? o->rack : "default");
	d->advertise = strdup(o->advertise);
	if (!d->prefix || !d->name || !d->rack || !d->advertise)
		goto fail;
	rc = dir_new_instance(d);
	if (rc)
		goto fail;
	rc = -ENOMEM;
	d->connect_ms = o->connect_timeout_ms ? o->connect_timeout_ms : 200;
	d->command_ms = o->command_timeout_ms ? o->command_timeout_ms : 500;
	d->hb_ttl_ms = o->heartbeat_ttl_ms ? o->heartbeat_ttl_ms : 10000;
	d->hb_interval_ms = o->heartbeat_interval_ms ? o->heartbeat_interval_ms : 3000;
	d->lease_ttl_ms = o->lease_ttl_ms ? o->lease_ttl_ms : 3000;
	d->lease_renew_ms = o->lease_renew_ms ? o->lease_renew_ms : 1000;
	d->batch = o->announce_batch ? o->announce_batch : 4096;
	rc = -EINVAL;
	if (d->hb_interval_ms >= d->hb_ttl_ms || d->lease_renew_ms >= d->lease_ttl_ms)
		goto fail;
	rc = -pthread_create(&d->thread, NULL, dir_thread, d);
	if (rc)
		goto fail;
	d->thread_started = true;
	*out = d;
	return 0;
fail:
	directory_destroy(d);
	return rc;
}

/* Connected, registered, and the attached store announced in full (thread_lock held). */
static bool dir_ready_locked(const struct directory *d)
{
	return d->ready && !d->announce_due && !d->announcing;
}

int directory_wait_ready(struct directory *d, uint32_t timeout_ms)
{
	struct timespec ts;
	int rc = 0;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += timeout_ms / 1000;
	ts.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_mutex_lock(&d->thread_lock);
	while (!dir_ready_locked(d) && rc == 0)
		rc = pthread_cond_timedwait(&d->ready_cond, &d->thread_lock, &ts);
	rc = dir_ready_locked(d) ? 0 : -ETIMEDOUT;
	pthread_mutex_unlock(&d->thread_lock);
	return rc;
}

static void dir_stop_thread(struct directory *d)
{
	if (!d->thread_started)
		return;
	pthread_mutex_lock(&d->thread_lock);
	d->stopping = true;
	pthread_cond_signal(&d->thread_cond);
	pthread_mutex_unlock(&d->thread_lock);
	pthread_join(d->thread, NULL);
	d->thread_started = false;
}

void directory_leave(struct directory *d)
{
	char key[DIR_KEY_MAX];
	int64_t id;

	if (!d)
		return;
	dir_stop_thread(d);
	if (d->left)
		return;
	d->left = true;
	/* the heartbeat's id (the thread has stopped): ours unless found lost */
	id = d->reg_id;
	if (id >= 0) {
		snprintf(key, sizeof(key), "%salive:%lld", d->prefix, (long long)id);
		/* Only our own heartbeat (an appliance that took our name keeps its own), on
		 * the thread's connection, now idle, if it has one: no wait for a turn. */
		if (d->hk) {
			redisReply *r = redisCommand(d->hk, "EVAL %s 1 %s %s", dir_lua_release,
						     key, d->alive_value);

			if (r)
				freeReplyObject(r);
		} else {
			dir_command(d, NULL, "EVAL %s 1 %s %s", dir_lua_release, key,
				    d->alive_value);
		}
	}
	pthread_mutex_lock(&d->thread_lock);
	d->store = NULL;
	pthread_mutex_unlock(&d->thread_lock);
}

void directory_destroy(struct directory *d)
{
	if (!d)
		return;
	if (d->name)
		directory_leave(d);
	dir_stop_thread(d);
	if (d->ctx)
		redisFree(d->ctx);
	if (d->hk)
		redisFree(d->hk);
	free(d->leases);
	free(d->pending);
	free(d->prefix);
	free(d->name);
	free(d->rack);
	free(d->advertise);
	pthread_mutex_destroy(&d->lock);
	pthread_mutex_destroy(&d->lease_lock);
	pthread_mutex_destroy(&d->pending_lock);
	pthread_mutex_destroy(&d->thread_lock);
	pthread_cond_destroy(&d->ready_cond);
	pthread_cond_destroy(&d->thread_cond);
	free(d);
}

void directory_get_stats(struct directory *d, struct directory_stats *st)
{
	/* fields are read one by one: a snapshot, not an atomic one */
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	*st = d->st;
}
