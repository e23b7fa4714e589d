/*-------------------------------------------------------------------------
 *
 * vertex_token.c
 *	  Access tokens for kind "vertex" (Gemini on Vertex AI).
 *
 * runs in: worker.
 *
 * The credential of a vertex provider is a service-account JSON key
 * ({"type": "service_account", "project_id", "private_key_id",
 * "private_key" (PEM), "client_email", "token_uri", ...}).  Vertex wants an
 * OAuth access token, so per (provider, credential label) this file:
 *	 1. signs an RS256 JWT with the key (OpenSSL): header {"alg": "RS256",
 *		"typ": "JWT", "kid": private_key_id}, claims iss = sub = client_email,
 *		aud = the token endpoint, scope cloud-platform, iat, exp = iat + 3600;
 *	 2. POSTs grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer&
 *		assertion=<jwt> to the token endpoint (provider option token_url,
 *		else the key's token_uri) as a curl transfer in the worker's multi,
 *		so the outbound policy (llm.allowed_hosts, ...) applies to it as to
 *		any provider URL, and the event loop never blocks;
 *	 3. keeps {"access_token", "expires_in"} in worker memory.
 *
 * Timing.  A token is sent until VTOKEN_USABLE_MARGIN_S before it
 * expires; from VTOKEN_REFRESH_MARGIN_S before, the next call starts a
 * refresh and goes on with the current token (off the call path).  A call
 * that finds no usable token is parked (attempt.c) and asks again every
 * VTOKEN_POLL_MS until the fetch ends.  At most one fetch per entry is in
 * flight.  A failed fetch is remembered for VTOKEN_FAILURE_HOLD_MS, so the
 * calls parked on it, and those that come right after, fail with its error
 * instead of hammering the endpoint with a refused key.
 *
 * Secrets.  The private key is read only to sign (its copies are wiped);
 * the JWT (a bearer credential until it expires) lives only in the fetch's
 * request and is wiped when the fetch ends; the access token is wiped when
 * replaced.  Errors name the provider, the endpoint and what the endpoint
 * said (scrubbed of the JWT and the token); never any of the three.
 *
 * An entry is keyed by provider name and credential label, and remembers
 * a SHA-256 of the key: a key replaced under the same label starts over.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <time.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/sha.h>

#include "common/base64.h"
#include "utils/builtins.h"
#include "utils/fmgrprotos.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "providers/adapter_util.h"
#include "providers/vertex.h"
#include "worker/vertex_token.h"

#define VTOKEN_REFRESH_MARGIN_S		300
#define VTOKEN_USABLE_MARGIN_S		30
#define VTOKEN_FETCH_TIMEOUT_MS		10000
#define VTOKEN_FAILURE_HOLD_MS		5000
#define VTOKEN_LIFETIME_S			3600
#define VTOKEN_DEFAULT_URL			"https://oauth2.googleapis.com/token"
#define VTOKEN_SCOPE				"https://www.googleapis.com/auth/cloud-platform"

typedef struct TokenEntry
{
	struct TokenEntry *next;
	MemoryContext cxt;			/* the entry and its strings */
	MemoryContext fetch_cxt;	/* the fetch in flight; reset when it ends */
	char	   *provider;
	char	   *label;
	unsigned char digest[SHA256_DIGEST_LENGTH];	/* of the key */

	char	   *project_id;		/* the key's, once read */
	char	   *token;			/* current access token, or NULL */
	TimestampTz expires_at;

	bool		fetching;
	LlmHttpTransfer xfer;
	LlmHttpRequest req;
	char	   *jwt;			/* of the fetch in flight (to scrub answers) */
	char	   *url;			/* its endpoint */

	/* the last fetch's failure, kept VTOKEN_FAILURE_HOLD_MS */
	TimestampTz failed_at;		/* 0: none */
	int			fail_code;
	LlmFailClass fail_class;
	char	   *fail_message;
	char	   *fail_hint;
} TokenEntry;

static MemoryContext token_cxt = NULL;
static TokenEntry *entries = NULL;

static void
wipe(char *s)
{
	if (s != NULL)
		explicit_bzero(s, strlen(s));
}

static void
drop_token(TokenEntry *e)
{
	if (e->token)
	{
		wipe(e->token);
		pfree(e->token);
	}
	e->token = NULL;
	e->expires_at = 0;
}

