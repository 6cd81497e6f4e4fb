/*
 * config.h - rackdiskd's configuration: the INI file of DESIGN.md section 8.
 *
 * Every key has a default (config_defaults()); config_load() overlays a file on them and
 * validates the result. An unknown section or key, a repeated key, a malformed value or
 * a missing required key is an error whose one-line message names the file and line, so
 * an operator sees exactly what to fix. The reference of every key, with its default,
 * is appliance/rackdisk.conf.example.
 */
#ifndef RACKDISK_APPLIANCE_CONFIG_H
#define RACKDISK_APPLIANCE_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/log.h"

#define CONFIG_STR 256
#define CONFIG_PATH 4096
#define CONFIG_HOST 256

/* A "host:port" or "[v6]:port" address, as parsed from the file. */
struct config_addr {
	char host[CONFIG_HOST];
	uint16_t port;
};

struct config {
	/* [node] */
	char node_name[CONFIG_STR];     /* required */
	char rack[CONFIG_STR];          /* "default" */
	char state_dir[CONFIG_PATH];    /* /var/lib/rackdisk */
	enum log_level log_level;       /* info */

	/* [cache] */
	char cache_dir[CONFIG_PATH];    /* <state_dir>/cache */
	uint64_t cache_size;            /* 64G; 0 = unlimited */
	bool cache_verify_on_open;      /* false */
	bool cache_direct_io;           /* false */

	/* [seed] */
	char seed_url[CONFIG_PATH];     /* required: http://, https://, file:// or /dir */
	unsigned seed_workers;          /* 8 */
	uint64_t seed_retry_initial_ms; /* 100 */
	uint64_t seed_retry_max_ms;     /* 2000 */
	uint64_t seed_request_timeout_ms; /* 10000 */
	unsigned seed_readahead;        /* 4 chunks */

	/* [cluster] (cluster/peering.h) */
	char redis[CONFIG_PATH];        /* "" = standalone */
	char cluster_prefix[CONFIG_STR]; /* "rackdisk:" - Redis key prefix */
	struct config_addr cluster_listen; /* 0.0.0.0:7480 */
	struct config_addr cluster_advertise; /* "" = listen, unless listen is a wildcard
					       * (then required when redis is set) */
	char token_file[CONFIG_PATH];   /* "" ; required when redis is set */
	unsigned lease_wait_ms;         /* 10000 */
	unsigned lease_ttl_ms;          /* 3000 */
	unsigned heartbeat_ttl_ms;      /* 10000 */
	unsigned peer_timeout_ms;       /* 5000 */
	unsigned cluster_readahead;     /* 16 chunks: peer-only readahead window */

	/* [iscsi] */
	struct config_addr portal;      /* 0.0.0.0:3260 */
	bool tgtd_spawn;                /* tgtd = spawn (true) | external */
	int control_port;               /* 0 (0..32767) */
	char iqn_prefix[CONFIG_STR];    /* iqn.2026-11.io.rackdisk */
	uint64_t io_timeout_ms;         /* 30000 */
	char iscsi_advertise[CONFIG_HOST]; /* host in iSCSI URLs; "" = portal host or hostname */
	char tgtd_path[CONFIG_PATH];    /* /usr/sbin/tgtd */
	char tgtadm_path[CONFIG_PATH];  /* /usr/sbin/tgtadm */
	char ipc_socket[CONFIG_PATH];   /* spawn: <state_dir>/tgtd.ipc; external: "" = tgt's */
	bool direct_io;                 /* false: lun.json "direct_io" */

	/* [target] */
	char trace_dir[CONFIG_PATH];    /* "" = off; else lun.json "trace" = <dir>/<disk>.trace */

	/* [api] */
	struct config_addr api_listen;  /* 127.0.0.1:7470 */
	uint64_t api_max_body;          /* 64K */
};

void config_defaults(struct config *c);

/*
 * Reads path over the defaults and validates. 0, or -EINVAL (bad content) / a negative
 * errno from opening the file, with a one-line message "FILE:LINE: ..." in err.
 */
int config_load(const char *path, struct config *c, char *err, size_t errlen);

/* Same, from text in memory (name is used in messages); for tests. */
int config_load_string(const char *name, const char *text, struct config *c, char *err,
		       size_t errlen);

/*
 * Checks that the programs c names can be run: [iscsi] tgtadm_path, and tgtd_path with
 * tgtd = spawn, must be regular files we may execute. Apart from config_load, which
 * reads the file only: this looks at the machine. 0, or a negative errno with
 * "[iscsi] KEY 'PATH' cannot be executed: WHY" in err.
 */
int config_check_programs(const struct config *c, char *err, size_t errlen);

/* "host:port" / "[v6]:port" with port 1..65535. 0 or -EINVAL. */
int config_parse_addr(const char *s, struct config_addr *out);

/* Formats an address back as host:port (brackets for v6). */
const char *config_addr_str(const struct config_addr *a, char *buf, size_t len);

/* An iSCSI qualified name prefix such as iqn.2026-11.io.rackdisk (RFC 3720 3.2.6.3.1):
 * "iqn." yyyy-mm "." reversed domain, lowercase letters, digits, '.', '-', ':'. */
bool config_iqn_valid(const char *iqn);

/* snprintf for paths: 0, or -ENAMETOOLONG when buf is too small (buf then holds ""). */
int config_path_fmt(char *buf, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

#endif
