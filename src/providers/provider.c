/*-------------------------------------------------------------------------
 *
 * provider.c
 *	  The adapter registry and the helpers adapters share.
 *
 * runs in: worker (and backends, for the diagnostic adapter functions).
 *
 * Adding a protocol is one adapter file and one line in registry[]; no
 * other code switches on a provider kind.  Several kinds may share one
 * protocol implementation (azure_openai reuses openai's functions and
 * differs only in URL shape and auth header).
 *
 * Everything here is pure like the adapters: no ERROR, no globals beyond
 * the constant registry, results allocated in CurrentMemoryContext.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <math.h>
#include <time.h>

#include "mb/pg_wchar.h"

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "providers/adapter.h"
#include "providers/adapter_util.h"

/* The registry: every kind llm.providers.kind may name. */
static const LlmProvider *const registry[] = {
	&llm_provider_anthropic,
	&llm_provider_openai,
	&llm_provider_azure_openai,
	&llm_provider_gemini,
	&llm_provider_bedrock,
	&llm_provider_ollama,
	&llm_provider_vertex,
	NULL
};

/*
 * Headers provider_options.headers may never set, whatever the adapter: the
 * credential headers of every protocol (so an option cannot replace or
 * duplicate the key, or send it under another name), and the ones that
 * frame the request (a second Host or Content-Length smuggles a request).
 * llm._check_provider_args refuses them at input with the same list; this
 * check stands for rows written with a plain UPDATE of llm.providers.
 */
static const char *const always_reserved_headers[] = {
	"authorization", "x-api-key", "api-key", "x-goog-api-key", "proxy-authorization",
	"host", "content-length", "transfer-encoding", "accept-encoding", "connection",
	"content-type", "cookie", "te", "upgrade", "expect", "anthropic-version", NULL
};

/* Canonical request keys the gateway owns; never forwarded to a provider. */
static const char *const gateway_keys[] = {"model", "stream", "timeout_ms", "tags", NULL};

static bool parse_seconds(const char *s, double *out);
static bool parse_http_date(const char *s, double *epoch);
static bool valid_header_name(const char *name);
static bool has_control_char(const char *value);
static size_t secret_shaped_token(const char *text, const char *p, size_t *keep);

/*
 * The adapter for a kind, or NULL.  Kinds are lower case, as the catalog
 * check on llm.providers.kind stores them.
 */
const LlmProvider *
provider_lookup(const char *kind)
{
	if (kind == NULL)
		return NULL;
	for (int i = 0; registry[i] != NULL; i++)
	{
		if (strcmp(registry[i]->kind, kind) == 0)
			return registry[i];
	}
	return NULL;
}

/* "anthropic, openai, ...": the known kinds, for error hints. */
const char *
provider_kinds(void)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (int i = 0; registry[i] != NULL; i++)
	{
		if (i > 0)
			appendStringInfoString(&buf, ", ");
		appendStringInfoString(&buf, registry[i]->kind);
	}
	return buf.data;
}

/* True when key is one the gateway consumes itself (see gateway_keys). */
bool
provider_is_gateway_key(const char *key)
{
	for (int i = 0; gateway_keys[i] != NULL; i++)
	{
		if (strcmp(gateway_keys[i], key) == 0)
			return true;
	}
	return false;
}

/* First response header of that name (case-insensitive), or NULL. */
const char *
provider_header(const LlmHttpResult *res, const char *name)
{
	ListCell   *lc;

	if (res == NULL)
		return NULL;
	if (res->header_lookup)
		return res->header_lookup(res->header_arg, name);
	foreach(lc, res->headers)
	{
		LlmHttpHeader *h = (LlmHttpHeader *) lfirst(lc);

		if (h->name != NULL && pg_strcasecmp(h->name, name) == 0)
			return h->value;
	}
	return NULL;
}

/*
 * Append "name: value" to a request.  CR and LF become spaces: a value
 * that reached us from configuration must never be able to start a header
 * of its own (adapters also refuse such values up front, with a message).
 */