/* Record a failed fetch (its texts are already scrubbed). */
static void
record_failure(TokenEntry *e, int code, LlmFailClass cls, const char *message, const char *hint)
{
	if (e->fail_message)
		pfree(e->fail_message);
	if (e->fail_hint)
		pfree(e->fail_hint);
	e->failed_at = GetCurrentTimestamp();
	e->fail_code = code;
	e->fail_class = cls;
	e->fail_message = MemoryContextStrdup(e->cxt, message);
	e->fail_hint = hint ? MemoryContextStrdup(e->cxt, hint) : NULL;
	/* a refresh that failed while the token still works: say so, once per hold */
	ereport(LOG,
			(errmsg("llm_gateway: %s", message)));
}

/* base64url without padding (RFC 7515 §2) */
static char *
b64url(const unsigned char *data, int len)
{
	int			cap = pg_b64_enc_len(len) + 1;
	char	   *out = palloc(cap);
	int			n = pg_b64_encode((const char *) data, len, out, cap);
	int			j = 0;

	if (n < 0)
		n = 0;
	for (int i = 0; i < n; i++)
	{
		if (out[i] == '=')
			break;
		out[j++] = out[i] == '+' ? '-' : out[i] == '/' ? '_' : out[i];
	}
	out[j] = '\0';
	return out;
}

/* OpenSSL must never prompt for a passphrase: an encrypted key is refused */
static int
no_passphrase(char *buf, int size, int rwflag, void *u)
{
	return 0;
}

/*
 * header.claims.signature, or NULL with *why (no key material in it).
 */
static char *
sign_jwt(const char *pem, const char *kid, const char *email, const char *aud,
		 const char **why)
{
	StringInfoData hdr,
				claims,
				input;
	bool		first = true;
	time_t		now = time(NULL);
	BIO		   *bio;
	EVP_PKEY   *pkey;
	EVP_MD_CTX *md = NULL;
	unsigned char *sig = NULL;
	size_t		siglen = 0;
	char	   *jwt = NULL;

	initStringInfo(&hdr);
	appendStringInfoChar(&hdr, '{');
	json_append_key(&hdr, &first, "alg");
	json_append_string(&hdr, "RS256");
	json_append_key(&hdr, &first, "typ");
	json_append_string(&hdr, "JWT");
	if (kid != NULL)
	{
		json_append_key(&hdr, &first, "kid");
		json_append_string(&hdr, kid);
	}
	appendStringInfoChar(&hdr, '}');

	first = true;
	initStringInfo(&claims);
	appendStringInfoChar(&claims, '{');
	json_append_key(&claims, &first, "iss");
	json_append_string(&claims, email);
	json_append_key(&claims, &first, "sub");
	json_append_string(&claims, email);
	json_append_key(&claims, &first, "aud");
	json_append_string(&claims, aud);
	json_append_key(&claims, &first, "scope");
	json_append_string(&claims, VTOKEN_SCOPE);
	json_append_key(&claims, &first, "iat");
	appendStringInfo(&claims, "%lld", (long long) now);
	json_append_key(&claims, &first, "exp");
	appendStringInfo(&claims, "%lld", (long long) now + VTOKEN_LIFETIME_S);
	appendStringInfoChar(&claims, '}');

	initStringInfo(&input);
	appendStringInfo(&input, "%s.%s",
					 b64url((unsigned char *) hdr.data, hdr.len),
					 b64url((unsigned char *) claims.data, claims.len));

	ERR_clear_error();
	bio = BIO_new_mem_buf(pem, -1);
	pkey = bio ? PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL) : NULL;
	if (bio)
		BIO_free(bio);
	if (pkey == NULL)
		*why = "its private_key is not a PEM private key (or it is encrypted)";
	else if (EVP_PKEY_base_id(pkey) != EVP_PKEY_RSA)
		*why = "its private_key is not an RSA key";
	else if ((md = EVP_MD_CTX_new()) == NULL ||
			 EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, pkey) != 1 ||
			 EVP_DigestSign(md, NULL, &siglen, (unsigned char *) input.data, input.len) != 1 ||
			 (sig = palloc(siglen)) == NULL ||
			 EVP_DigestSign(md, sig, &siglen, (unsigned char *) input.data, input.len) != 1)
		*why = "OpenSSL could not sign with its private_key";
	else
		jwt = psprintf("%s.%s", input.data, b64url(sig, (int) siglen));
	if (md)
		EVP_MD_CTX_free(md);
	if (pkey)
		EVP_PKEY_free(pkey);
	ERR_clear_error();
	return jwt;
}

