/*-------------------------------------------------------------------------
 *
 * gemini_response.c
 *	  Gemini generateContent: a 2xx answer read into the canonical answer,
 *	  and Google RPC error bodies read into an LlmError.
 *
 * runs in: worker (and backends, for the diagnostic adapter functions).
 * Pure, like every adapter (see providers/adapter.h).
 *
 * Gemini -> canonical, the choices made here:
 *	 - candidates[0].content.parts: text -> text blocks; a part with
 *	   "thought": true -> a thinking block; functionCall -> tool_use.
 *	   Other parts (inlineData, executableCode, ...) are skipped.
 *	 - A thoughtSignature is kept in a thinking block, signature
 *	   GEMINI_SIGNATURE_PREFIX + value: on a thought part in its own block,
 *	   on any other part in an empty thinking block just before it, so the
 *	   request side can put it back on the same part (Gemini 3 requires
 *	   that for function calls).  An empty text part only carries one.
 *	 - tool ids: functionCall.id when Gemini gives one, else
 *	   GEMINI_TOOL_ID_PREFIX + responseId + "_" + part index (characters
 *	   outside [A-Za-z0-9_-] become "_"): stable for one answer, unique
 *	   across answers, and recognised on the way back.
 *	 - finishReason: STOP -> end_turn, or tool_use when a functionCall is
 *	   present (Gemini has no tool reason); MAX_TOKENS -> max_tokens;
 *	   SAFETY, RECITATION, LANGUAGE, BLOCKLIST, PROHIBITED_CONTENT, SPII and
 *	   the IMAGE_ safety reasons -> refusal; MALFORMED_FUNCTION_CALL,
 *	   UNEXPECTED_TOOL_CALL, TOO_MANY_TOOL_CALLS -> an unreadable answer
 *	   (LL006: the model answered, but with no usable call); anything else
 *	   (OTHER, NO_IMAGE, unknown) -> end_turn.
 *	 - No candidates and promptFeedback.blockReason: the prompt was
 *	   blocked.  That is LL004 (the provider refuses this request), fatal:
 *	   the same prompt is blocked again, and routing around a safety block
 *	   to another provider is not the gateway's call to make.
 *	 - usageMetadata: input = promptTokenCount - cachedContentTokenCount +
 *	   toolUsePromptTokenCount (tool prompts are outside promptTokenCount:
 *	   prompt + candidates + toolUsePrompt + thoughts = total);
 *	   cache read = cachedContentTokenCount; output = candidatesTokenCount
 *	   + thoughtsTokenCount (thinking is billed as output).
 *	 - modelVersion -> model, responseId -> id.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>
#include <math.h>

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "providers/adapter.h"
#include "providers/adapter_util.h"
#include "providers/gemini.h"

static void
begin_block(StringInfo blocks, const char *type, bool *first)
{
	if (blocks->len > 1)
		appendStringInfoChar(blocks, ',');
	appendStringInfoChar(blocks, '{');
	*first = true;
	json_append_key(blocks, first, "type");
	json_append_string(blocks, type);
}

static void
write_thinking_block(StringInfo blocks, const char *text, const char *sig)
{
	bool		first;

	begin_block(blocks, "thinking", &first);
	json_append_key(blocks, &first, "thinking");
	json_append_string(blocks, text);
	json_append_key(blocks, &first, "signature");
	json_append_string(blocks, sig ? psprintf("%s%s", GEMINI_SIGNATURE_PREFIX, sig) : "");
	appendStringInfoChar(blocks, '}');
}

/* GEMINI_TOOL_ID_PREFIX + responseId + "_" + index, as a tool id may be spelt */
static char *
synthesize_id(const char *response_id, int index)
{
	StringInfoData buf;

	initStringInfo(&buf);
	appendStringInfoString(&buf, GEMINI_TOOL_ID_PREFIX);
	for (const char *p = response_id ? response_id : "call"; *p; p++)
		appendStringInfoChar(&buf, isalnum((unsigned char) *p) || *p == '-' ? *p : '_');
	appendStringInfo(&buf, "_%d", index);
	return buf.data;
}

