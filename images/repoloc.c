/*
 * repoloc.c - see repoloc.h.
 */
#include "images/repoloc.h"

#include <ctype.h>
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
		loc = path;
	} else if ((n == 4 && !strncasecmp(loc, "http", 4)) ||
		   (n == 5 && !strncasecmp(loc, "https", 5))) {
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