/*
 * Start fetching a token.  False when it failed before anything was sent
 * (the failure is recorded).
 */
static bool
start_fetch(TokenEntry *e, const char *sa_json, Jsonb *options)
{
	MemoryContext old = MemoryContextSwitchTo(e->fetch_cxt);
	char	   *why = NULL;
	const char *sign_why = NULL;
	Jsonb	   *j;
	char	   *copy = pstrdup(sa_json);
	const char *type = NULL,
			   *email = NULL,
			   *pem = NULL,
			   *kid = NULL,
			   *project = NULL,
			   *uri = NULL;
	JsonbValue *tv;
	const char *hint = "Store the service-account JSON key (as downloaded from Google Cloud) with llm.set_credential().";

	j = json_parse_safe(copy, strlen(copy), &why);
	wipe(copy);
	if (j != NULL && JB_ROOT_IS_OBJECT(j))
	{
		type = json_get_cstring(&j->root, "type");
		email = json_get_cstring(&j->root, "client_email");
		pem = json_get_cstring(&j->root, "private_key");
		kid = json_get_cstring(&j->root, "private_key_id");
		project = json_get_cstring(&j->root, "project_id");
		uri = json_get_cstring(&j->root, "token_uri");
	}
	if (j == NULL || !JB_ROOT_IS_OBJECT(j) ||
		(type != NULL && strcmp(type, "service_account") != 0) ||
		email == NULL || pem == NULL)
	{
		if (j)
			explicit_bzero(j, VARSIZE(j));
		MemoryContextSwitchTo(old);
		record_failure(e, ERRCODE_LLM_PROVIDER_AUTH, LLM_FAIL_CREDENTIAL,
					   psprintf("the credential of provider \"%s\" is not a service-account key: it needs \"type\": \"service_account\", \"client_email\" and \"private_key\"",
								e->provider), hint);
		return false;
	}
	if (project != NULL && e->project_id == NULL)
		e->project_id = MemoryContextStrdup(e->cxt, project);

	/* the endpoint: provider option token_url, else the key's token_uri */
	tv = json_get(&options->root, "token_url");
	e->url = tv && tv->type == jbvString ? json_value_cstring(tv) :
		pstrdup(uri ? uri : VTOKEN_DEFAULT_URL);

	e->jwt = sign_jwt(pem, kid, email, e->url, &sign_why);
	wipe((char *) pem);
	explicit_bzero(j, VARSIZE(j));
	if (e->jwt == NULL)
	{
		MemoryContextSwitchTo(old);
		record_failure(e, ERRCODE_LLM_PROVIDER_AUTH, LLM_FAIL_CREDENTIAL,
					   psprintf("could not sign a token request for provider \"%s\": %s",
								e->provider, sign_why), hint);
		MemoryContextReset(e->fetch_cxt);
		return false;
	}

	memset(&e->req, 0, sizeof(e->req));
	e->req.url = e->url;
	initStringInfo(&e->req.body);
	appendStringInfo(&e->req.body,
					 "grant_type=urn%%3Aietf%%3Aparams%%3Aoauth%%3Agrant-type%%3Ajwt-bearer&assertion=%s",
					 e->jwt);
	provider_add_header(&e->req, "content-type", "application/x-www-form-urlencoded");
	provider_add_header(&e->req, "accept", "application/json");
	http_start(&e->xfer, &e->req, VTOKEN_FETCH_TIMEOUT_MS, e);
	e->fetching = true;
	MemoryContextSwitchTo(old);
	if (e->xfer.done)
	{
		/* refused before sending (outbound policy, no handle) */
		vertex_token_transfer_done(&e->xfer);
		return false;
	}
	return true;
}

/*
 * A transfer ended: if it is a token fetch, settle it and return true.
 */