void
provider_add_header(LlmHttpRequest *req, const char *name, const char *value)
{
	char	   *line = psprintf("%s: %s", name, value ? value : "");

	for (char *p = line; *p; p++)
	{
		if (*p == '\r' || *p == '\n')
			*p = ' ';
	}
	req->headers = lappend(req->headers, line);
}

/*
 * Copy of text with every occurrence of secret, and anything shaped like
 * an API key ("sk-..." tokens) or a bearer token, replaced by [redacted].
 * Providers echo keys back in error messages ("Incorrect API key provided:
 * sk-proj-...") and we keep those messages in logs and show them to users.
 * The shapes catch keys even where the secret is not at hand (parse_error).
 * Scanning bytes is safe for UTF-8, whose multibyte sequences never contain
 * ASCII bytes.
 */
char *
provider_scrub(const char *text, const char *secret)
{
	StringInfoData buf;
	size_t		slen = secret ? strlen(secret) : 0;
	const char *p;

	if (text == NULL)
		return NULL;
	initStringInfo(&buf);
	p = text;
	while (*p)
	{
		size_t		n;
		size_t		keep;
		const char *run = p;

		/*
		 * Bytes that cannot start the secret, "sk-" or "bearer" are copied
		 * in runs: this runs over every answer kept in the log, and a call
		 * per byte was 2 % of the worker's CPU at load.
		 */
		while (*p && !(slen > 0 && *p == secret[0]) &&
			   *p != 's' && *p != 'b' && *p != 'B')
			p++;
		if (p > run)
			appendBinaryStringInfo(&buf, run, p - run);
		if (*p == '\0')
			break;

		if (slen > 0 && strncmp(p, secret, slen) == 0)
		{
			appendStringInfoString(&buf, "[redacted]");
			p += slen;
			continue;
		}
		n = secret_shaped_token(text, p, &keep);
		if (n > 0)
		{
			/* keep the "Bearer " prefix so the message still reads */
			appendBinaryStringInfo(&buf, p, keep);
			appendStringInfoString(&buf, "[redacted]");
			p += n;
			continue;
		}
		appendStringInfoChar(&buf, *p);
		p++;
	}
	return buf.data;
}

void
provider_init_answer(LlmAnswer *answer)
{
	memset(answer, 0, sizeof(*answer));
	initStringInfo(&answer->content);
}

/*
 * A Retry-After value in seconds from now: delay-seconds (fractions
 * accepted, as the provider SDKs do) or an HTTP-date (RFC 9110 5.6.7: IMF
 * fixdate, RFC 850 or asctime form).  A date in the past means "now" (0).
 * Returns -1 when the value is absent or not understood.
 */
double
provider_parse_retry_after(const char *value)
{
	double		seconds;
	double		epoch;

	if (value == NULL)
		return -1;
	if (parse_seconds(value, &seconds))
		return seconds;
	if (parse_http_date(value, &epoch))
	{
		double		delta = epoch - (double) time(NULL);

		return delta > 0 ? delta : 0;
	}
	return -1;
}

/* ---------- helpers for adapters (adapter_util.h) ---------- */

bool
provider_fail(LlmError *err, int sqlerrcode, LlmFailClass fail_class,
			  const char *fmt,...)
{
	va_list		args;
	StringInfoData buf;

	initStringInfo(&buf);
	for (;;)
	{
		int			needed;

		va_start(args, fmt);
		needed = appendStringInfoVA(&buf, fmt, args);
		va_end(args);
		if (needed == 0)
			break;
		enlargeStringInfo(&buf, needed);
	}

	memset(err, 0, sizeof(*err));
	err->sqlerrcode = sqlerrcode;
	err->fail_class = fail_class;
	err->message = buf.data;
	err->retry_after_s = -1;
	return false;
}

bool
provider_unsupported(LlmError *err, const LlmTarget *target, const char *what)
{
	const char *kind = target->provider ? target->provider->kind : "(unknown)";

	provider_fail(err, ERRCODE_FEATURE_NOT_SUPPORTED, LLM_FAIL_FATAL,
				  "%s cannot be sent to a provider of kind \"%s\"", what, kind);
	err->hint = psprintf("Remove it from the request, or route model \"%s\" to a provider that supports it.",
						 target->upstream_model ? target->upstream_model : "");
	return false;
}

