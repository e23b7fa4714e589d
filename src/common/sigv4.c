/*-------------------------------------------------------------------------
 *
 * sigv4.c
 *	  AWS Signature Version 4 with OpenSSL (see sigv4.h for the rules).
 *
 * runs in: worker and backends; also built as frontend code (-DFRONTEND)
 * by the vector test test/unit/test_sigv4.c, so it uses only StringInfo,
 * palloc and libc.
 *
 * The secret access key is used only as HMAC key material: it is never
 * copied into any string this file returns.
 *
 *-------------------------------------------------------------------------
 */
#ifdef FRONTEND
#include "postgres_fe.h"
#else
#include "postgres.h"
#endif

#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "common/sigv4.h"
#include "lib/stringinfo.h"

#define SHA256_LEN 32

typedef struct CanonHeader
{
	char	   *name;			/* lower case */
	char	   *value;			/* trimmed, runs of blanks collapsed */
	int			order;			/* position in the input: keeps repeats in order */
} CanonHeader;

typedef struct QueryPair
{
	char	   *key;			/* encoded */
	char	   *value;			/* encoded */
} QueryPair;

static const char hexdig_lower[] = "0123456789abcdef";
static const char hexdig_upper[] = "0123456789ABCDEF";

static void
to_hex(const unsigned char *bytes, int n, char *hex)
{
	for (int i = 0; i < n; i++)
	{
		hex[2 * i] = hexdig_lower[bytes[i] >> 4];
		hex[2 * i + 1] = hexdig_lower[bytes[i] & 15];
	}
	hex[2 * n] = '\0';
}

bool
sigv4_sha256_hex(const char *data, size_t len, char *hex)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;

	if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) != 1 || mdlen != SHA256_LEN)
		return false;
	to_hex(md, SHA256_LEN, hex);
	return true;
}

static bool
hmac256(const unsigned char *key, size_t keylen, const char *data, size_t len,
		unsigned char *out)
{
	unsigned int outlen = 0;

	if (HMAC(EVP_sha256(), key, (int) keylen, (const unsigned char *) data, len,
			 out, &outlen) == NULL)
		return false;
	return outlen == SHA256_LEN;
}

void
sigv4_amz_date(time_t t, char *buf)
{
	struct tm	tm;

	gmtime_r(&t, &tm);
	strftime(buf, 17, "%Y%m%dT%H%M%SZ", &tm);
}

static bool
is_unreserved(unsigned char c)
{
	return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
		(c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.' || c == '~';
}

char *
sigv4_uri_encode(const char *s, size_t len, bool keep_slash)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (size_t i = 0; i < len; i++)
	{
		unsigned char c = (unsigned char) s[i];

		if (is_unreserved(c) || (keep_slash && c == '/'))
			appendStringInfoChar(&buf, (char) c);
		else
		{
			appendStringInfoChar(&buf, '%');
			appendStringInfoChar(&buf, hexdig_upper[c >> 4]);
			appendStringInfoChar(&buf, hexdig_upper[c & 15]);
		}
	}
	return buf.data;
}

static int
hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* percent-decode s[0..len) (a malformed escape stays literal); *outlen set */
static char *
uri_decode(const char *s, size_t len, size_t *outlen)
{
	char	   *out = palloc(len + 1);
	size_t		n = 0;

	for (size_t i = 0; i < len; i++)
	{
		if (s[i] == '%' && i + 2 < len &&
			hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0)
		{
			out[n++] = (char) (hexval(s[i + 1]) * 16 + hexval(s[i + 2]));
			i += 2;
		}
		else
			out[n++] = s[i];
	}
	out[n] = '\0';
	*outlen = n;
	return out;
}

/*
 * Canonical URI: remove "." and ".." segments and empty segments (as
 * botocore's remove_dot_segments does), keep a trailing slash, then
 * encode the result once more with '/' kept.
 */
static char *
canonical_uri(const char *path)
{
	StringInfoData norm;
	const char **segs;
	int			nseg = 0;
	size_t		plen = path ? strlen(path) : 0;
	const char *p = path;
	const char *end = path + plen;
	bool		trailing = plen > 0 && path[plen - 1] == '/';

	if (plen == 0)
		return pstrdup("/");
	segs = palloc(sizeof(char *) * (plen + 1));
	while (p < end)
	{
		const char *slash = memchr(p, '/', end - p);
		size_t		seglen = slash ? (size_t) (slash - p) : (size_t) (end - p);

		if (seglen == 0 || (seglen == 1 && p[0] == '.'))
			;
		else if (seglen == 2 && p[0] == '.' && p[1] == '.')
		{
			if (nseg > 0)
				nseg--;
		}
		else
			segs[nseg++] = pnstrdup(p, seglen);
		p += seglen + 1;
	}

	initStringInfo(&norm);
	for (int i = 0; i < nseg; i++)
	{
		appendStringInfoChar(&norm, '/');
		appendStringInfoString(&norm, segs[i]);
	}
	if (nseg == 0 || trailing)
		appendStringInfoChar(&norm, '/');
	return sigv4_uri_encode(norm.data, norm.len, true);
}

static int
cmp_query(const void *a, const void *b)
{
	const QueryPair *x = a;
	const QueryPair *y = b;
	int			c = strcmp(x->key, y->key);

	return c != 0 ? c : strcmp(x->value, y->value);
}