bool
vertex_token_transfer_done(LlmHttpTransfer *t)
{
	TokenEntry *e;
	MemoryContext old;

	for (e = entries; e != NULL; e = e->next)
		if (e->fetching && &e->xfer == t)
			break;
	if (e == NULL)
		return false;

	old = MemoryContextSwitchTo(e->fetch_cxt);
	if (t->result != CURLE_OK)
	{
		if (t->fail_sqlstate != 0)
			record_failure(e, t->fail_sqlstate,
						   t->fail_retryable ? LLM_FAIL_RETRYABLE : LLM_FAIL_FATAL,
						   psprintf("provider \"%s\": token endpoint: %s", e->provider, t->fail.message),
						   t->fail.hint[0] ? t->fail.hint : NULL);
		else
			record_failure(e, ERRCODE_LLM_PROVIDER_AUTH, LLM_FAIL_CREDENTIAL,
						   psprintf("could not get an access token for provider \"%s\" from %s: %s",
									e->provider, provider_text(e->url, NULL),
									provider_text(t->errbuf[0] ? t->errbuf : curl_easy_strerror(t->result), e->jwt)),
						   "Check the provider option token_url (or the key's token_uri) and that the server can reach it.");
	}
	else
	{
		char	   *tok;
		int64		expires_in;
		char	   *why;

		if (vertex_parse_token_answer(t->status, t->buf, t->len, e->jwt, e->token,
									  &tok, &expires_in, &why))
		{
			drop_token(e);
			e->token = MemoryContextStrdup(e->cxt, tok);
			wipe(tok);
			e->expires_at = TimestampTzPlusMilliseconds(GetCurrentTimestamp(),
														Min(expires_in, (int64) 86400) * 1000);
			e->failed_at = 0;
		}
		else
			record_failure(e, ERRCODE_LLM_PROVIDER_AUTH, LLM_FAIL_CREDENTIAL,
						   psprintf("could not get an access token for provider \"%s\": the token endpoint %s %s",
									e->provider, provider_text(e->url, NULL), why),
						   "Check the service-account key stored with llm.set_credential() (is it enabled in Google Cloud?) and the provider option token_url.");
	}

	MemoryContextSwitchTo(old);
	if (t->buf)
		explicit_bzero(t->buf, t->len);
	http_release(t);
	wipe(e->jwt);
	explicit_bzero(e->req.body.data, e->req.body.len);
	e->jwt = NULL;
	e->fetching = false;
	MemoryContextReset(e->fetch_cxt);
	return true;
}

static TokenEntry *
find_entry(const char *provider, const char *label)
{
	for (TokenEntry *e = entries; e != NULL; e = e->next)
		if (strcmp(e->provider, provider) == 0 && strcmp(e->label, label) == 0)
			return e;
	return NULL;
}

/*
 * The access token to send for this provider and credential (copies in
 * CurrentMemoryContext), or PENDING while one is being fetched, or FAILED.
 */
