/*
 * lease.c - fetch leases in the directory: one node pulls a chunk from the seed while
 * the others wait for it to announce the chunk and then take it from that peer.
 *
 * Invariants:
 *  1. P lease:<h> holds the id of the one node fetching h from the seed, with a TTL of
 *     lease_ttl_ms; only that node renews it (every lease_renew_ms, from the directory
 *     thread, on that thread's own connection, so busy callers cannot delay it) and
 *     only while its fetch may still succeed (until hold_until_ns).
 *  2. The value is "<node id>:<instance>", the instance being random per process: a
 *     node renews or deletes a lease only if the value is still exactly its own
 *     (compare-and-delete in Lua), so a late release never frees a lease someone else
 *     has taken over, and no other process (an appliance given the same node name by
 *     mistake, for as long as it takes to notice) can renew or free ours. Acquiring
 *     takes over a lease of our id from another instance: our own previous run.
 *  3. A holder that dies stops renewing: the key expires within lease_ttl_ms. A holder
 *     that stalls stops renewing at its deadline. Waiters bound their own wait too. A
 *     value nobody can hold (not "<id>:<instance>" with id >= 1) or a key without a TTL
 *     (which would never expire) is free: acquiring takes it, breaking deletes it.
 *  4. The lease is released in the same round trip as the announce of the chunk
 *     (directory_announce), so a waiter that sees the lease gone finds the holder.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "cluster/directory_int.h"
#include "common/log.h"
#include "common/util.h"

/* Compare-and-delete: KEYS[1] only if it still holds ARGV[1]. */
const char dir_lua_release[] =
	"if redis.call('GET', KEYS[1]) == ARGV[1] then "
	"  return redis.call('DEL', KEYS[1]) "
	"end "
	"return 0";

/*
 * The holder of the lease KEYS[1] whose value is v: its node id, or nil when nobody can
 * hold it (a value not "<id>:<instance>" with id >= 1, as no node writes, or a key with
 * no TTL, which would never expire): such a lease counts as free.
 */
#define LUA_HOLDER \
	"local function holder(v) " \
	"  local s = string.match(v, '^([1-9]%d*):%S+$') " \
	"  if not s or #s > 15 or redis.call('PTTL', KEYS[1]) < 0 then return nil end " \
	"  return tonumber(s) " \
	"end "

/*
 * ARGV[1] our value, ARGV[2] the TTL, ARGV[3] our node id. 0 when the lease is ours now,
 * else the holder's node id.
 */
static const char lua_acquire[] =
	LUA_HOLDER
	"local v = redis.call('GET', KEYS[1]) "
	"local id = v and holder(v) "
	/* taken unless another node holds it: free, ours (a retry), or ours from another
	 * instance, a lease left by a previous run of this node (the registration lets one
	 * live process at a time have the id), which takes no more */
	"if id and v ~= ARGV[1] and id ~= tonumber(ARGV[3]) then return id end "
	"redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) "
	"return 0";

static const char lua_renew[] =
	"if redis.call('GET', KEYS[1]) == ARGV[1] then "
	"  return redis.call('PEXPIRE', KEYS[1], ARGV[2]) "
	"end "
	"return 0";

/*
 * Deletes the lease of node ARGV[1], whichever of its instances took it, if that node's
 * heartbeat KEYS[2] is gone (checked here, with the delete: it may have come back since
 * the caller looked); and a lease nobody can hold, whoever it names.
 */
static const char lua_break[] =
	LUA_HOLDER
	"local v = redis.call('GET', KEYS[1]) "
	"if not v then return 0 end "
	"local id = holder(v) "
	"if id and (id ~= tonumber(ARGV[1]) or redis.call('EXISTS', KEYS[2]) == 1) then "
	"  return 0 "
	"end "
	"return redis.call('DEL', KEYS[1])";

/* The holder's node id, 0 when the lease is free (absent, or nobody can hold it). */
static const char lua_holder[] =
	LUA_HOLDER
	"local v = redis.call('GET', KEYS[1]) "
	"return v and holder(v) or 0";