static void
write_tool_use(StringInfo blocks, JsonbContainer *fc, const char *response_id, int index)
{
	const char *id = json_get_cstring(fc, "id");
	const char *name = json_get_cstring(fc, "name");
	JsonbValue *args = json_get(fc, "args");
	bool		first;

	begin_block(blocks, "tool_use", &first);
	json_append_key(blocks, &first, "id");
	json_append_string(blocks, id != NULL && id[0] != '\0' ? id : synthesize_id(response_id, index));
	json_append_key(blocks, &first, "name");
	json_append_string(blocks, name ? name : "");
	json_append_key(blocks, &first, "input");
	if (json_value_container(args, false) != NULL)
		json_append_value(blocks, args);
	else
		appendStringInfoString(blocks, "{}");
	appendStringInfoChar(blocks, '}');
}

/* The parts of the first candidate; returns how many tool_use blocks. */
static int
write_parts(StringInfo blocks, JsonbContainer *parts, const char *response_id)
{
	int			tools = 0;

	appendStringInfoChar(blocks, '[');
	for (int i = 0; i < json_array_size(parts); i++)
	{
		JsonbContainer *part = json_value_container(json_array_elem(parts, i), false);
		JsonbValue *thought = json_get(part, "thought");
		const char *sig = json_get_cstring(part, "thoughtSignature");
		const char *text = json_get_cstring(part, "text");
		JsonbContainer *fc = json_get_object(part, "functionCall");
		bool		is_thought = thought != NULL && thought->type == jbvBool && thought->val.boolean;

		if (part == NULL)
			continue;
		if (is_thought)
		{
			write_thinking_block(blocks, text ? text : "", sig);
			continue;
		}
		if (sig != NULL)
			write_thinking_block(blocks, "", sig);
		if (fc != NULL)
		{
			write_tool_use(blocks, fc, response_id, i);
			tools++;
		}
		else if (text != NULL && text[0] != '\0')
		{
			bool		first;

			begin_block(blocks, "text", &first);
			json_append_key(blocks, &first, "text");
			json_append_string(blocks, text);
			appendStringInfoChar(blocks, '}');
		}
	}
	appendStringInfoChar(blocks, ']');
	return tools;
}

static bool
in_list(const char *const *list, const char *s)
{
	for (int i = 0; list[i] != NULL; i++)
		if (strcmp(list[i], s) == 0)
			return true;
	return false;
}

static const char *const refusal_reasons[] = {
	"SAFETY", "RECITATION", "LANGUAGE", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII",
	"IMAGE_SAFETY", "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", NULL
};

static const char *const bad_call_reasons[] = {
	"MALFORMED_FUNCTION_CALL", "UNEXPECTED_TOOL_CALL", "TOO_MANY_TOOL_CALLS", NULL
};

static int64
count(JsonbContainer *usage, const char *key)
{
	int64		n;

	return json_get_int64(usage, key, &n) && n >= 0 ? n : 0;
}

static void
read_usage(JsonbContainer *root, LlmAnswer *out)
{
	JsonbContainer *usage = json_get_object(root, "usageMetadata");
	int64		prompt = count(usage, "promptTokenCount");
	int64		cached = count(usage, "cachedContentTokenCount");

	out->input_tokens = Max(prompt - cached, 0) + count(usage, "toolUsePromptTokenCount");
	out->cache_read_input_tokens = cached;
	out->cache_creation_input_tokens = 0;
	out->output_tokens = count(usage, "candidatesTokenCount") + count(usage, "thoughtsTokenCount");
}

/* {"error": {...}} with a 2xx status: retryable, like the other protocols */
static bool
inband_error(JsonbContainer *e, const LlmTarget *target, const LlmHttpResult *res,
			 LlmError *err)
{
	const char *message = json_get_cstring(e, "message");

	provider_fail(err, ERRCODE_LLM_PROVIDER_INBAND_ERROR, LLM_FAIL_RETRYABLE,
				  "%s", message ? provider_text(message, target->secret)
				  : "provider reported an error inside a successful answer");
	err->provider_type = (char *) json_get_cstring(e, "status");
	err->http_status = (int) res->status;
	err->retry_after_s = provider_retry_after(res);
	return false;
}