VertexTokenState
vertex_token_get(const char *provider, const char *label, const char *sa_json,
				 Jsonb *provider_options, char **token, char **project, LlmError *err)
{
	TokenEntry *e;
	unsigned char digest[SHA256_DIGEST_LENGTH];
	TimestampTz now = GetCurrentTimestamp();

	*token = *project = NULL;
	if (label == NULL)
		label = "";
	if (sa_json == NULL)
	{
		provider_fail(err, ERRCODE_LLM_PROVIDER_AUTH, LLM_FAIL_CREDENTIAL,
					  "provider \"%s\" of kind \"vertex\" has no credential", provider);
		err->hint = pstrdup("Store its service-account JSON key with llm.set_credential().");
		return VTOKEN_FAILED;
	}
	SHA256((const unsigned char *) sa_json, strlen(sa_json), digest);

	if (token_cxt == NULL)
		token_cxt = AllocSetContextCreate(TopMemoryContext, "llm_gateway vertex tokens",
										  ALLOCSET_SMALL_SIZES);
	e = find_entry(provider, label);
	if (e != NULL && memcmp(e->digest, digest, sizeof(digest)) != 0)
	{
		/* the key was replaced under the same label: start over */
		if (e->fetching)
		{
			http_release(&e->xfer);
			wipe(e->jwt);
			e->jwt = NULL;
			e->fetching = false;
			MemoryContextReset(e->fetch_cxt);
		}
		drop_token(e);
		e->project_id = NULL;
		e->failed_at = 0;
		memcpy(e->digest, digest, sizeof(digest));
	}
	if (e == NULL)
	{
		MemoryContext cxt = AllocSetContextCreate(token_cxt, "vertex token",
												  ALLOCSET_SMALL_SIZES);

		e = MemoryContextAllocZero(cxt, sizeof(TokenEntry));
		e->cxt = cxt;
		e->fetch_cxt = AllocSetContextCreate(cxt, "vertex token fetch", ALLOCSET_SMALL_SIZES);
		e->provider = MemoryContextStrdup(cxt, provider);
		e->label = MemoryContextStrdup(cxt, label);
		memcpy(e->digest, digest, sizeof(digest));
		e->next = entries;
		entries = e;
	}

	if (e->token != NULL &&
		now < TimestampTzPlusMilliseconds(e->expires_at, -VTOKEN_USABLE_MARGIN_S * 1000))
	{
		/* refresh off the call path: this call goes on with the current token */
		if (!e->fetching &&
			now >= TimestampTzPlusMilliseconds(e->expires_at, -VTOKEN_REFRESH_MARGIN_S * 1000) &&
			(e->failed_at == 0 ||
			 now >= TimestampTzPlusMilliseconds(e->failed_at, VTOKEN_FAILURE_HOLD_MS)))
			(void) start_fetch(e, sa_json, provider_options);
		if (e->token != NULL)
		{
			*token = pstrdup(e->token);
			*project = e->project_id ? pstrdup(e->project_id) : NULL;
			return VTOKEN_READY;
		}
	}

	if (e->fetching)
		return VTOKEN_PENDING;
	if (e->failed_at == 0 ||
		now >= TimestampTzPlusMilliseconds(e->failed_at, VTOKEN_FAILURE_HOLD_MS))
	{
		if (start_fetch(e, sa_json, provider_options))
			return VTOKEN_PENDING;
	}
	if (e->token != NULL)		/* cannot happen: a token is only set by a finished fetch */
	{
		*token = pstrdup(e->token);
		*project = e->project_id ? pstrdup(e->project_id) : NULL;
		return VTOKEN_READY;
	}
	provider_fail(err, e->fail_code, e->fail_class, "%s", e->fail_message);
	err->hint = e->fail_hint ? pstrdup(e->fail_hint) : NULL;
	return VTOKEN_FAILED;
}

/*
 * Vertex refused this token (401): forget it, so the next call fetches a
 * new one.  True when it was the cached token.
 */
bool
vertex_token_forget(const char *provider, const char *label, const char *token)
{
	TokenEntry *e = find_entry(provider, label ? label : "");

	if (e == NULL || e->token == NULL || token == NULL || strcmp(e->token, token) != 0)
		return false;
	drop_token(e);
	return true;
}

/*
 * For a call's current vertex target: put the access token in
 * target->secret, and the key's project_id in its provider options unless
 * they name a project.  sa_json is the credential in use (not
 * target->secret, which holds the previous attempt's token on a retry).
 */
VertexTokenState
vertex_token_prepare(LlmTarget *target, const char *sa_json, const char *label,
					 LlmError *err)
{
	char	   *token;
	char	   *project;
	VertexTokenState st;

	st = vertex_token_get(target->provider_name, label, sa_json, target->provider_options,
						  &token, &project, err);
	if (st != VTOKEN_READY)
		return st;
	target->secret = token;
	if (project != NULL && json_get(&target->provider_options->root, "project") == NULL)
	{
		StringInfoData buf;
		bool		first = true;
		char	   *why = NULL;
		Jsonb	   *add;

		initStringInfo(&buf);
		appendStringInfoChar(&buf, '{');
		json_append_key(&buf, &first, "project");
		json_append_string(&buf, project);
		appendStringInfoChar(&buf, '}');
		add = json_parse_safe(buf.data, buf.len, &why);
		if (add != NULL)
			target->provider_options =
				DatumGetJsonbP(DirectFunctionCall2(jsonb_concat,
												   JsonbPGetDatum(target->provider_options),
												   JsonbPGetDatum(add)));
	}
	return VTOKEN_READY;
}