/* each key and value decoded and re-encoded, sorted by key then value */
static char *
canonical_query(const char *query)
{
	StringInfoData buf;
	QueryPair  *pairs;
	int			n = 0;
	size_t		qlen = query ? strlen(query) : 0;
	const char *p = query;
	const char *end = query + qlen;

	initStringInfo(&buf);
	if (qlen == 0)
		return buf.data;
	pairs = palloc(sizeof(QueryPair) * (qlen + 1));
	while (p <= end)
	{
		const char *amp = memchr(p, '&', end - p);
		size_t		len = amp ? (size_t) (amp - p) : (size_t) (end - p);
		const char *eq = memchr(p, '=', len);
		size_t		klen = eq ? (size_t) (eq - p) : len;
		size_t		dlen;
		char	   *d;

		if (len > 0)
		{
			d = uri_decode(p, klen, &dlen);
			pairs[n].key = sigv4_uri_encode(d, dlen, false);
			if (eq)
			{
				d = uri_decode(eq + 1, len - klen - 1, &dlen);
				pairs[n].value = sigv4_uri_encode(d, dlen, false);
			}
			else
				pairs[n].value = pstrdup("");
			n++;
		}
		p += len + 1;
	}
	qsort(pairs, n, sizeof(QueryPair), cmp_query);
	for (int i = 0; i < n; i++)
		appendStringInfo(&buf, "%s%s=%s", i ? "&" : "", pairs[i].key, pairs[i].value);
	return buf.data;
}

static int
cmp_header(const void *a, const void *b)
{
	const CanonHeader *x = a;
	const CanonHeader *y = b;
	int			c = strcmp(x->name, y->name);

	return c != 0 ? c : x->order - y->order;
}

/* trim, and collapse runs of spaces and tabs into one space */
static char *
canonical_value(const char *v)
{
	StringInfoData buf;
	bool		blank = false;

	initStringInfo(&buf);
	for (; *v; v++)
	{
		if (*v == ' ' || *v == '\t' || *v == '\n' || *v == '\r')
			blank = true;
		else
		{
			if (blank && buf.len > 0)
				appendStringInfoChar(&buf, ' ');
			blank = false;
			appendStringInfoChar(&buf, *v);
		}
	}
	return buf.data;
}

bool
sigv4_sign(const SigV4Request *req, SigV4Result *out)
{
	CanonHeader *hs = palloc(sizeof(CanonHeader) * (req->nheaders + 1));
	StringInfoData creq;
	StringInfoData names;
	StringInfoData sts;
	StringInfoData key;
	char		payload_hash[65];
	char		creq_hash[65];
	char		datestamp[9];
	unsigned char k1[SHA256_LEN];
	unsigned char k2[SHA256_LEN];
	unsigned char sig[SHA256_LEN];
	char		sighex[65];
	bool		ok;

	memset(out, 0, sizeof(*out));
	for (int i = 0; i < req->nheaders; i++)
	{
		char	   *name = pstrdup(req->headers[i].name);

		for (char *c = name; *c; c++)
			if (*c >= 'A' && *c <= 'Z')
				*c += 'a' - 'A';
		hs[i].name = name;
		hs[i].value = canonical_value(req->headers[i].value);
		hs[i].order = i;
	}
	qsort(hs, req->nheaders, sizeof(CanonHeader), cmp_header);

	if (!sigv4_sha256_hex(req->payload ? req->payload : "", req->payload_len, payload_hash))
		return false;

	initStringInfo(&creq);
	initStringInfo(&names);
	appendStringInfo(&creq, "%s\n%s\n%s\n", req->method, canonical_uri(req->path),
					 canonical_query(req->query));
	for (int i = 0; i < req->nheaders; i++)
	{
		bool		repeat = i > 0 && strcmp(hs[i].name, hs[i - 1].name) == 0;

		if (repeat)
			appendStringInfo(&creq, ",%s", hs[i].value);
		else
		{
			if (i > 0)
			{
				appendStringInfoChar(&creq, '\n');
				appendStringInfoChar(&names, ';');
			}
			appendStringInfo(&creq, "%s:%s", hs[i].name, hs[i].value);
			appendStringInfoString(&names, hs[i].name);
		}
	}
	appendStringInfo(&creq, "\n\n%s\n%s", names.data, payload_hash);

	if (!sigv4_sha256_hex(creq.data, creq.len, creq_hash))
		return false;
	memcpy(datestamp, req->amz_date, 8);
	datestamp[8] = '\0';
	initStringInfo(&sts);
	appendStringInfo(&sts, "AWS4-HMAC-SHA256\n%s\n%s/%s/%s/aws4_request\n%s",
					 req->amz_date, datestamp, req->region, req->service, creq_hash);

	/* kSecret = "AWS4" + secret; the buffer is zeroed once used */
	initStringInfo(&key);
	appendStringInfo(&key, "AWS4%s", req->secret_access_key);
	ok = hmac256((unsigned char *) key.data, key.len, datestamp, 8, k1) &&
		hmac256(k1, SHA256_LEN, req->region, strlen(req->region), k2) &&
		hmac256(k2, SHA256_LEN, req->service, strlen(req->service), k1) &&
		hmac256(k1, SHA256_LEN, "aws4_request", 12, k2) &&
		hmac256(k2, SHA256_LEN, sts.data, sts.len, sig);
	memset(key.data, 0, key.len);
	pfree(key.data);
	memset(k1, 0, sizeof(k1));
	memset(k2, 0, sizeof(k2));
	if (!ok)
		return false;
	to_hex(sig, SHA256_LEN, sighex);

	out->canonical_request = creq.data;
	out->string_to_sign = sts.data;
	out->signed_headers = names.data;
	out->signature = pstrdup(sighex);
	out->authorization = psprintf("AWS4-HMAC-SHA256 Credential=%s/%s/%s/%s/aws4_request, "
								  "SignedHeaders=%s, Signature=%s",
								  req->access_key_id, datestamp, req->region,
								  req->service, names.data, sighex);
	return true;
}
