/*-------------------------------------------------------------------------
 *
 * call_result.c
 *	  Shapes what a finished call returns to SQL, in one place for every
 *	  function that waits for a call (llm_messages, llm_complete,
 *	  llm_await), and defines llm.on_error.
 *
 * runs in: backend.
 *
 * A call the worker answered gives its answer (jsonb, or the joined text
 * for llm_complete).  A call the worker failed either raises the worker's
 * error (on_error = raise, the default) or, with on_error = null, returns
 * NULL from llm_complete and an error object in the shape of an Anthropic
 * Messages error from llm_messages, so one bad row does not abort a
 * statement over many rows.
 *
 * Some failures raise whatever on_error says (llm_error_raises_always):
 * they are about the statement or the server, not about the row, and
 * going on would only fail every following row the same way (a cancel, a
 * shortage of memory, an internal error, the worker gone).  Errors the
 * backend raises before or while waiting (bad arguments, cancel,
 * statement_timeout, no free memory for the request) never get here.
 * A failure without its llm.requests row (the audit row could not be
 * written) raises too, so every NULL can be looked up in the log.
 *
 * The worker's error payload is message\0detail\0hint\0 and, when the
 * worker knows them, request_id\0provider\0 (attempt.c item_deliver);
 * every field is read within the payload's length.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/jsonapi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "backend/call_result.h"
#include "common/json_util.h"
#include "common/llm_errors.h"

int			llm_on_error = LLM_ON_ERROR_RAISE;

static const struct config_enum_entry on_error_options[] = {
	{"raise", LLM_ON_ERROR_RAISE, false},
	{"null", LLM_ON_ERROR_NULL, false},
	{NULL, 0, false}
};

void
call_result_define_gucs(void)
{
	DefineCustomEnumVariable("llm.on_error",
							 "What a failed call does: raise its error, or return NULL (llm_complete) or an error object (llm_messages).",
							 "A call's on_error option overrides it.",
							 &llm_on_error,
							 LLM_ON_ERROR_RAISE,
							 on_error_options,
							 PGC_USERSET,
							 0,
							 NULL, NULL, NULL);
}

/* The on_error option's value: false when it is neither "raise" nor "null". */
bool
llm_on_error_parse(const char *value, bool *on_error_null)
{
	if (strcmp(value, "raise") == 0)
		*on_error_null = false;
	else if (strcmp(value, "null") == 0)
		*on_error_null = true;
	else
		return false;
	return true;
}

/*
 * Failures that raise even with on_error = null: operator intervention
 * (57: cancel, shutdown), insufficient resources (53), system and
 * internal errors (58, XX), and the worker being unavailable.
 */
bool
llm_error_raises_always(int sqlerrcode)
{
	int			class = ERRCODE_TO_CATEGORY(sqlerrcode);

	return sqlerrcode == 0 ||
		class == ERRCODE_TO_CATEGORY(ERRCODE_OPERATOR_INTERVENTION) ||
		class == ERRCODE_TO_CATEGORY(ERRCODE_INSUFFICIENT_RESOURCES) ||
		class == ERRCODE_TO_CATEGORY(ERRCODE_SYSTEM_ERROR) ||
		class == ERRCODE_TO_CATEGORY(ERRCODE_INTERNAL_ERROR) ||
		sqlerrcode == ERRCODE_LLM_WORKER_UNAVAILABLE;
}

/* The Anthropic error type closest to a SQLSTATE. */
static const char *
anthropic_error_type(int sqlerrcode)
{
	switch (sqlerrcode)
	{
		case ERRCODE_LLM_PROVIDER_AUTH:
			return "authentication_error";
		case ERRCODE_LLM_PROVIDER_RATE_LIMITED:
		case ERRCODE_LLM_QUOTA_EXCEEDED:
			return "rate_limit_error";
		case ERRCODE_LLM_PROVIDER_OVERLOADED:
		case ERRCODE_LLM_NO_TARGET:
			return "overloaded_error";
		case ERRCODE_LLM_PROVIDER_INVALID_REQUEST:
		case ERRCODE_FEATURE_NOT_SUPPORTED:
			return "invalid_request_error";
		case ERRCODE_LLM_PROVIDER_TIMEOUT:
			return "timeout_error";
		case ERRCODE_LLM_PROVIDER_QUOTA:
			return "billing_error";
		case ERRCODE_PROGRAM_LIMIT_EXCEEDED:
			return "request_too_large";
		case ERRCODE_UNDEFINED_OBJECT:
			return "not_found_error";
		case ERRCODE_INSUFFICIENT_PRIVILEGE:
			return "permission_error";
	}
	if (ERRCODE_TO_CATEGORY(sqlerrcode) == ERRCODE_DATA_EXCEPTION)
		return "invalid_request_error";
	return "api_error";
}