bool
provider_malformed(LlmError *err, const LlmHttpResult *res, const char *why,
				   const char *secret)
{
	provider_fail(err, ERRCODE_LLM_PROVIDER_MALFORMED, LLM_FAIL_RETRYABLE,
				  "malformed answer from provider");
	err->detail = provider_text(why, secret);
	err->http_status = (int) res->status;
	return false;
}

char *
provider_base_url(const LlmTarget *target)
{
	char	   *url = pstrdup(target->base_url ? target->base_url : "");
	size_t		len = strlen(url);

	while (len > 0 && url[len - 1] == '/')
		url[--len] = '\0';
	return url;
}

bool
provider_option_string(const LlmTarget *target, const char *key,
					   const char **value, LlmError *err)
{
	JsonbValue *v = json_get(&target->provider_options->root, key);

	*value = NULL;
	if (v == NULL || v->type == jbvNull)
		return true;
	if (v->type != jbvString)
	{
		provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
					  "provider option \"%s\" must be a string", key);
		err->hint = pstrdup("Correct the option in the provider's options.");
		return false;
	}
	*value = json_value_cstring(v);
	return true;
}

/* a positive integer route option, or -1 when absent */
static bool
route_option_count(const LlmTarget *target, const char *key, int64 *out,
				   LlmError *err)
{
	JsonbContainer *opts = &target->route_options->root;
	JsonbValue *v = json_get(opts, key);

	*out = -1;
	if (v == NULL || v->type == jbvNull)
		return true;
	if (!json_get_int64(opts, key, out) || *out <= 0)
	{
		provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
					  "route option \"%s\" must be a positive integer", key);
		err->hint = pstrdup("Correct the option in the route's options.");
		return false;
	}
	return true;
}

/*
 * The max_tokens to send: the request's value, else the route's
 * default_max_tokens, else fallback (-1: send nothing); then capped by the
 * route's max_tokens.  A cap applies even when the request named no limit,
 * because the cap is what bounds the spend of that target.
 */
bool
provider_max_tokens(const LlmCall *call, const LlmTarget *target,
					int64 fallback, int64 *result, LlmError *err)
{
	int64		wanted = -1;
	int64		deflt;
	int64		cap;

	if (!route_option_count(target, "default_max_tokens", &deflt, err) ||
		!route_option_count(target, "max_tokens", &cap, err))
		return false;

	if (!json_get_int64(&call->request->root, "max_tokens", &wanted) || wanted < 0)
		wanted = deflt >= 0 ? deflt : fallback;
	if (cap >= 0 && (wanted < 0 || wanted > cap))
		wanted = cap;
	*result = wanted;
	return true;
}

/*
 * provider_options.headers: an object of header name -> string value,
 * added as is (names lower-cased).  Names the adapter sets itself are
 * refused rather than sent twice, and values are checked here so that a
 * configuration mistake is reported instead of silently altered.
 */
bool
provider_option_headers(LlmHttpRequest *req, const LlmTarget *target,
						const char *const *reserved, LlmError *err)
{
	JsonbValue *hv = json_get(&target->provider_options->root, "headers");
	JsonbContainer *headers;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	char	   *name = NULL;

	if (hv == NULL || hv->type == jbvNull)
		return true;
	headers = json_value_container(hv, false);
	if (headers == NULL)
	{
		provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
					  "provider option \"headers\" must be an object of header names and string values");
		err->hint = pstrdup("Correct the option in the provider's options.");
		return false;
	}

	it = JsonbIteratorInit(headers);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char	   *value;

		if (tok == WJB_KEY)
		{
			name = pnstrdup(v.val.string.val, v.val.string.len);
			for (char *p = name; *p; p++)
				*p = pg_ascii_tolower((unsigned char) *p);
			continue;
		}
		if (tok != WJB_VALUE)
			continue;

		if (!valid_header_name(name))
		{
			provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
						  "invalid header name \"%s\" in provider option \"headers\"", name);
			err->hint = pstrdup("Header names are letters, digits and the characters !#$%&'*+-.^_`|~.");
			return false;
		}
		for (int i = 0; reserved[i] != NULL; i++)
		{
			if (strcmp(reserved[i], name) == 0)
			{
				provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							  "provider option \"headers\" cannot set header \"%s\"", name);
				err->detail = psprintf("The gateway sets \"%s\" itself for providers of kind \"%s\".",
									   name, target->provider ? target->provider->kind : "");
				return false;
			}
		}
		for (int i = 0; always_reserved_headers[i] != NULL; i++)
		{
			if (strcmp(always_reserved_headers[i], name) == 0)
			{
				provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							  "provider option \"headers\" cannot set reserved header \"%s\"", name);
				err->detail = pstrdup("Credential and framing headers are set by the gateway only; nothing was sent.");
				err->hint = pstrdup("Remove the header from the provider's options with llm.alter_provider().");
				return false;
			}
		}
		value = json_value_cstring(&v);
		if (value == NULL || has_control_char(value))
		{
			provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
						  "header \"%s\" in provider option \"headers\" must be a single-line string", name);
			return false;
		}
		provider_add_header(req, name, value);
	}
	return true;
}

