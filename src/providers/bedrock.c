/*-------------------------------------------------------------------------
 *
 * bedrock.c
 *	  Adapter for the AWS Bedrock Runtime Converse API
 *	  (POST {base_url}/model/{modelId}/converse, SigV4-signed): the answer
 *	  and error halves; the request half is bedrock_request.c.
 *
 * runs in: worker (and backends, for the diagnostic adapter functions).
 *
 * Converse -> canonical:
 *	 output.message.content  text -> text, toolUse -> tool_use (toolUseId
 *							 kept as the id), reasoningContent -> thinking /
 *							 redacted_thinking; other block kinds (citations,
 *							 images) are dropped
 *	 stopReason				 end_turn, tool_use, max_tokens, stop_sequence as
 *							 is; guardrail_intervened and content_filtered ->
 *							 refusal; model_context_window_exceeded ->
 *							 max_tokens; malformed_model_output and
 *							 malformed_tool_use -> LL006 (retryable)
 *	 usage					 inputTokens (excludes cache, as Anthropic's),
 *							 outputTokens, cacheReadInputTokens,
 *							 cacheWriteInputTokens
 * Errors: the exception name from x-amzn-ErrorType (before ':'), else the
 * body's "__type" (after '#'); the text from the body's "message".
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "providers/adapter.h"
#include "providers/adapter_util.h"
#include "providers/bedrock.h"
#include "providers/forced_output.h"

static bool bedrock_parse_response(const LlmCall *call, const LlmTarget *target,
								   const LlmHttpResult *res, LlmAnswer *out,
								   LlmError *err);

const LlmProvider llm_provider_bedrock = {
	"bedrock",					/* kind */
	"a JSON object {\"access_key_id\", \"secret_access_key\", \"session_token\" (optional)}, used to sign with AWS SigV4",	/* auth_hint */
	bedrock_build_request,		/* build_request */
	bedrock_parse_response,		/* parse_response */
	bedrock_parse_error,		/* parse_error */
	bedrock_build_embed_request,	/* build_embed_request */
	bedrock_parse_embed_response,	/* parse_embed_response */
	BEDROCK_EMBED_BATCH_MAX,	/* embed_batch_max */
	bedrock_embed_batch_max_for /* embed_batch_max_for */
};

static int64
usage_count(JsonbContainer *usage, const char *key)
{
	int64		n;

	return json_get_int64(usage, key, &n) && n >= 0 ? n : 0;
}

/* One Converse content block as zero or one canonical block. */
static void
append_block(StringInfo buf, bool *first, JsonbContainer *b)
{
	JsonbContainer *tu;
	JsonbContainer *rc;
	const char *text;
	bool		f = true;

	if (b == NULL)
		return;
	if ((text = json_get_cstring(b, "text")) != NULL)
	{
		if (!*first)
			appendStringInfoChar(buf, ',');
		appendStringInfoChar(buf, '{');
		json_append_key(buf, &f, "type");
		json_append_string(buf, "text");
		json_append_key(buf, &f, "text");
		json_append_string(buf, text);
		appendStringInfoChar(buf, '}');
		*first = false;
	}
	else if ((tu = json_get_object(b, "toolUse")) != NULL)
	{
		JsonbValue *input = json_get(tu, "input");
		const char *id = json_get_cstring(tu, "toolUseId");
		const char *name = json_get_cstring(tu, "name");

		if (!*first)
			appendStringInfoChar(buf, ',');
		appendStringInfoChar(buf, '{');
		json_append_key(buf, &f, "type");
		json_append_string(buf, "tool_use");
		json_append_key(buf, &f, "id");
		json_append_string(buf, id ? id : "");
		json_append_key(buf, &f, "name");
		json_append_string(buf, name ? name : "");
		json_append_key(buf, &f, "input");
		if (input != NULL && json_value_container(input, false) != NULL)
			json_append_value(buf, input);
		else
			appendStringInfoString(buf, "{}");
		appendStringInfoChar(buf, '}');
		*first = false;
	}
	else if ((rc = json_get_object(b, "reasoningContent")) != NULL)
	{
		JsonbContainer *rt = json_get_object(rc, "reasoningText");
		const char *redacted = json_get_cstring(rc, "redactedContent");

		if (rt == NULL && redacted == NULL)
			return;
		if (!*first)
			appendStringInfoChar(buf, ',');
		appendStringInfoChar(buf, '{');
		json_append_key(buf, &f, "type");
		if (rt != NULL)
		{
			const char *t = json_get_cstring(rt, "text");
			const char *sig = json_get_cstring(rt, "signature");

			json_append_string(buf, "thinking");
			json_append_key(buf, &f, "thinking");
			json_append_string(buf, t ? t : "");
			json_append_key(buf, &f, "signature");
			json_append_string(buf, sig ? sig : "");
		}
		else
		{
			json_append_string(buf, "redacted_thinking");
			json_append_key(buf, &f, "data");
			json_append_string(buf, redacted);
		}
		appendStringInfoChar(buf, '}');
		*first = false;
	}
}

