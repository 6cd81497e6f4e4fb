/*
 * util.h - small helpers shared by every folder: sizes, names, time, files.
 */
#ifndef RACKDISK_COMMON_UTIL_H
#define RACKDISK_COMMON_UTIL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define KiB (1024ULL)
#define MiB (1024ULL * KiB)
#define GiB (1024ULL * MiB)

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#define DIV_ROUND_UP(n, d) (((n) + (d) - 1) / (d))

/*
 * Parses a size such as "4096", "64K", "1M", "64G", "1.5T" (binary units, optional "iB"
 * or "B" suffix; decimal digits only; a fraction only with a unit, rounded to the
 * nearest byte). Returns 0 and *out, or -EINVAL for anything else (empty, negative,
 * hex or exponent forms, trailing junk, a fraction of a byte, a non-zero size that
 * rounds to 0, more than 2^64 - 1 bytes).
 */
int parse_size(const char *s, uint64_t *out);

/* Formats n bytes as e.g. "1.5 GiB" into buf. Returns buf. */
const char *format_size(uint64_t n, char *buf, size_t len);

/*
 * A name (image tag, disk name, node name) is 1..128 characters from [A-Za-z0-9._-],
 * does not start with '.' or '-', and so can never be "..", contain '/', spaces or
 * control characters. A buffer for one takes NAME_MAX_LEN + 1 bytes.
 */
#define NAME_MAX_LEN 128
bool name_is_valid(const char *name);

/* A disk name: a valid name without '_', since it becomes the end of the disk's iSCSI
 * target name, where RFC 3720 (and tgtd) allow only letters, digits, '.', '-' and ':'. */
bool disk_name_is_valid(const char *name);

/*
 * The length of the longest prefix of s[0..n) that is whole, valid UTF-8 (RFC 3629: no
 * overlong forms, no surrogates, nothing above U+10FFFF): n when all of it is. Cutting a
 * string there never splits a character; jansson refuses strings that are not UTF-8.
 */
size_t utf8_valid_prefix(const char *s, size_t n);

/* s (NUL-terminated) is valid UTF-8. */
bool utf8_is_valid(const char *s);

/* Decodes %XX escapes in place (RFC 3986 section 2.1); -EINVAL for a bad escape or an
 * escaped NUL (which would end the string short). */
int pct_decode(char *s);

/* Monotonic clock in nanoseconds. */
uint64_t now_ns(void);

/* Writes len bytes at path atomically: a temp file of the call's own in the same
 * directory (".NAME.tmp.PID.SEQ", hidden; one a dead process left is overwritten), fsync,
 * rename, fsync of the directory. Safe from concurrent threads; the last rename wins.
 * Returns 0 or a negative errno; on an error before the rename nothing is left. */
int write_file_atomic(const char *path, const void *buf, size_t len);

/* Reads a whole file (at most max bytes) into a malloc'd NUL-terminated buffer. */
int read_file(const char *path, size_t max, char **out, size_t *len);

/* Writes a printf-style one-line reason into err[0..errlen) (when err is non-NULL) and
 * returns ret: `return set_err(err, errlen, -EINVAL, "bad %s", what);`. */
int set_err(char *err, size_t errlen, int ret, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

/* mkdir -p; 0 or a negative errno. */
int mkdir_p(const char *path, unsigned mode);

/* fsync of a directory; 0 or a negative errno. */
int fsync_dir(const char *dir);

/* pread/pwrite of exactly len bytes, retrying on EINTR and short transfers.
 * Returns 0, -EIO on a short read at end of file, or a negative errno. */
int pread_full(int fd, void *buf, size_t len, uint64_t off);
int pwrite_full(int fd, const void *buf, size_t len, uint64_t off);

#endif
