/*-------------------------------------------------------------------------
 *
 * anthropic.c
 *	  Adapter for the Anthropic Messages API (POST {base_url}/v1/messages).
 *
 * runs in: worker (and backends, for the diagnostic adapter functions).
 *
 * The canonical format is the Messages format, so this adapter mostly
 * passes things through: it adds the model, settles max_tokens (which the
 * API requires) and the headers, and on the way back splits the message
 * into LlmAnswer parts without touching the content blocks, so thinking
 * signatures and block types we do not know survive unchanged.
 *
 * Provider options (llm.providers.options):
 *	 anthropic_version	value of the anthropic-version header (2023-06-01)
 *	 headers			extra request headers, e.g. {"anthropic-beta": "..."}
 *	 structured_output	"native" (default: output_config is sent as it is,
 *						the GA Messages field) or "tool" (output_config as a
 *						forced tool call, forced_output.c: for proxies and
 *						models that do not know output_config)
 * Route options (llm.routes.options):
 *	 max_tokens			cap on the request's max_tokens
 *	 default_max_tokens	max_tokens when the request names none (else 1024)
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "providers/adapter.h"
#include "providers/adapter_util.h"
#include "providers/forced_output.h"

#define ANTHROPIC_DEFAULT_VERSION	"2023-06-01"

/* the API rejects a request without max_tokens; this is what we send then */
#define ANTHROPIC_DEFAULT_MAX_TOKENS 1024

static bool anthropic_build_request(const LlmCall *call, const LlmTarget *target,
									LlmHttpRequest *out, LlmError *err);
static bool anthropic_parse_response(const LlmCall *call, const LlmTarget *target,
									 const LlmHttpResult *res, LlmAnswer *out,
									 LlmError *err);
static void anthropic_parse_error(const LlmHttpResult *res, LlmError *err);

/* how the Messages API starts its 400 for an input over the context window */
#define ANTHROPIC_CONTEXT_PREFIX "prompt is too long"

/* provider option structured_output: "tool" (true), "native" or absent (false) */
static bool
forced_tool_output(const LlmTarget *target, bool *forced, LlmError *err)
{
	const char *mode;

	*forced = false;
	if (!provider_option_string(target, "structured_output", &mode, err))
		return false;
	if (mode == NULL || strcmp(mode, "native") == 0)
		return true;
	if (strcmp(mode, "tool") == 0)
	{
		*forced = true;
		return true;
	}
	provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
				  "provider option \"structured_output\" must be \"native\" or \"tool\"");
	return false;
}

const LlmProvider llm_provider_anthropic = {
	"anthropic",				/* kind */
	"an Anthropic API key (sk-ant-...), sent as x-api-key",	/* auth_hint */
	anthropic_build_request,	/* build_request */
	anthropic_parse_response,	/* parse_response */
	anthropic_parse_error		/* parse_error */
};

/* headers this adapter sets; provider_options.headers may not repeat them */
static const char *const reserved_headers[] = {
	"content-type", "x-api-key", "anthropic-version", "content-length", "host", NULL
};

/*
 * Canonical request -> Messages request.  The body is the canonical
 * request with "model" added and max_tokens settled; every other member
 * (system, messages, temperature, top_p, top_k, stop_sequences, tools,
 * tool_choice, metadata, thinking, and any Messages field validation lets
 * through) is copied unchanged.
 */
static bool
anthropic_build_request(const LlmCall *call, const LlmTarget *target,
						LlmHttpRequest *out, LlmError *err)
{
	Jsonb	   *request = call->request;
	JsonbContainer *req = &request->root;
	const char *version;
	int64		max_tokens;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	bool		first = true;
	bool		skip = false;
	bool		forced;

	memset(out, 0, sizeof(*out));
	initStringInfo(&out->body);

	if (!forced_tool_output(target, &forced, err))
		return false;
	if (forced && JsonContainerIsObject(req))
	{
		if (!forced_output_request(call->request, &request, err))
			return false;
		req = &request->root;
	}
	if (!JsonContainerIsObject(req))
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "canonical request must be a JSON object");
	if (target->upstream_model == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "target has no upstream model");
	if (!provider_option_string(target, "anthropic_version", &version, err) ||
		!provider_max_tokens(call, target, ANTHROPIC_DEFAULT_MAX_TOKENS, &max_tokens, err))
		return false;

	out->url = psprintf("%s/v1/messages", provider_base_url(target));
	provider_add_header(out, "content-type", "application/json");
	if (target->secret != NULL)
		provider_add_header(out, "x-api-key", target->secret);
	provider_add_header(out, "anthropic-version",
						version ? version : ANTHROPIC_DEFAULT_VERSION);
	if (!provider_option_headers(out, target, reserved_headers, err))
		return false;

	appendStringInfoChar(&out->body, '{');
	json_append_key(&out->body, &first, "model");
	json_append_string(&out->body, target->upstream_model);
	json_append_key(&out->body, &first, "max_tokens");
	appendStringInfo(&out->body, INT64_FORMAT, max_tokens);

	it = JsonbIteratorInit(req);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			char	   *key = pnstrdup(v.val.string.val, v.val.string.len);

			skip = strcmp(key, "max_tokens") == 0 || provider_is_gateway_key(key);
			if (!skip)
				json_append_key(&out->body, &first, key);
		}
		else if (tok == WJB_VALUE && !skip)
			json_append_value(&out->body, &v);
	}
	appendStringInfoChar(&out->body, '}');
	return true;
}

