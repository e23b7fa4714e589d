/*-------------------------------------------------------------------------
 *
 * openai_error.c
 *	  OpenAI Chat Completions adapter: error answers (OpenAI, Azure and
 *	  FastAPI-style bodies of compatible servers) and errors inside a 2xx
 *	  body, read into an LlmError.
 *
 * runs in: worker (and backends, for the diagnostic adapter functions).
 * Pure, like every adapter (see providers/adapter.h).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/builtins.h"

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "providers/adapter.h"
#include "providers/adapter_util.h"
#include "providers/openai.h"

/* String or number as text (error codes are either, depending on the server). */
char *
openai_scalar_text(JsonbValue *v)
{
	if (v == NULL)
		return NULL;
	if (v->type == jbvString)
		return json_value_cstring(v);
	if (v->type == jbvNumeric)
		return DatumGetCString(DirectFunctionCall1(numeric_out,
												   NumericGetDatum(v->val.numeric)));
	return NULL;
}

/* {"error": ...} in a 2xx body (OpenRouter does this after it started). */
/* {"error": ...} in a 2xx body (OpenRouter does this after it started). */
bool
openai_inband_error(JsonbContainer *root, const LlmTarget *target,
					const LlmHttpResult *res, LlmError *err)
{
	JsonbValue *ev = json_get(root, "error");
	JsonbContainer *e = json_value_container(ev, false);
	const char *message = e ? json_get_cstring(e, "message") : json_value_cstring(ev);
	char	   *code = e ? openai_scalar_text(json_get(e, "code")) : NULL;

	provider_fail(err, ERRCODE_LLM_PROVIDER_INBAND_ERROR, LLM_FAIL_RETRYABLE,
				  "%s", message ? provider_text(message, target->secret)
				  : "provider reported an error inside a successful answer");
	err->provider_type = code ? code : (char *) json_get_cstring(e, "type");
	err->http_status = (int) res->status;
	err->retry_after_s = provider_retry_after(res);
	return false;
}

/* ---------- parse_error ---------- */

/* FastAPI validation errors: {"detail": "text" | [{"loc": [...], "msg": ...}, ...]} */
static char *
fastapi_message(JsonbValue *detail)
{
	JsonbContainer *list = json_value_container(detail, true);
	JsonbContainer *first;
	JsonbContainer *loc;
	StringInfoData buf;
	const char *msg;
	int			n;

	if (detail->type == jbvString)
		return json_value_cstring(detail);
	n = json_array_size(list);
	first = json_value_container(json_array_elem(list, 0), false);
	msg = json_get_cstring(first, "msg");
	if (msg == NULL)
		return NULL;
	initStringInfo(&buf);
	loc = json_get_array(first, "loc");
	for (int i = 0; i < json_array_size(loc); i++)
	{
		char	   *part = openai_scalar_text(json_array_elem(loc, i));

		if (part == NULL)
			continue;
		if (buf.len > 0)
			appendStringInfoChar(&buf, '.');
		appendStringInfoString(&buf, part);
	}
	if (buf.len > 0)
		appendStringInfoString(&buf, ": ");
	appendStringInfoString(&buf, msg);
	if (n > 1)
		appendStringInfo(&buf, " (and %d more)", n - 1);
	return buf.data;
}

/*
 * Error bodies of the servers this protocol covers:
 *	 {"error":{"message","type","param","code"}}	OpenAI, Azure, vLLM, Ollama,
 *		llama.cpp, OpenRouter; code a string or an integer
 *	 {"error":"message"}						some proxies
 *	 {"object":"error","message","type","code"}	older vLLM, Mistral
 *	 {"detail": ...}							FastAPI-based servers
 * provider_type is the code when it is a string (more specific than the
 * type), else the type, else an integer code.  insufficient_quota means
 * the account is out of credit: a fatal quota error, whatever the status.
 */
void
openai_parse_error(const LlmHttpResult *res, LlmError *err)
{
	char	   *why;
	Jsonb	   *body = provider_parse_body(res, &why);
	JsonbContainer *root = body ? &body->root : NULL;
	JsonbValue *ev = json_get(root, "error");
	JsonbContainer *e = json_value_container(ev, false);
	const char *message = NULL;
	const char *type = NULL;
	JsonbValue *code = NULL;
	char	   *code_text;
	const char *object = json_get_cstring(root, "object");

	err->retry_after_s = provider_retry_after(res);

	if (e == NULL && object != NULL && strcmp(object, "error") == 0)
		e = root;
	if (e != NULL)
	{
		JsonbContainer *inner = json_get_object(e, "innererror");
		const char *inner_code = json_get_cstring(inner, "code");

		message = json_get_cstring(e, "message");
		type = json_get_cstring(e, "type");
		code = json_get(e, "code");
		if (inner_code != NULL)
			err->detail = psprintf("inner error code: %s", inner_code);
	}
	else if (ev != NULL && ev->type == jbvString)
		message = json_value_cstring(ev);
	else if (json_get(root, "detail") != NULL)
		message = fastapi_message(json_get(root, "detail"));
	else if (json_get_cstring(root, "message") != NULL)
		message = json_get_cstring(root, "message");

	if (message == NULL && type == NULL && code == NULL)
	{
		err->detail = provider_body_excerpt(res);
		return;
	}
	if (message != NULL)
		err->message = provider_text(message, NULL);
	code_text = openai_scalar_text(code);
	if (code != NULL && code->type == jbvString)
		err->provider_type = code_text;
	else if (type != NULL)
		err->provider_type = (char *) type;
	else
		err->provider_type = code_text;

	if ((code_text != NULL && strcmp(code_text, "insufficient_quota") == 0) ||
		(type != NULL && strcmp(type, "insufficient_quota") == 0))
	{
		err->sqlerrcode = ERRCODE_LLM_PROVIDER_QUOTA;
		err->fail_class = LLM_FAIL_FATAL;
	}
	/*
	 * The input is over the model's window ("This model's maximum context
	 * length is 8192 tokens. However, your messages resulted in 9000
	 * tokens. ...").  The code alone decides: OpenAI, Azure and Groq send
	 * it, and the message text differs between them.
	 */
	else if (code_text != NULL && strcmp(code_text, "context_length_exceeded") == 0)
		llm_error_context_too_long(err);
}