char *
provider_text(const char *text, const char *secret)
{
	char	   *clean;
	int			len;
	int			cut;

	if (text == NULL)
		return NULL;
	clean = provider_scrub(text, secret);
	len = strlen(clean);
	/* bytes the database cannot store would make the log write fail later */
	if (!pg_verifymbstr(clean, len, true))
	{
		for (char *p = clean; *p; p++)
		{
			if (IS_HIGHBIT_SET(*p))
				*p = '?';
		}
	}
	if (len <= PROVIDER_TEXT_MAX)
		return clean;
	cut = pg_mbcliplen(clean, len, PROVIDER_TEXT_MAX);
	return psprintf("%.*s...", cut, clean);
}

Jsonb *
provider_parse_body(const LlmHttpResult *res, char **errmsg)
{
	if (res->body == NULL || res->body_len == 0)
	{
		*errmsg = pstrdup("the answer has an empty body");
		return NULL;
	}

	/*
	 * JSON is UTF-8, and jsonb_in trusts its caller to have checked the
	 * encoding (input functions normally get verified text).  An answer
	 * with broken bytes would otherwise travel into the answer and the log.
	 */
	if (!pg_verify_mbstr(PG_UTF8, res->body, (int) res->body_len, true))
	{
		*errmsg = pstrdup("the answer is not valid UTF-8 text");
		return NULL;
	}
	return json_parse_safe(res->body, res->body_len, errmsg);
}

double
provider_retry_after(const LlmHttpResult *res)
{
	const char *ms = provider_header(res, "retry-after-ms");
	double		seconds;

	/* the non-standard millisecond header is the more precise one */
	if (ms != NULL && parse_seconds(ms, &seconds))
		return seconds / 1000.0;
	return provider_parse_retry_after(provider_header(res, "retry-after"));
}

char *
provider_body_excerpt(const LlmHttpResult *res)
{
	char	   *text;

	if (res->body == NULL || res->body_len == 0)
		return NULL;
	/* clip before scrubbing: the body may be megabytes of HTML */
	text = pnstrdup(res->body, Min(res->body_len, (size_t) PROVIDER_TEXT_MAX * 2));
	return psprintf("provider answered: %s", provider_text(text, NULL));
}

/* ---------- internal ---------- */

/* Non-negative decimal seconds, surrounding blanks allowed; no exponent, no sign. */
static bool
parse_seconds(const char *s, double *out)
{
	const char *p = s;
	const char *start;
	bool		digits = false;
	char	   *copy;

	while (*p == ' ' || *p == '\t')
		p++;
	start = p;
	while (isdigit((unsigned char) *p))
		p++, digits = true;
	if (*p == '.')
	{
		p++;
		while (isdigit((unsigned char) *p))
			p++, digits = true;
	}
	if (!digits)
		return false;
	copy = pnstrdup(start, p - start);
	while (*p == ' ' || *p == '\t')
		p++;
	if (*p != '\0')
		return false;
	*out = strtod(copy, NULL);
	return isfinite(*out);
}

