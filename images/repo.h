/*
 * repo.h - read access to a published repository, from a directory or over HTTP(S).
 *
 * Layout (DESIGN.md section 2):
 *   chunks/<hh>/<hash>        zstd chunk objects, shared by all images
 *   manifests/<image-id>.json manifests
 *   tags/<name>               the image id a name points at (written last)
 *   profiles/<image-id>       optional boot access profile
 *   tags/index                every tag name, one per line (rewritten after each tag), so
 *                             that tags can be listed over any HTTP server; "index" is
 *                             therefore not a usable tag name
 *   tags/.lock                flocked by publish around writing a tag and tags/index
 *   tmp/                      publish's temporary files (moved into place when complete)
 *
 * A repo handle is not thread-safe: use one per thread (each holds its own keep-alive
 * HTTP connection). Every call returns 0 or a negative errno; -ENOENT means the object
 * does not exist (HTTP 404/410), -EACCES HTTP 401/403, -ETIMEDOUT a timeout,
 * -ECONNREFUSED nothing listening, -EKEYREJECTED a TLS failure, -EFBIG an object over its
 * bound, -EIO any other transport failure or HTTP status. repo_strerror says which, in
 * words (the status, curl's message, the URL). Redirects are followed (3 hops, http(s)).
 */
#ifndef RACKDISK_IMAGES_REPO_H
#define RACKDISK_IMAGES_REPO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/hash.h"
#include "images/manifest.h"

#define REPO_TAGS_INDEX "index"

struct repo;

/* loc: a directory path, file:///PATH, file://localhost/PATH, http://... or https://...
 * (repoloc.h). -EINVAL or -EPROTONOSUPPORT for another spelling (repoloc_parse says why). */
int repo_open(const char *loc, struct repo **out);
void repo_close(struct repo *r);

/*
 * HTTP repositories: the connect timeout, and how long a transfer may run under 16 KiB/s
 * before it counts as stalled (default 30 s). A transfer is also bounded in all by that
 * plus the time its largest allowed object takes at 256 KiB/s, so a large manifest that
 * arrives steadily is never cut off at a fixed number of seconds.
 */
void repo_set_timeout_ms(struct repo *r, long ms);

/*
 * err (a negative errno a call on r returned) in words: for the last failed HTTP request
 * of r, what failed ("GET URL: HTTP 500", "GET URL: Failed to connect to ...", "... Operation
 * too slow ..."); else strerror. Valid until the next call on r.
 */
const char *repo_strerror(const struct repo *r, int err);

/* The negative errno for a libcurl result (a CURLcode) and for an HTTP status (0 for 200):
 * the one mapping of the seed client and the repository reader. */
int repo_curl_errno(int curl_code);
int repo_http_status_errno(long status);

/* The directory of a local repository, or NULL for an HTTP(S) one. */
const char *repo_dir(const struct repo *r);

/* Fetches the object at the relative path rel (at most max bytes, else -EFBIG) into a
 * malloc'd NUL-terminated buffer that the caller frees. */
int repo_fetch(struct repo *r, const char *rel, size_t max, char **out, size_t *len);

/* A usable tag name: name_is_valid() and not REPO_TAGS_INDEX. */
bool repo_tag_name_valid(const char *name);

/* True when s is spelled like an image id: 64 hex digits, either case. repo_load_image reads
 * such a string as a tag first, so a tag spelled so would hide the image with that id:
 * publish refuses to write one. */
bool repo_name_is_id(const char *s);

/* Resolves a tag name to an image id. -EINVAL for an invalid name. */
int repo_resolve_tag(struct repo *r, const char *name, struct chunk_hash *id);

/* Fetches and parses manifests/<id>.json; checks that its hash equals id. */
int repo_get_manifest(struct repo *r, const struct chunk_hash *id, struct manifest **out, char *err,
		      size_t errlen);

/* Tag or 64-hex image id -> manifest. */
int repo_load_image(struct repo *r, const char *name_or_id, struct manifest **out, char *err,
		    size_t errlen);

/* Fetches the raw (compressed) object of a chunk into a malloc'd buffer. */
int repo_get_chunk_object(struct repo *r, const struct chunk_hash *h, void **obj, size_t *len);

/* Fetches a chunk, decompresses and verifies it into out[0..len). */
int repo_get_chunk(struct repo *r, const struct chunk_hash *h, void *out, size_t len);

/* Lists tag names: calls fn for each; for HTTP, reads tags/ through the server's
 * directory index (nginx autoindex on) or the repository's tags/index file. */
int repo_list_tags(struct repo *r, int (*fn)(void *arg, const char *name), void *arg);

#endif
