/*
 * api.h - rackdiskd's HTTP listener: the REST API under /api/v1 (JSON) and the
 * Prometheus metrics at /metrics (appliance/metrics.c).
 *
 *   GET    /api/v1/health              {"status": "ok", ...}
 *   GET    /api/v1/images              pulled images
 *   POST   /api/v1/images              {"tag": T}: pull T from the seed
 *   GET    /api/v1/images/<tag|id>
 *   GET    /api/v1/disks
 *   POST   /api/v1/disks               {"name", "image", "size"?, "initiators"?, "chap"?}
 *                                      -> 201 with "url": iscsi://HOST:PORT/IQN/1
 *   GET    /api/v1/disks/<name>
 *   DELETE /api/v1/disks/<name>[?force=1]
 *   GET    /api/v1/cache               chunk store and fetcher counters
 *   GET    /api/v1/peers               this node (the cluster issue adds the others)
 *   GET    /metrics
 *
 * Errors are {"error": "<one line>"} with 400 (bad input, %00 in the URI), 404, 405 (with
 * Allow), 409 (exists, in use), 413 (body over [api] max_body), 415 (a body not sent as
 * Content-Type: application/json), 502 (the seed failed) or 500.
 */
#ifndef RACKDISK_APPLIANCE_API_H
#define RACKDISK_APPLIANCE_API_H

#include <stddef.h>

struct appliance;
struct api;

int api_start(struct appliance *a, struct api **out);
void api_stop(struct api *api);

/* HTTP status for a negative errno returned by an appliance operation. */
unsigned api_status_for_errno(int err);

/* Prometheus text exposition of every counter (metrics.c); *out is malloc'd. */
int metrics_render(struct appliance *a, char **out, size_t *len);

/* s as a Prometheus label value (\\, \" and \n escaped) into buf[0..len); a value too long
 * is cut short, never in the middle of an escape. len >= 2 * strlen(s) + 1 always fits. */
void metrics_label_escape(const char *s, char *buf, size_t len);

#endif
