/*
 * repoloc.c - see repoloc.h.
 */
#include "images/repoloc.h"

#include <ctype.h>
#include <stdbool.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/util.h"

#define SCHEMES_HINT "use a directory, file:///PATH, http:// or https://"

/* Length of the RFC 3986 scheme that loc starts with when "://" follows it, else 0. */
static size_t scheme_len(const char *loc)
{
	size_t n = 0;

	if (!isalpha((unsigned char)loc[0]))
		return 0;
	while (isalnum((unsigned char)loc[n]) || loc[n] == '+' || loc[n] == '-' || loc[n] == '.')
		n++;
	return strncmp(loc + n, "://", 3) ? 0 : n;
}

/* A copy of s[0..n) without trailing '/' (a lone "/" stays). */
static char *dup_trimmed(const char *s, size_t n)
{
	while (n > 1 && s[n - 1] == '/')
		n--;
	return strndup(s, n);
}

/*
 * The path of a file: URL into *out (malloc'd, no trailing '/'), percent-decoded (RFC 8089
 * section 2 and RFC 3986 section 2.1: "file:///tmp/a%20b" is /tmp/a b). A query or
 * fragment has no meaning for a directory, and %00 or %2F could not name what the URL
 * spells (a NUL ends the path; an encoded '/' is not a separator): all are refused.
 */
static int file_path(const char *path, char **out, char *err, size_t errlen)
{
	size_t j;
	char *p;

	if (strpbrk(path, "?#"))
		return set_err(err, errlen, -EINVAL,
			       "a file:// URL has no query or fragment ('?' or '#'; "
			       "spell them %%3F and %%23)");
	p = strdup(path);
	if (!p)
		return set_err(err, errlen, -ENOMEM, "out of memory");
	/* every '%' of a valid path begins an escape, so "%2F" anywhere is an encoded '/' */
	if (strcasestr(path, "%2f") || pct_decode(p)) {
		free(p);
		return set_err(err, errlen, -EINVAL,
			       "bad %%-escape in a file:// URL ('%%' is %%25; %%00 and %%2F "
			       "name no path)");
	}
	j = strlen(p);
	while (j > 1 && p[j - 1] == '/')
		j--;
	p[j] = '\0';
	*out = p;
	return 0;
}

/* Whether the http(s) URL loc (its scheme n characters long) names a host. */
static bool url_names_host(const char *loc, size_t n)
{
	const char *auth = loc + n + 3;
	size_t len = strcspn(auth, "/?#");
	const char *at = memrchr(auth, '@', len);

	if (at) {
		len -= (size_t)(at + 1 - auth);
		auth = at + 1;
	}
	return len > 0 && auth[0] != ':';
}

int repoloc_parse(const char *loc, struct repoloc *out, char *err, size_t errlen)
{
	size_t n;

	memset(out, 0, sizeof(*out));
	if (err && errlen)
		err[0] = '\0';
	if (!loc || !*loc)
		return set_err(err, errlen, -EINVAL, "empty repository location");
	n = scheme_len(loc);
	if (n == 4 && !strncasecmp(loc, "file", 4)) {
		const char *path = loc + 7;

		if (!strncasecmp(path, "localhost/", 10))
			path += 9;
		if (path[0] != '/')
			return set_err(err, errlen, -EINVAL,
				       "a file:// URL names an absolute path on this host "
				       "(file:///PATH or file://localhost/PATH)");
		return file_path(path, &out->where, err, errlen);
	} else if ((n == 4 && !strncasecmp(loc, "http", 4)) ||
		   (n == 5 && !strncasecmp(loc, "https", 5))) {
		if (!url_names_host(loc, n))
			return set_err(err, errlen, -EINVAL,
				       "an http(s) URL names a host (http://HOST[:PORT]/PATH)");
		out->http = true;
	} else if (n) {
		return set_err(err, errlen, -EPROTONOSUPPORT,
			       "unsupported repository scheme '%.*s' (" SCHEMES_HINT ")", (int)n,
			       loc);
	}
	out->where = dup_trimmed(loc, strlen(loc));
	return out->where ? 0 : set_err(err, errlen, -ENOMEM, "out of memory");
}

const char *repoloc_shown(const char *url, char *buf, size_t len)
{
	size_t n = url ? scheme_len(url) : 0, auth_len, at;

	if (!len)
		return buf;
	if (!n) {
		snprintf(buf, len, "%s", url ? url : "");
		return buf;
	}
	n += 3; /* "scheme://" */
	auth_len = strcspn(url + n, "/?#");
	for (at = auth_len; at > 0 && url[n + at - 1] != '@'; at--)
		;
	/* at: the length of "user:password@" (the last '@' of the authority ends it), or 0 */
	snprintf(buf, len, "%.*s%s", (int)n, url, url + n + at);
	return buf;
}

void repoloc_free(struct repoloc *l)
{
	free(l->where);
	l->where = NULL;
}