/* The worker's error payload, split into its fields (NULL when absent or empty). */
typedef struct ErrorParts
{
	const char *message;
	const char *detail;
	const char *hint;
	const char *request_id;
	const char *provider;
} ErrorParts;

static const char *
next_field(const char **p, const char *end)
{
	const char *start = *p;
	const char *nul;

	if (start >= end)
		return NULL;
	nul = memchr(start, '\0', end - start);
	if (nul == NULL)
	{
		*p = end;
		return pnstrdup(start, end - start);
	}
	*p = nul + 1;
	return nul > start ? start : NULL;
}

static void
split_error(const LlmCallResult *r, ErrorParts *e)
{
	const char *p = r->text ? r->text : "";
	const char *end = p + (r->text ? r->len : 0);

	e->message = next_field(&p, end);
	e->detail = next_field(&p, end);
	e->hint = next_field(&p, end);
	e->request_id = next_field(&p, end);
	e->provider = next_field(&p, end);
	if (e->message == NULL)
		e->message = "the gateway reported an error without a message";
	/* the id is ours; accept only digits (0 = no row when delivered) */
	if (e->request_id && (strspn(e->request_id, "0123456789") != strlen(e->request_id) ||
						  strcmp(e->request_id, "0") == 0))
		e->request_id = NULL;
}

static void
append_nullable(StringInfo buf, bool *first, const char *key, const char *value)
{
	json_append_key(buf, first, key);
	if (value)
		json_append_string(buf, value);
	else
		appendStringInfoString(buf, "null");
}

/* {"type":"error","error":{"type","message"},"gateway":{...}} */
static Jsonb *
error_object(const LlmCallResult *r, const ErrorParts *e)
{
	StringInfoData buf;
	bool		first = true;
	bool		gfirst = true;

	initStringInfo(&buf);
	appendStringInfoString(&buf, "{\"type\":\"error\",\"error\":{\"type\":");
	json_append_string(&buf, anthropic_error_type(r->sqlerrcode));
	appendStringInfoString(&buf, ",\"message\":");
	json_append_string(&buf, e->message);
	appendStringInfoString(&buf, "}");
	first = false;
	json_append_key(&buf, &first, "gateway");
	appendStringInfoChar(&buf, '{');
	json_append_key(&buf, &gfirst, "request_id");
	appendStringInfoString(&buf, e->request_id ? e->request_id : "null");
	append_nullable(&buf, &gfirst, "sqlstate", unpack_sql_state(r->sqlerrcode));
	append_nullable(&buf, &gfirst, "detail", e->detail);
	append_nullable(&buf, &gfirst, "hint", e->hint);
	append_nullable(&buf, &gfirst, "provider", e->provider);
	appendStringInfoString(&buf, "}}");
	return jsonb_from_cstring(buf.data);
}

/* Raise the error the worker reported, as a serial call always has. */
static void
raise_error(const LlmCallResult *r, const ErrorParts *e) pg_attribute_noreturn();

static void
raise_error(const LlmCallResult *r, const ErrorParts *e)
{
	ereport(ERROR,
			(errcode(r->sqlerrcode ? r->sqlerrcode : ERRCODE_INTERNAL_ERROR),
			 errmsg_internal("%s", e->message),
			 e->detail ? errdetail_internal("%s", e->detail) : 0,
			 e->hint ? errhint("%s", e->hint) : 0));
}

/* The joined text of the answer's text blocks (tool calls and thinking left out). */
static text *
answer_text(Jsonb *answer)
{
	JsonbContainer *content = json_get_array(&answer->root, "content");
	StringInfoData out;
	int			i;

	initStringInfo(&out);
	for (i = 0; i < json_array_size(content); i++)
	{
		JsonbContainer *block = json_value_container(json_array_elem(content, i), false);
		const char *type = json_get_cstring(block, "type");
		const char *text;

		if (type == NULL || strcmp(type, "text") != 0)
			continue;
		text = json_get_cstring(block, "text");
		if (text)
			appendStringInfoString(&out, text);
	}
	return cstring_to_text_with_len(out.data, out.len);
}

/*
 * What a finished call returns: with want_text the answer's text (a text
 * Datum), else the answer message (a jsonb Datum).  A failure raises, or
 * with on_error_null gives NULL (*isnull) for text and the error object
 * for jsonb.
 */
Datum
llm_call_result(const LlmCallResult *r, bool on_error_null, bool want_text, bool *isnull)
{
	*isnull = false;
	if (r->outcome != LLM_OUTCOME_OK)
	{
		ErrorParts	e;

		split_error(r, &e);
		/* NULL only for a failure the log has: without its row, raise */
		if (!on_error_null || llm_error_raises_always(r->sqlerrcode) || e.request_id == NULL)
			raise_error(r, &e);
		if (want_text)
		{
			*isnull = true;
			return (Datum) 0;
		}
		return JsonbPGetDatum(error_object(r, &e));
	}
	else
	{
		Jsonb	   *answer = jsonb_from_cstring(r->text);
		JsonbContainer *gw = json_get_object(&answer->root, "gateway");
		const char *warning = gw ? json_get_cstring(gw, "quota_warning") : NULL;

		/* a quota's warn_at crossed by this call (once per window) */
		if (warning)
			ereport(NOTICE, (errcode(ERRCODE_WARNING), errmsg("%s", warning)));

		if (want_text)
			return PointerGetDatum(answer_text(answer));
		return JsonbPGetDatum(answer);
	}
}