static int
month_number(const char *name)
{
	static const char *const months[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
	"Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};

	for (int i = 0; i < 12; i++)
	{
		if (pg_strcasecmp(months[i], name) == 0)
			return i + 1;
	}
	return 0;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (civil-from-days inverse). */
static int64
days_from_civil(int y, int m, int d)
{
	int64		era;
	int			yoe;
	int			doy;
	int			doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = (int) (y - era * 400);
	doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

/*
 * An HTTP-date as seconds since the epoch.  sscanf with %n checks that the
 * whole value was consumed, so trailing garbage is refused.
 */
static bool
parse_http_date(const char *s, double *epoch)
{
	char		mon[4];
	int			day,
				year,
				hh,
				mm,
				ss;
	int			used = -1;
	int			month;
	size_t		len = strlen(s);

	while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
		len--;

	/* IMF-fixdate: Sun, 06 Nov 1994 08:49:37 GMT */
	if (!(sscanf(s, " %*[A-Za-z], %2d %3[A-Za-z] %4d %2d:%2d:%2d GMT%n",
				 &day, mon, &year, &hh, &mm, &ss, &used) == 6 && used == (int) len) &&
	/* RFC 850: Sunday, 06-Nov-94 08:49:37 GMT */
		!(sscanf(s, " %*[A-Za-z], %2d-%3[A-Za-z]-%4d %2d:%2d:%2d GMT%n",
				 &day, mon, &year, &hh, &mm, &ss, &used) == 6 && used == (int) len) &&
	/* asctime: Sun Nov  6 08:49:37 1994 */
		!(sscanf(s, " %*[A-Za-z] %3[A-Za-z] %2d %2d:%2d:%2d %4d%n",
				 mon, &day, &hh, &mm, &ss, &year, &used) == 6 && used == (int) len))
		return false;

	month = month_number(mon);
	if (year < 100)
		year += year >= 70 ? 1900 : 2000;	/* RFC 850's two-digit years */
	if (month == 0 || day < 1 || day > 31 || hh > 23 || mm > 59 || ss > 60 ||
		year < 1970)
		return false;
	*epoch = (double) days_from_civil(year, month, day) * 86400.0 +
		hh * 3600.0 + mm * 60.0 + ss;
	return true;
}

/* CR, LF and other control characters (tab aside) have no place in a header value */
static bool
has_control_char(const char *value)
{
	for (const char *p = value; *p; p++)
	{
		if (((unsigned char) *p < 0x20 && *p != '\t') || *p == 0x7f)
			return true;
	}
	return false;
}

/* RFC 9110 token characters */
static bool
valid_header_name(const char *name)
{
	if (name == NULL || *name == '\0')
		return false;
	for (const char *p = name; *p; p++)
	{
		if (!isalnum((unsigned char) *p) && strchr("!#$%&'*+-.^_`|~", *p) == NULL)
			return false;
	}
	return true;
}

static bool
is_key_char(char c)
{
	return isalnum((unsigned char) c) || c == '-' || c == '_';
}

/* RFC 9110 token68, the syntax of a bearer credential */
static bool
is_token68_char(char c)
{
	return c != '\0' && (isalnum((unsigned char) c) || strchr("-._~+/=", c) != NULL);
}

/*
 * Length of a key-shaped token starting at p (0 if none); *keep is how
 * many leading bytes of it to leave in place.  Two shapes:
 *	 sk-<key>...		OpenAI and Anthropic keys ("sk-proj-", "sk-ant-api03-")
 *	 Bearer <token>...	an Authorization value
 * Both must start a word, so "task-force" is left alone, and need at
 * least 8 token characters, so prose such as "Bearer auth" survives.
 */
static size_t
secret_shaped_token(const char *text, const char *p, size_t *keep)
{
	size_t		n;

	*keep = 0;
	if (p > text && is_key_char(p[-1]))
		return 0;

	if (strncmp(p, "sk-", 3) == 0)
	{
		for (n = 3; is_key_char(p[n]); n++)
			;
		return n - 3 >= 8 ? n : 0;
	}

	if (pg_strncasecmp(p, "bearer", 6) == 0 && (p[6] == ' ' || p[6] == '\t'))
	{
		size_t		start = 6;

		while (p[start] == ' ' || p[start] == '\t')
			start++;
		for (n = start; is_token68_char(p[n]); n++)
			;
		if (n - start >= 8)
		{
			*keep = start;
			return n;
		}
	}
	return 0;
}

/*
 * Canonical tools as OpenAI-style function tools, [{"type": "function",
 * "function": {"name", "description", "parameters"}}], the shape the
 * OpenAI-compatible servers and Ollama's native API both take.  Anthropic
 * server tools (a versioned "type") have no such form.
 */
bool
provider_write_function_tools(StringInfo buf, const LlmTarget *target, JsonbContainer *tools,
							  LlmError *err)
{
	int			n = json_array_size(tools);

	appendStringInfoChar(buf, '[');
	for (int i = 0; i < n; i++)
	{
		JsonbContainer *tool = json_value_container(json_array_elem(tools, i), false);
		const char *type = tool ? json_get_cstring(tool, "type") : NULL;
		const char *name = tool ? json_get_cstring(tool, "name") : NULL;
		JsonbValue *description = tool ? json_get(tool, "description") : NULL;
		JsonbValue *schema = tool ? json_get(tool, "input_schema") : NULL;
		bool		first = true;
		bool		first_fn = true;

		/* Anthropic server tools (web search, bash, ...) carry a versioned type */
		if (type != NULL && strcmp(type, "custom") != 0)
			return provider_unsupported(err, target,
										psprintf("tools of type \"%s\"", type));
		if (name == NULL)
			return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
								 "tool %d has no \"name\"", i);
		if (i > 0)
			appendStringInfoChar(buf, ',');
		appendStringInfoChar(buf, '{');
		json_append_key(buf, &first, "type");
		json_append_string(buf, "function");
		json_append_key(buf, &first, "function");
		appendStringInfoChar(buf, '{');
		json_append_key(buf, &first_fn, "name");
		json_append_string(buf, name);
		if (description != NULL && description->type == jbvString)
		{
			json_append_key(buf, &first_fn, "description");
			json_append_value(buf, description);
		}
		if (schema != NULL && schema->type != jbvNull)
		{
			json_append_key(buf, &first_fn, "parameters");
			json_append_value(buf, schema);
		}
		appendStringInfoString(buf, "}}");
	}
	appendStringInfoChar(buf, ']');
	return true;
}

/* A canonical content block's "type", or NULL. */
const char *
provider_block_type(JsonbContainer *block)
{
	return block ? json_get_cstring(block, "type") : NULL;
}

/* A block of a type this protocol cannot carry ("where" names the place). */
bool
provider_unsupported_block(LlmError *err, const LlmTarget *target, const char *type,
						   const char *where)
{
	return provider_unsupported(err, target,
								psprintf("content blocks of type \"%s\"%s",
										 type ? type : "(none)", where));
}

/*
 * Append to text the text of a content value made only of text (a string,
 * or an array of text blocks), each part separated from what is already
 * there by a blank line: the system prompt and tool results of protocols
 * that take them as one string.  Other block types are refused.
 */
bool
provider_content_text(const LlmTarget *target, JsonbValue *content, StringInfo text,
					  const char *where, LlmError *err)
{
	JsonbContainer *blocks;

	if (content == NULL || content->type == jbvNull)
		return true;
	if (content->type == jbvString)
	{
		if (text->len > 0)
			appendStringInfoString(text, "\n\n");
		appendBinaryStringInfo(text, content->val.string.val, content->val.string.len);
		return true;
	}
	blocks = json_value_container(content, true);
	if (blocks == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "content%s must be a string or an array of blocks", where);
	for (int i = 0; i < json_array_size(blocks); i++)
	{
		JsonbContainer *block = json_value_container(json_array_elem(blocks, i), false);
		const char *type = provider_block_type(block);
		const char *s;

		if (type == NULL || strcmp(type, "text") != 0)
			return provider_unsupported_block(err, target, type, where);
		s = json_get_cstring(block, "text");
		if (text->len > 0)
			appendStringInfoString(text, "\n\n");
		appendStringInfoString(text, s ? s : "");
	}
	return true;
}