void dir_lease_value(const struct directory *d, int64_t id, char *buf, size_t len)
{
	snprintf(buf, len, "%lld:%s", (long long)id, d->instance);
}

static int lease_find(struct directory *d, const struct chunk_hash *h)
{
	size_t i;

	for (i = 0; i < d->nleases; i++)
		if (hash_equal(&d->leases[i].h, h))
			return (int)i;
	return -1;
}

static int lease_remember(struct directory *d, const struct chunk_hash *h, uint64_t until)
{
	int i, rc = 0;

	pthread_mutex_lock(&d->lease_lock);
	i = lease_find(d, h);
	if (i >= 0) {
		d->leases[i].hold_until_ns = until;
		goto out;
	}
	if (d->nleases == d->cap_leases) {
		size_t cap = d->cap_leases ? d->cap_leases * 2 : 16;
		struct dir_lease *v = realloc(d->leases, cap * sizeof(*v));

		if (!v) {
			rc = -ENOMEM;
			goto out;
		}
		d->leases = v;
		d->cap_leases = cap;
	}
	d->leases[d->nleases].h = *h;
	d->leases[d->nleases].hold_until_ns = until;
	d->nleases++;
out:
	pthread_mutex_unlock(&d->lease_lock);
	return rc;
}

bool dir_lease_forget(struct directory *d, const struct chunk_hash *h)
{
	int i;

	pthread_mutex_lock(&d->lease_lock);
	i = lease_find(d, h);
	if (i >= 0)
		d->leases[i] = d->leases[--d->nleases];
	pthread_mutex_unlock(&d->lease_lock);
	return i >= 0;
}

int directory_lease_acquire(struct directory *d, const struct chunk_hash *h,
			    uint64_t hold_until_ns, int64_t *holder)
{
	char key[DIR_KEY_MAX], val[64];
	redisReply *r = NULL;
	int64_t id = directory_node_id(d);
	int rc;

	*holder = 0;
	if (id < 0)
		return dir_command(d, NULL, "PING") ?: -ENOTCONN;
	dir_chunk_key(d, "lease:", h, key, sizeof(key));
	dir_lease_value(d, id, val, sizeof(val));
	rc = dir_command(d, &r, "EVAL %s 1 %s %s %u %lld", lua_acquire, key, val,
			 d->lease_ttl_ms, (long long)id);
	if (rc)
		return rc;
	if (r->type != REDIS_REPLY_INTEGER || r->integer < 0) {
		rc = -EPROTO;
	} else if (r->integer == 0) {
		rc = lease_remember(d, h, hold_until_ns);
		if (!rc)
			DIR_STAT_ADD(d, leases_taken, 1);
	} else {
		*holder = r->integer;
		DIR_STAT_ADD(d, leases_busy, 1);
		rc = -EBUSY;
	}
	freeReplyObject(r);
	return rc;
}

/*
 * Runs script (compare-and-delete) on *h's lease (and key2, if not NULL) with arg: 0 when
 * deleted, -ENOENT if not.
 */
static int lease_delete_if(struct directory *d, const struct chunk_hash *h,
			   const char *script, const char *key2, const char *arg)
{
	char key[DIR_KEY_MAX];
	redisReply *r = NULL;
	int rc;

	dir_chunk_key(d, "lease:", h, key, sizeof(key));
	rc = key2 ? dir_command(d, &r, "EVAL %s 2 %s %s %s", script, key, key2, arg) :
		    dir_command(d, &r, "EVAL %s 1 %s %s", script, key, arg);
	if (rc)
		return rc;
	rc = r->type == REDIS_REPLY_INTEGER && r->integer > 0 ? 0 : -ENOENT;
	freeReplyObject(r);
	return rc;
}

