/*
 * api_req.h - validation of REST API request bodies, apart from the HTTP server so the
 * rules can be tested on their own. Each parser returns 0, or -EINVAL with a one-line
 * reason (what is wrong and with which field) for the client in err.
 */
#ifndef RACKDISK_APPLIANCE_API_REQ_H
#define RACKDISK_APPLIANCE_API_REQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "appliance/diskrec.h"

/* Largest disk accepted: 64 TiB (tgt and most initiators handle more, but a typo such
 * as "64P" should be refused rather than thin-provisioned). */
#define API_DISK_SIZE_MAX (64ULL << 40)

/* POST /api/v1/disks: {"name", "image", "size"?, "initiators"?: [...],
 *                      "chap"?: {"user", "password"}} */
struct disk_request {
	char name[DISKREC_NAME_MAX];
	char image[DISKREC_NAME_MAX]; /* tag or 64-hex image id */
	uint64_t size;                /* 0 = the image's size */
	char initiators[DISKREC_MAX_INITIATORS][DISKREC_IQN_MAX];
	unsigned ninitiators;
	char chap_user[DISKREC_CHAP_MAX];
	char chap_password[DISKREC_CHAP_MAX];
};

int api_parse_disk_request(const char *body, size_t len, struct disk_request *req, char *err,
			   size_t errlen);

/* PATCH /api/v1/disks/<name>: {"size": ...} (a disk's new, larger size). */
int api_parse_resize_request(const char *body, size_t len, uint64_t *size, char *err,
			     size_t errlen);

/* POST /api/v1/images: {"tag": "<name>"} (alias "name"). */
int api_parse_image_request(const char *body, size_t len, char *tag, size_t taglen, char *err,
			    size_t errlen);

/* An image reference: a tag (name_is_valid) or a 64-hex image id. */
bool api_image_ref_valid(const char *s);

/*
 * The body of an error reply, {"error": msg}, with each byte of msg that is not part of
 * valid UTF-8 replaced by '?': jansson refuses such strings, and an error must still be
 * answered. NULL only when out of memory.
 */
json_t *api_error_json(const char *msg);

/* "size" may be a JSON integer (bytes) or a string ("10G", "4096"). */
int api_parse_size_value(const char *s, uint64_t *out);

#endif