/* No candidates because the prompt was blocked: a clear, fatal error. */
static bool
blocked_prompt(JsonbContainer *feedback, const char *reason, const LlmTarget *target,
			   const LlmHttpResult *res, LlmError *err)
{
	const char *why = json_get_cstring(feedback, "blockReasonMessage");

	provider_fail(err, ERRCODE_LLM_PROVIDER_INVALID_REQUEST, LLM_FAIL_FATAL,
				  "provider blocked the prompt (%s)", provider_text(reason, target->secret));
	if (why != NULL)
		err->detail = provider_text(why, target->secret);
	err->hint = pstrdup("Gemini answers nothing for a blocked prompt; rephrase it, or set the "
						"provider option \"safety_settings\".");
	err->provider_type = pstrdup(reason);
	err->http_status = (int) res->status;
	return false;
}

bool
gemini_parse_response(const LlmCall *call, const LlmTarget *target,
					  const LlmHttpResult *res, LlmAnswer *out, LlmError *err)
{
	Jsonb	   *body;
	JsonbContainer *root;
	JsonbContainer *candidate;
	JsonbContainer *feedback;
	const char *reason;
	const char *block;
	const char *model;
	char	   *why;
	int			tools;

	provider_init_answer(out);
	body = provider_parse_body(res, &why);
	if (body == NULL)
		return provider_malformed(err, res, why, target->secret);
	root = &body->root;
	if (!JsonContainerIsObject(root))
		return provider_malformed(err, res, "the answer is not a JSON object", target->secret);

	candidate = json_value_container(json_array_elem(json_get_array(root, "candidates"), 0), false);
	if (candidate == NULL)
	{
		feedback = json_get_object(root, "promptFeedback");
		block = json_get_cstring(feedback, "blockReason");
		if (json_get_object(root, "error") != NULL)
			return inband_error(json_get_object(root, "error"), target, res, err);
		if (block != NULL)
			return blocked_prompt(feedback, block, target, res, err);
		return provider_malformed(err, res, "the answer has no \"candidates\"", target->secret);
	}

	reason = json_get_cstring(candidate, "finishReason");
	if (reason != NULL && in_list(bad_call_reasons, reason))
	{
		provider_malformed(err, res, psprintf("the model produced no valid function call (%s)", reason),
						   target->secret);
		err->provider_type = pstrdup(reason);
		return false;
	}

	out->id = (char *) json_get_cstring(root, "responseId");
	model = json_get_cstring(root, "modelVersion");
	out->model = (char *) (model ? model : target->upstream_model);
	tools = write_parts(&out->content,
						json_get_array(json_get_object(candidate, "content"), "parts"),
						out->id);
	if (reason != NULL && strcmp(reason, "MAX_TOKENS") == 0)
		out->stop_reason = "max_tokens";
	else if (reason != NULL && in_list(refusal_reasons, reason))
		out->stop_reason = "refusal";
	else
		out->stop_reason = tools > 0 ? "tool_use" : "end_turn";
	out->stop_sequence = NULL;
	read_usage(root, out);
	return true;
}

/* ---------- parse_error ---------- */

/* A protobuf Duration as JSON: decimal seconds with an "s" suffix ("34.4s"). */
static double
parse_duration(const char *s)
{
	char	   *end;
	double		v;

	if (s == NULL || !isdigit((unsigned char) s[0]))
		return -1;
	v = strtod(s, &end);
	if (end == s || strcmp(end, "s") != 0 || !isfinite(v) || v < 0)
		return -1;
	return v;
}