/* Usage counter, 0 when absent or null (older answers lack the cache fields). */
static int64
usage_count(JsonbContainer *usage, const char *key)
{
	int64		n;

	return json_get_int64(usage, key, &n) && n >= 0 ? n : 0;
}

/*
 * {"type":"error","error":{...}} with a 2xx status: an in-band error.  The
 * request itself may be fine (the usual case is an overload surfacing after
 * the status line was sent), so it is retryable.
 */
static bool
anthropic_inband_error(JsonbContainer *root, const LlmTarget *target,
					   const LlmHttpResult *res, LlmError *err)
{
	JsonbContainer *e = json_get_object(root, "error");
	const char *message = json_get_cstring(e, "message");

	provider_fail(err, ERRCODE_LLM_PROVIDER_INBAND_ERROR, LLM_FAIL_RETRYABLE,
				  "%s", message ? provider_text(message, target->secret)
				  : "provider reported an error inside a successful answer");
	err->provider_type = (char *) json_get_cstring(e, "type");
	err->http_status = (int) res->status;
	err->retry_after_s = provider_retry_after(res);
	return false;
}

static bool
anthropic_parse_response(const LlmCall *call, const LlmTarget *target,
						 const LlmHttpResult *res, LlmAnswer *out,
						 LlmError *err)
{
	Jsonb	   *body;
	JsonbContainer *root;
	JsonbContainer *content;
	JsonbContainer *usage;
	const char *type;
	const char *model;
	const char *stop_reason;
	char	   *why;

	provider_init_answer(out);
	body = provider_parse_body(res, &why);
	if (body == NULL)
		return provider_malformed(err, res, why, target->secret);
	root = &body->root;
	if (!JsonContainerIsObject(root))
		return provider_malformed(err, res, "the answer is not a JSON object", target->secret);

	type = json_get_cstring(root, "type");
	if (type != NULL && strcmp(type, "error") == 0)
		return anthropic_inband_error(root, target, res, err);

	content = json_get_array(root, "content");
	if (content == NULL)
		return provider_malformed(err, res, "the answer has no \"content\" array", target->secret);

	out->id = (char *) json_get_cstring(root, "id");
	model = json_get_cstring(root, "model");
	out->model = (char *) (model ? model : target->upstream_model);
	stop_reason = json_get_cstring(root, "stop_reason");
	/* never null outside streaming; if it is, the message did end */
	out->stop_reason = (char *) (stop_reason ? stop_reason : "end_turn");
	out->stop_sequence = (char *) json_get_cstring(root, "stop_sequence");

	usage = json_get_object(root, "usage");
	out->input_tokens = usage_count(usage, "input_tokens");
	out->output_tokens = usage_count(usage, "output_tokens");
	out->cache_creation_input_tokens = usage_count(usage, "cache_creation_input_tokens");
	out->cache_read_input_tokens = usage_count(usage, "cache_read_input_tokens");

	json_append_container(&out->content, content);
	if (json_get(&call->request->root, "output_config") != NULL)
	{
		bool		forced;

		if (!forced_tool_output(target, &forced, err))
			return false;
		if (forced)
			return forced_output_answer(out, err);
	}
	return true;
}

/*
 * Non-2xx: {"type":"error","error":{"type","message"},"request_id"}.  Two
 * kinds of error mean "out of money" and must not be retried: a 429 whose
 * error.details.error_code is enforced_spend_limit_reached, and
 * billing_error.  Bodies that are not this shape (a proxy's HTML page, a
 * Cloudflare 413) keep the status message and get an excerpt as detail.
 */
static void
anthropic_parse_error(const LlmHttpResult *res, LlmError *err)
{
	char	   *why;
	Jsonb	   *body = provider_parse_body(res, &why);
	JsonbContainer *e = NULL;
	const char *message;
	const char *type;
	const char *code;

	err->retry_after_s = provider_retry_after(res);
	if (body != NULL)
		e = json_get_object(&body->root, "error");
	if (e == NULL)
	{
		err->detail = provider_body_excerpt(res);
		return;
	}

	message = json_get_cstring(e, "message");
	type = json_get_cstring(e, "type");
	code = json_get_cstring(json_get_object(e, "details"), "error_code");
	if (message != NULL)
		err->message = provider_text(message, NULL);
	/* the specific code says more than the generic type */
	if (code != NULL || type != NULL)
		err->provider_type = (char *) (code ? code : type);
	if ((code != NULL && strcmp(code, "enforced_spend_limit_reached") == 0) ||
		(type != NULL && strcmp(type, "billing_error") == 0))
	{
		err->sqlerrcode = ERRCODE_LLM_PROVIDER_QUOTA;
		err->fail_class = LLM_FAIL_FATAL;
	}
	/* "prompt is too long: 215000 tokens > 200000 maximum" (by prefix only) */
	else if (res->status == 400 && type != NULL &&
			 strcmp(type, "invalid_request_error") == 0 && message != NULL &&
			 strncmp(message, ANTHROPIC_CONTEXT_PREFIX, strlen(ANTHROPIC_CONTEXT_PREFIX)) == 0)
		llm_error_context_too_long(err);
}
