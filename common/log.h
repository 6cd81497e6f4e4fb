/*
 * log.h - one-line log records on stderr: "2026-11-22T14:31:12.123Z rackdiskd info: ...".
 *
 * Daemons run under systemd, which captures stderr; the CLI prints its errors through
 * the same calls so every message has the same shape.
 */
#ifndef RACKDISK_COMMON_LOG_H
#define RACKDISK_COMMON_LOG_H

#include <stdarg.h>

enum log_level { LOG_LVL_DEBUG, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERROR };

void log_init(const char *prog, enum log_level min, int with_time);
void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/*
 * A message that may repeat at the rate a client chooses (one per connection it drops):
 * log_limit_pass() lets one through per interval_ns and counts the others, so a flood of
 * connections cannot flood the log. Zero-initialise; safe from any thread.
 */
struct log_limit {
	unsigned long long last_ns, suppressed;
};

/* true when a message may be logged now, with *suppressed set to the number held back
 * since the last one that was; false (and counted) otherwise. */
int log_limit_pass(struct log_limit *l, unsigned long long interval_ns,
		   unsigned long long *suppressed);

/*
 * An HTTP server's own messages (libmicrohttpd's logger, fmt and ap as it passes them),
 * mostly about one client's connection (refused at a limit, closed mid-request): any
 * client can make one per connection, so at most one per 5 s through l is a warning, with
 * the count held back; the others are debug. who prefixes the line ("api").
 */
void log_server_message(struct log_limit *l, const char *who, const char *fmt, va_list ap);

#define log_debug(...) log_msg(LOG_LVL_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_LVL_ERROR, __VA_ARGS__)

#endif
