/*
 * log.h - one-line log records on stderr: "2026-11-22T14:31:12.123Z rackdiskd info: ...".
 *
 * Daemons run under systemd, which captures stderr; the CLI prints its errors through
 * the same calls so every message has the same shape.
 */
#ifndef RACKDISK_COMMON_LOG_H
#define RACKDISK_COMMON_LOG_H

enum log_level { LOG_LVL_DEBUG, LOG_LVL_INFO, LOG_LVL_WARN, LOG_LVL_ERROR };

void log_init(const char *prog, enum log_level min, int with_time);
void log_msg(enum log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) log_msg(LOG_LVL_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_LVL_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_LVL_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_LVL_ERROR, __VA_ARGS__)

#endif
