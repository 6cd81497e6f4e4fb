/*
 * log.c - see log.h. One fprintf per record so concurrent threads do not interleave.
 */
#include "common/log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static const char *log_prog = "rackdisk";
static enum log_level log_min = LOG_LVL_INFO;
static int log_time = 1;

void log_init(const char *prog, enum log_level min, int with_time)
{
	log_prog = prog;
	log_min = min;
	log_time = with_time;
}

void log_msg(enum log_level lvl, const char *fmt, ...)
{
	static const char *names[] = {"debug", "info", "warn", "error"};
	char msg[1024], stamp[40] = "";
	va_list ap;

	if (lvl < log_min)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (log_time) {
		struct timespec ts;
		struct tm tm;

		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		size_t n = strftime(stamp, sizeof(stamp), "%Y-%m-%dT%H:%M:%S", &tm);
		snprintf(stamp + n, sizeof(stamp) - n, ".%03ldZ ", ts.tv_nsec / 1000000);
	}
	fprintf(stderr, "%s%s %s: %s\n", stamp, log_prog, names[lvl], msg);
}

int log_limit_pass(struct log_limit *l, unsigned long long interval_ns,
		   unsigned long long *suppressed)
{
	struct timespec ts;
	unsigned long long now, last;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
	last = __atomic_load_n(&l->last_ns, __ATOMIC_RELAXED);
	if ((last && now - last < interval_ns) ||
	    !__atomic_compare_exchange_n(&l->last_ns, &last, now, 0, __ATOMIC_RELAXED,
					 __ATOMIC_RELAXED)) {
		__atomic_fetch_add(&l->suppressed, 1, __ATOMIC_RELAXED);
		return 0;
	}
	*suppressed = __atomic_exchange_n(&l->suppressed, 0, __ATOMIC_RELAXED);
	return 1;
}

void log_server_message(struct log_limit *l, const char *who, const char *fmt, va_list ap)
{
	unsigned long long held;
	char msg[512];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	msg[strcspn(msg, "\n")] = '\0';
	if (log_limit_pass(l, 5000000000ULL, &held))
		log_warn("%s: %s (at most one such warning per 5 s; %llu more since the last "
			 "one, at debug level)", who, msg, held);
	else
		log_debug("%s: %s", who, msg);
}