/*
 * Google RPC errors: {"error": {"code", "message", "status", "details"}}
 * (some front ends wrap it in a one-element array).  provider_type is the
 * status name.  Refinements over the HTTP status:
 *	 - RetryInfo.retryDelay -> retry_after_s, when no header gave one;
 *	 - RESOURCE_EXHAUSTED whose QuotaFailure names a per-day quota is out
 *	   of quota until tomorrow: LL010, fatal.  Per-minute quotas (and a 429
 *	   without QuotaFailure) stay a retryable rate limit;
 *	 - an invalid API key is a 400 INVALID_ARGUMENT (ErrorInfo reason
 *	   API_KEY_INVALID): a refused credential, like PERMISSION_DENIED and
 *	   UNAUTHENTICATED.
 */
void
gemini_parse_error(const LlmHttpResult *res, LlmError *err)
{
	char	   *why;
	Jsonb	   *body = provider_parse_body(res, &why);
	JsonbContainer *root = body ? &body->root : NULL;
	JsonbContainer *e;
	JsonbContainer *details;
	const char *message;
	const char *status;
	bool		per_day = false;
	bool		key_invalid = false;

	err->retry_after_s = provider_retry_after(res);
	if (root != NULL && JsonContainerIsArray(root))
		root = json_value_container(json_array_elem(root, 0), false);
	e = json_get_object(root, "error");
	if (e == NULL)
	{
		err->detail = provider_body_excerpt(res);
		return;
	}
	message = json_get_cstring(e, "message");
	status = json_get_cstring(e, "status");
	if (message != NULL)
		err->message = provider_text(message, NULL);
	if (status != NULL)
		err->provider_type = (char *) status;

	details = json_get_array(e, "details");
	for (int i = 0; i < json_array_size(details); i++)
	{
		JsonbContainer *d = json_value_container(json_array_elem(details, i), false);
		const char *type = json_get_cstring(d, "@type");
		JsonbContainer *violations = json_get_array(d, "violations");

		if (type == NULL)
			continue;
		if (strcmp(type, "type.googleapis.com/google.rpc.RetryInfo") == 0 &&
			err->retry_after_s < 0)
			err->retry_after_s = parse_duration(json_get_cstring(d, "retryDelay"));
		else if (strcmp(type, "type.googleapis.com/google.rpc.ErrorInfo") == 0)
		{
			const char *reason = json_get_cstring(d, "reason");

			key_invalid |= reason != NULL && strcmp(reason, "API_KEY_INVALID") == 0;
		}
		else if (strcmp(type, "type.googleapis.com/google.rpc.QuotaFailure") == 0)
		{
			for (int j = 0; j < json_array_size(violations); j++)
			{
				JsonbContainer *v = json_value_container(json_array_elem(violations, j), false);
				const char *quota_id = json_get_cstring(v, "quotaId");

				per_day |= quota_id != NULL && strstr(quota_id, "PerDay") != NULL;
			}
		}
	}

	if (status != NULL && strcmp(status, "RESOURCE_EXHAUSTED") == 0 && per_day)
	{
		err->sqlerrcode = ERRCODE_LLM_PROVIDER_QUOTA;
		err->fail_class = LLM_FAIL_FATAL;
		err->hint = pstrdup("The provider's daily quota is used up; it resets at midnight Pacific time.");
	}
	else if (key_invalid ||
			 (status != NULL && (strcmp(status, "PERMISSION_DENIED") == 0 ||
								 strcmp(status, "UNAUTHENTICATED") == 0)) ||
			 (message != NULL && strstr(message, "API key not valid") != NULL))
	{
		err->sqlerrcode = ERRCODE_LLM_PROVIDER_AUTH;
		err->fail_class = LLM_FAIL_CREDENTIAL;
		err->hint = pstrdup("Check the provider's credential; llm.set_credential() replaces it.");
	}
	/* "The input token count (N) exceeds the maximum number of tokens allowed (M)." */
	else if (status != NULL && strcmp(status, "INVALID_ARGUMENT") == 0 && message != NULL &&
			 strstr(message, "input token count") != NULL &&
			 strstr(message, "exceeds the maximum") != NULL)
		llm_error_context_too_long(err);
}