static bool
bedrock_parse_response(const LlmCall *call, const LlmTarget *target,
					   const LlmHttpResult *res, LlmAnswer *out, LlmError *err)
{
	Jsonb	   *body;
	JsonbContainer *root;
	JsonbContainer *message;
	JsonbContainer *content;
	JsonbContainer *usage;
	const char *stop;
	char	   *why;
	bool		first = true;
	int			n;

	provider_init_answer(out);
	body = provider_parse_body(res, &why);
	if (body == NULL)
		return provider_malformed(err, res, why, target->secret);
	root = &body->root;
	if (!JsonContainerIsObject(root))
		return provider_malformed(err, res, "the answer is not a JSON object", target->secret);

	message = json_get_object(json_get_object(root, "output"), "message");
	if (message == NULL)
	{
		const char *msg = json_get_cstring(root, "message");

		if (msg == NULL)
			msg = json_get_cstring(root, "Message");
		if (msg != NULL)
		{
			/* an exception body with a 2xx status: retry, as for Anthropic */
			provider_fail(err, ERRCODE_LLM_PROVIDER_INBAND_ERROR, LLM_FAIL_RETRYABLE,
						  "%s", provider_text(msg, target->secret));
			err->http_status = (int) res->status;
			return false;
		}
		return provider_malformed(err, res, "the answer has no \"output.message\"", target->secret);
	}
	content = json_get_array(message, "content");
	if (content == NULL)
		return provider_malformed(err, res, "the answer has no \"output.message.content\" array",
								  target->secret);

	stop = json_get_cstring(root, "stopReason");
	if (stop == NULL || strcmp(stop, "end_turn") == 0)
		out->stop_reason = "end_turn";
	else if (strcmp(stop, "tool_use") == 0 || strcmp(stop, "max_tokens") == 0 ||
			 strcmp(stop, "stop_sequence") == 0)
		out->stop_reason = (char *) stop;
	else if (strcmp(stop, "guardrail_intervened") == 0 || strcmp(stop, "content_filtered") == 0)
		out->stop_reason = "refusal";
	else if (strcmp(stop, "model_context_window_exceeded") == 0)
		out->stop_reason = "max_tokens";
	else if (strcmp(stop, "malformed_model_output") == 0 || strcmp(stop, "malformed_tool_use") == 0)
	{
		provider_fail(err, ERRCODE_LLM_PROVIDER_MALFORMED, LLM_FAIL_RETRYABLE,
					  "bedrock stopped with \"%s\": the model's output could not be read", stop);
		err->provider_type = (char *) stop;
		err->http_status = (int) res->status;
		return false;
	}
	else
		out->stop_reason = "end_turn";	/* a reason added after this adapter */

	out->model = (char *) target->upstream_model;
	out->id = NULL;				/* Converse has none; the worker invents one */
	usage = json_get_object(root, "usage");
	out->input_tokens = usage_count(usage, "inputTokens");
	out->output_tokens = usage_count(usage, "outputTokens");
	out->cache_read_input_tokens = usage_count(usage, "cacheReadInputTokens");
	out->cache_creation_input_tokens = usage_count(usage, "cacheWriteInputTokens");

	appendStringInfoChar(&out->content, '[');
	n = json_array_size(content);
	for (int i = 0; i < n; i++)
		append_block(&out->content, &first,
					 json_value_container(json_array_elem(content, i), false));
	appendStringInfoChar(&out->content, ']');
	/* the forced tool call of structured output becomes the answer's text */
	if (json_get(&call->request->root, "output_config") != NULL)
		return forced_output_answer(out, err);
	return true;
}

