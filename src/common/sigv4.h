/*-------------------------------------------------------------------------
 *
 * sigv4.h
 *	  AWS Signature Version 4 (HMAC-SHA256) for one HTTP request.
 *
 * runs in: worker and backends (through the bedrock adapter), and the
 * standalone vector test test/unit/test_sigv4.c (built with -DFRONTEND).
 *
 * Pure: the signing time is a parameter, nothing is read from the clock,
 * the environment or a global.  Results are palloc'd in the current
 * memory context.  Never raises an ERROR (so adapters may call it); a
 * failure of OpenSSL returns false.
 *
 * The canonical request follows botocore's SigV4Auth for non-S3 services:
 * the canonical URI is the path as sent (already URI-encoded) with dot
 * segments and empty segments removed, then URI-encoded once more (so a
 * "%3A" in the path is "%253A" in the canonical URI); the canonical query
 * re-encodes each decoded key and value with the unreserved set -_.~ and
 * sorts them; header names are lower-cased, values trimmed with inner
 * whitespace runs collapsed, repeated names joined with ",".
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_SIGV4_H
#define LLM_SIGV4_H

#include <time.h>

typedef struct SigV4Header
{
	const char *name;			/* any case */
	const char *value;
} SigV4Header;

typedef struct SigV4Request
{
	const char *method;			/* "POST" */
	const char *path;			/* as sent on the wire, already encoded; "" = "/" */
	const char *query;			/* without the '?', NULL or "" for none */
	const SigV4Header *headers; /* every header to sign (host, x-amz-date, ...) */
	int			nheaders;
	const char *payload;		/* exact body bytes */
	size_t		payload_len;
	const char *amz_date;		/* YYYYMMDDTHHMMSSZ, the x-amz-date value */
	const char *region;
	const char *service;		/* "bedrock" for Bedrock Runtime */
	const char *access_key_id;
	const char *secret_access_key;
} SigV4Request;

typedef struct SigV4Result
{
	char	   *canonical_request;
	char	   *string_to_sign;
	char	   *signed_headers;	/* "host;x-amz-date" */
	char	   *signature;		/* lower-case hex */
	char	   *authorization;	/* the whole Authorization header value */
} SigV4Result;

/* sign; false only if OpenSSL fails */
extern bool sigv4_sign(const SigV4Request *req, SigV4Result *out);

/* t as YYYYMMDDTHHMMSSZ (UTC) into buf[17] */
extern void sigv4_amz_date(time_t t, char *buf);

/* lower-case hex SHA-256 of data into hex[65]; false if OpenSSL fails */
extern bool sigv4_sha256_hex(const char *data, size_t len, char *hex);

/*
 * URI-encode s with the unreserved set A-Z a-z 0-9 -_.~ (plus '/' when
 * keep_slash), upper-case hex, as AWS wants; appended to a palloc'd string.
 */
extern char *sigv4_uri_encode(const char *s, size_t len, bool keep_slash);

#endif							/* LLM_SIGV4_H */