int directory_lease_release(struct directory *d, const struct chunk_hash *h)
{
	char val[64];
	int rc;

	if (!dir_lease_forget(d, h))
		return -ENOENT;
	dir_lease_value(d, directory_node_id(d), val, sizeof(val));
	rc = lease_delete_if(d, h, dir_lua_release, NULL, val);
	if (!rc)
		DIR_STAT_ADD(d, leases_released, 1);
	return rc;
}

int directory_lease_break(struct directory *d, const struct chunk_hash *h, int64_t node_id)
{
	char alive[DIR_KEY_MAX], id[24];

	snprintf(alive, sizeof(alive), "%salive:%lld", d->prefix, (long long)node_id);
	snprintf(id, sizeof(id), "%lld", (long long)node_id);
	return lease_delete_if(d, h, lua_break, alive, id);
}

int directory_lease_holder(struct directory *d, const struct chunk_hash *h, int64_t *holder)
{
	char key[DIR_KEY_MAX];
	redisReply *r = NULL;
	int rc;

	*holder = 0;
	dir_chunk_key(d, "lease:", h, key, sizeof(key));
	rc = dir_command(d, &r, "EVAL %s 1 %s", lua_holder, key);
	if (rc)
		return rc;
	if (r->type == REDIS_REPLY_INTEGER && r->integer >= 0)
		*holder = r->integer;
	else
		rc = -EPROTO;
	freeReplyObject(r);
	return rc;
}

/*
 * Renews every lease still within its hold time and releases the others (their fetch
 * gave up: waiters should not wait for the TTL). A lease found taken by someone else
 * (it expired during an outage) is forgotten.
 */
void dir_leases_renew(struct directory *d)
{
	struct dir_lease *v = NULL;
	bool *lost = NULL;
	size_t n, i;
	uint64_t now = now_ns();
	int64_t id = directory_node_id(d);
	char key[DIR_KEY_MAX], val[64];

	pthread_mutex_lock(&d->lease_lock);
	n = d->nleases;
	if (n) {
		v = malloc(n * sizeof(*v));
		lost = calloc(n, sizeof(*lost));
		if (v && lost)
			memcpy(v, d->leases, n * sizeof(*v));
	}
	pthread_mutex_unlock(&d->lease_lock);
	if (!n || !v || !lost || id < 0)
		goto out;

	/* the thread's own connection: never queued behind the callers (directory.c inv. 5) */
	if (!d->hk)
		goto out;
	DIR_STAT_ADD(d, commands, 1);
	dir_lease_value(d, id, val, sizeof(val));
	for (i = 0; i < n; i++) {
		dir_chunk_key(d, "lease:", &v[i].h, key, sizeof(key));
		if (now >= v[i].hold_until_ns)
			redisAppendCommand(d->hk, "EVAL %s 1 %s %s", dir_lua_release, key, val);
		else
			redisAppendCommand(d->hk, "EVAL %s 1 %s %s %u", lua_renew, key, val,
					   d->lease_ttl_ms);
	}
	for (i = 0; i < n && d->hk; i++) {
		redisReply *r = NULL;

		if (dir_hk_reply(d, &r))
			continue;
		if (now >= v[i].hold_until_ns) {
			lost[i] = true;
			DIR_STAT_ADD(d, leases_expired, 1);
		} else if (r->type == REDIS_REPLY_INTEGER && r->integer > 0) {
			DIR_STAT_ADD(d, leases_renewed, 1);
		} else {
			lost[i] = true;
			DIR_STAT_ADD(d, leases_expired, 1);
		}
		freeReplyObject(r);
	}
	for (i = 0; i < n; i++) {
		if (!lost[i])
			continue;
		pthread_mutex_lock(&d->lease_lock);
		int j = lease_find(d, &v[i].h);

		/* only if not re-acquired meanwhile with a later hold time */
		if (j >= 0 && d->leases[j].hold_until_ns == v[i].hold_until_ns)
			d->leases[j] = d->leases[--d->nleases];
		pthread_mutex_unlock(&d->lease_lock);
	}
out:
	free(v);
	free(lost);
}