/* the exception name: x-amzn-ErrorType before ':', else body __type after '#' */
static char *
error_type(const LlmHttpResult *res, JsonbContainer *root)
{
	const char *h = provider_header(res, "x-amzn-errortype");
	const char *t;

	if (h != NULL && h[0] != '\0')
		return pnstrdup(h, strcspn(h, ":"));
	t = root ? json_get_cstring(root, "__type") : NULL;
	if (t != NULL)
	{
		const char *hash = strrchr(t, '#');

		return pstrdup(hash ? hash + 1 : t);
	}
	return NULL;
}

/*
 * A ValidationException about the input's length: Converse's own "Input is
 * too long for requested model.", and what some models add after "The
 * model returned the following errors: " (Anthropic's "prompt is too
 * long: N tokens > M maximum", others' "too many input tokens").
 * Compared case-insensitively: the models' capitalisation varies.
 */
static bool
input_too_long(const char *message)
{
	static const char *const phrases[] = {
		"input is too long", "prompt is too long", "too many input tokens", NULL
	};
	char	   *lower;

	if (message == NULL)
		return false;
	lower = pstrdup(message);
	for (char *c = lower; *c; c++)
		*c = pg_tolower((unsigned char) *c);
	for (int i = 0; phrases[i] != NULL; i++)
		if (strstr(lower, phrases[i]) != NULL)
			return true;
	return false;
}

static void
set_class(LlmError *err, int code, LlmFailClass cls)
{
	err->sqlerrcode = code;
	err->fail_class = cls;
}

void
bedrock_parse_error(const LlmHttpResult *res, LlmError *err)
{
	char	   *why;
	Jsonb	   *body = provider_parse_body(res, &why);
	JsonbContainer *root = body && JsonContainerIsObject(&body->root) ? &body->root : NULL;
	const char *message = NULL;
	char	   *type = error_type(res, root);

	err->retry_after_s = provider_retry_after(res);
	if (root != NULL)
	{
		message = json_get_cstring(root, "message");
		if (message == NULL)
			message = json_get_cstring(root, "Message");
	}
	if (message != NULL)
		err->message = provider_text(message, NULL);
	else
		err->detail = provider_body_excerpt(res);
	if (type == NULL)
		return;
	err->provider_type = provider_text(type, NULL);

	if (strcmp(type, "ThrottlingException") == 0)
		set_class(err, ERRCODE_LLM_PROVIDER_RATE_LIMITED, LLM_FAIL_RETRYABLE);
	else if (strcmp(type, "ServiceUnavailableException") == 0 ||
			 strcmp(type, "ModelNotReadyException") == 0)
		set_class(err, ERRCODE_LLM_PROVIDER_OVERLOADED, LLM_FAIL_RETRYABLE);
	else if (strcmp(type, "ModelTimeoutException") == 0)
		set_class(err, ERRCODE_LLM_PROVIDER_TIMEOUT, LLM_FAIL_RETRYABLE);
	else if (strcmp(type, "InternalServerException") == 0 ||
			 strcmp(type, "ModelErrorException") == 0 ||
			 strcmp(type, "ModelStreamErrorException") == 0)
		set_class(err, ERRCODE_LLM_PROVIDER_SERVER_ERROR, LLM_FAIL_RETRYABLE);
	else if (strcmp(type, "AccessDeniedException") == 0 ||
			 strcmp(type, "UnrecognizedClientException") == 0 ||
			 strcmp(type, "InvalidSignatureException") == 0 ||
			 strcmp(type, "IncompleteSignatureException") == 0 ||
			 strcmp(type, "MissingAuthenticationTokenException") == 0 ||
			 strcmp(type, "ExpiredTokenException") == 0)
	{
		set_class(err, ERRCODE_LLM_PROVIDER_AUTH, LLM_FAIL_CREDENTIAL);
		if (err->hint == NULL)
			err->hint = pstrdup("Check the provider's credential; llm.set_credential() replaces it.");
	}
	else if (strcmp(type, "ServiceQuotaExceededException") == 0)
		set_class(err, ERRCODE_LLM_PROVIDER_QUOTA, LLM_FAIL_FATAL);
	else if (strcmp(type, "ValidationException") == 0 && input_too_long(message))
		llm_error_context_too_long(err);
	else if (strcmp(type, "ValidationException") == 0 ||
			 strcmp(type, "ResourceNotFoundException") == 0 ||
			 strcmp(type, "SerializationException") == 0)
		set_class(err, ERRCODE_LLM_PROVIDER_INVALID_REQUEST, LLM_FAIL_FATAL);
}