static MemoryContext usage_cxt = NULL;

/*
 * What an answer used: its usage tokens and gateway.cost_usd, read once per
 * call (channel_take) with the JSON lexer, for llm.statement_progress and
 * EXPLAIN ANALYZE of the pipeline (the answer is parsed once more by
 * whoever shapes it; no jsonb is built here).
 */
typedef struct UsageScan
{
	int			depth;			/* object nesting */
	char		top[16];		/* key at depth 1 ("usage", "gateway") */
	char		sub[16];		/* key at depth 2 */
	int64		input_tokens;
	int64		output_tokens;
	int64		cost_pico;
	bool		has_cost;
} UsageScan;

static void
scan_object_start(void *state)
{
	((UsageScan *) state)->depth++;
}

static void
scan_object_end(void *state)
{
	UsageScan  *s = state;

	s->depth--;
	if (s->depth == 1)
		s->top[0] = '\0';
}

static void
scan_field(void *state, char *fname, bool isnull)
{
	UsageScan  *s = state;

	if (s->depth == 1)
		strlcpy(s->top, fname, sizeof(s->top));
	else if (s->depth == 2)
		strlcpy(s->sub, fname, sizeof(s->sub));
}

/* "0.000123" -> 123000000 (1e-12 USD); digits past the 12th decimal dropped */
static bool
parse_cost(const char *s, int64 *pico)
{
	int64		whole = 0;
	int64		frac = 0;
	int			nfrac = 0;

	if (*s == '-')
		return false;
	for (; *s >= '0' && *s <= '9'; s++)
	{
		if (whole > PG_INT64_MAX / 10 / LLM_PICO_PER_USD)
			return false;
		whole = whole * 10 + (*s - '0');
	}
	if (*s == '.')
		for (s++; *s >= '0' && *s <= '9'; s++)
			if (nfrac < 12)
			{
				frac = frac * 10 + (*s - '0');
				nfrac++;
			}
	if (*s != '\0')
		return false;			/* an exponent: not what numeric_out writes */
	for (; nfrac < 12; nfrac++)
		frac *= 10;
	*pico = whole * LLM_PICO_PER_USD + frac;
	return true;
}

static void
scan_scalar(void *state, char *token, JsonTokenType type)
{
	UsageScan  *s = state;

	if (s->depth != 2 || type != JSON_TOKEN_NUMBER)
		return;
	if (strcmp(s->top, "usage") == 0)
	{
		if (strcmp(s->sub, "input_tokens") == 0)
			s->input_tokens = strtoi64(token, NULL, 10);
		else if (strcmp(s->sub, "output_tokens") == 0)
			s->output_tokens = strtoi64(token, NULL, 10);
	}
	else if (strcmp(s->top, "gateway") == 0 && strcmp(s->sub, "cost_usd") == 0)
		s->has_cost = parse_cost(token, &s->cost_pico);
}

void
llm_call_usage(LlmCallResult *r)
{
	UsageScan	scan;
	UsageScan  *s = &scan;
	JsonSemAction sem;
	JsonLexContext *lex;
	MemoryContext old;

	memset(s, 0, sizeof(*s));
	memset(&r->usage, 0, sizeof(r->usage));
	if (r->text == NULL || r->outcome != LLM_OUTCOME_OK)
		return;
	if (usage_cxt == NULL)
		usage_cxt = AllocSetContextCreate(TopMemoryContext, "llm_gateway call usage",
										  ALLOCSET_SMALL_SIZES);
	old = MemoryContextSwitchTo(usage_cxt);
	memset(&sem, 0, sizeof(sem));
	sem.semstate = s;
	sem.object_start = scan_object_start;
	sem.object_end = scan_object_end;
	sem.object_field_start = scan_field;
	sem.scalar = scan_scalar;
	lex = makeJsonLexContextCstringLen(r->text, r->len, PG_UTF8, true);
	if (pg_parse_json(lex, &sem) != JSON_SUCCESS)
		memset(s, 0, sizeof(*s));	/* the worker writes valid JSON; count nothing else */
	MemoryContextSwitchTo(old);
	MemoryContextReset(usage_cxt);
	r->usage.input_tokens = Max(s->input_tokens, 0);
	r->usage.output_tokens = Max(s->output_tokens, 0);
	r->usage.cost_pico = s->cost_pico;
	r->usage.has_cost = s->has_cost;
}

