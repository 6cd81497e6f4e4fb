/*
 * repoloc.h - where a repository is: the one reading of a repository location shared by
 * `rackdisk image ...` (--repo), the appliance's [seed] url, and the seed client, so that
 * a spelling means the same place to all of them.
 *
 * Accepted: http://HOST... and https://HOST... (scheme in any case; a host is required),
 * file:///ABS and file://localhost/ABS (RFC 8089; no other host; the path percent-decoded,
 * "file:///srv/a%20b" is "/srv/a b"; no '?' or '#', no %00 or %2F), and a plain directory
 * path (relative or absolute, taken as written; "file:x" without "//" is a directory named
 * so). Any other SCHEME:// is refused: read as a directory, "s3://bucket/repo" would quietly
 * create ./s3:/bucket/repo.
 */
#ifndef RACKDISK_IMAGES_REPOLOC_H
#define RACKDISK_IMAGES_REPOLOC_H

#include <stdbool.h>
#include <stddef.h>

struct repoloc {
	bool http;   /* http(s): where is the base URL; else the directory path */
	char *where; /* malloc'd, owned by the caller (repoloc_free); no trailing '/' */
};

/*
 * Parses loc into *out. Returns 0, or -EINVAL (empty, file:// naming no absolute path or
 * another host or with a query, fragment or bad %-escape, http(s) naming no host),
 * -EPROTONOSUPPORT (another scheme), -ENOMEM; on error writes a one-line
 * reason into err (when non-NULL) and leaves *out empty.
 */
int repoloc_parse(const char *loc, struct repoloc *out, char *err, size_t errlen);

void repoloc_free(struct repoloc *l);

/*
 * url as it may be shown: in an error message, a log line, an API reply. The userinfo of a
 * "scheme://user:password@host/..." URL (a repository behind basic authentication) is left
 * out: "scheme://host/...". Anything else is copied as it is. Writes into buf (truncated to
 * len - 1 bytes) and returns buf.
 */
const char *repoloc_shown(const char *url, char *buf, size_t len);

/* repoloc_shown into a fresh buffer per use, valid until the end of the enclosing block. */
#define REPOLOC_SHOWN(url) repoloc_shown((url), (char[4096]){0}, 4096)

#endif
