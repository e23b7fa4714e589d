/*-------------------------------------------------------------------------
 *
 * gemini_embed.c
 *	  Gemini API embeddings, for the gemini kind:
 *	  POST {base_url}/{api_version}/models/{model}:batchEmbedContents
 *	  (x-goog-api-key), {"requests": [{"model": "models/{model}",
 *	  "content": {"parts": [{"text"}]}, "taskType", "outputDimensionality"},
 *	  ...]} -> {"embeddings": [{"values": [...]}, ...]} in request order.
 *
 * runs in: worker, backends (diagnostic functions), fuzz harness.  Pure
 * (providers/adapter.h).
 *
 * input_type "query" -> taskType RETRIEVAL_QUERY, "document" ->
 * RETRIEVAL_DOCUMENT, absent -> no taskType (the model's default).  Every
 * request of a batch carries the same task type and size: the worker only
 * batches calls that agree on both.
 *
 * Tokens.  gemini-embedding-001 answers carry no token count; newer
 * models add usageMetadata.promptTokenCount (a recorded answer in
 * test/fixtures/gemini/).  The count is used when present; otherwise the
 * parser says LLM_EMBED_TOKENS_UNKNOWN and the worker logs an estimate,
 * ceil(bytes of all inputs sent / 4), the rule llm.estimate uses:
 * reporting 0 would let a gemini embedding target bypass token quotas and
 * cost nothing in the log (design §23.1).
 *
 * Non-2xx answers are Google RPC errors, read by gemini_parse_error.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "providers/adapter.h"
#include "providers/adapter_util.h"
#include "providers/embed_kinds.h"
#include "providers/gemini.h"

#define GEMINI_DEFAULT_API_VERSION "v1beta"

/*
 * input_type as Google's task type (the Gemini API and Vertex AI share
 * it): query -> RETRIEVAL_QUERY, document -> RETRIEVAL_DOCUMENT, none ->
 * NULL (the model's default).
 */
bool
gemini_embed_task(const LlmEmbedCall *call, const char **task, LlmError *err)
{
	*task = NULL;
	if (call->input_type == NULL)
		return true;
	if (strcmp(call->input_type, "query") == 0)
		*task = "RETRIEVAL_QUERY";
	else if (strcmp(call->input_type, "document") == 0)
		*task = "RETRIEVAL_DOCUMENT";
	else
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "input_type must be \"query\" or \"document\"");
	return true;
}

bool
gemini_build_embed_request(const LlmEmbedCall *call, const LlmTarget *target,
						   LlmHttpRequest *out, LlmError *err)
{
	StringInfo	buf = &out->body;
	const char *version;
	const char *task = NULL;
	char	   *model;

	memset(out, 0, sizeof(*out));
	initStringInfo(&out->body);
	if (target->upstream_model == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "target has no upstream model");
	if (!gemini_embed_task(call, &task, err) ||
		!provider_option_string(target, "api_version", &version, err))
		return false;

	out->url = psprintf("%s/%s/models/%s:batchEmbedContents",
						provider_base_url(target),
						gemini_path_encode(version ? version : GEMINI_DEFAULT_API_VERSION),
						gemini_path_encode(target->upstream_model));
	provider_add_header(out, "content-type", "application/json");
	if (target->secret != NULL)
		provider_add_header(out, "x-goog-api-key", target->secret);
	if (!provider_option_headers(out, target, gemini_reserved_headers, err))
		return false;

	/* each request names the model of the URL, as the API requires */
	model = psprintf("models/%s", target->upstream_model);
	appendStringInfoString(buf, "{\"requests\":[");
	for (int i = 0; i < call->ninputs; i++)
	{
		bool		first = true;

		if (i > 0)
			appendStringInfoChar(buf, ',');
		appendStringInfoChar(buf, '{');
		json_append_key(buf, &first, "model");
		json_append_string(buf, model);
		json_append_key(buf, &first, "content");
		appendStringInfoString(buf, "{\"parts\":[{\"text\":");
		json_append_string(buf, call->inputs[i]);
		appendStringInfoString(buf, "}]}");
		if (task != NULL)
		{
			json_append_key(buf, &first, "taskType");
			json_append_string(buf, task);
		}
		if (call->dimensions > 0)
		{
			json_append_key(buf, &first, "outputDimensionality");
			appendStringInfo(buf, "%d", call->dimensions);
		}
		appendStringInfoChar(buf, '}');
	}
	appendStringInfoString(buf, "]}");
	return true;
}

/*
 * {"error": {...}} with a 2xx status: retryable, as for generateContent
 * (the Gemini API and Vertex AI alike).
 */
bool
gemini_embed_inband_error(JsonbContainer *root, const LlmTarget *target,
						  const LlmHttpResult *res, LlmError *err)
{
	JsonbContainer *e = json_get_object(root, "error");
	const char *message = json_get_cstring(e, "message");

	provider_fail(err, ERRCODE_LLM_PROVIDER_INBAND_ERROR, LLM_FAIL_RETRYABLE,
				  "%s", message ? provider_text(message, target->secret)
				  : "provider reported an error inside a successful answer");
	err->provider_type = (char *) json_get_cstring(e, "status");
	err->http_status = (int) res->status;
	err->retry_after_s = provider_retry_after(res);
	return false;
}

bool
gemini_parse_embed_response(const LlmEmbedCall *call, const LlmTarget *target,
							const LlmHttpResult *res, LlmEmbedAnswer *out,
							LlmError *err)
{
	JsonbContainer *root;
	JsonbContainer *embeddings;
	char	   *why = NULL;
	int64		tokens;
	int			n;

	if (!embed_answer_object(res, target, out, &root, err))
		return false;

	if (json_get_object(root, "error") != NULL && json_get(root, "embeddings") == NULL)
		return gemini_embed_inband_error(root, target, res, err);

	embeddings = json_get_array(root, "embeddings");
	if (!embed_answer_vectors(call, embeddings, "embeddings", res, target, out, err))
		return false;
	n = out->nvectors;
	for (int i = 0; i < n; i++)
	{
		JsonbContainer *item = json_value_container(json_array_elem(embeddings, i), false);
		JsonbContainer *values = json_get_array(item, "values");

		if (values == NULL)
			return provider_malformed(err, res, "an \"embeddings\" element has no \"values\" array",
									  target->secret);
		if (!embed_read_vector(values, &out->dimension, &out->vectors[i], &why))
			return provider_malformed(err, res, why, target->secret);
	}

	/* the count when the answer has one, else the worker estimates (header comment) */
	if (!json_get_int64(json_get_object(root, "usageMetadata"), "promptTokenCount", &tokens) ||
		tokens < 0)
		tokens = LLM_EMBED_TOKENS_UNKNOWN;
	out->input_tokens = tokens;
	out->model = NULL;			/* the answer does not name it */
	return embed_answer_check(call, out, res, target->secret, err);
}
