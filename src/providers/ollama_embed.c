/*-------------------------------------------------------------------------
 *
 * ollama_embed.c
 *	  Ollama's native embeddings endpoint, for the ollama kind:
 *	  POST {base_url}/api/embed {"model", "input": [...], "dimensions"?,
 *	  "truncate"?, "keep_alive"?} -> {"model", "embeddings": [[...], ...],
 *	  "prompt_eval_count"} in input order.
 *
 * runs in: worker, backends (diagnostic functions), fuzz harness.  Pure
 * (providers/adapter.h).
 *
 * input_type is accepted and not sent: /api/embed has no task type (models
 * that want one, such as nomic-embed-text's "search_query: " prefix, take
 * it in the text, which is the caller's to write).
 *
 * Provider options: keep_alive (as for chat), headers, and "truncate", a
 * boolean sent as is: Ollama's default (true) cuts an input longer than the
 * model's context and embeds the rest; false makes such an input a 400.
 * Auth as for chat: none, or Authorization: Bearer <secret>.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "providers/adapter.h"
#include "providers/adapter_util.h"
#include "providers/embed_kinds.h"

static const char *const reserved_headers[] = {
	"content-type", "authorization", "content-length", "host", NULL
};

bool
ollama_build_embed_request(const LlmEmbedCall *call, const LlmTarget *target,
						   LlmHttpRequest *out, LlmError *err)
{
	StringInfo	buf = &out->body;
	const char *keep_alive;
	JsonbValue *truncate;
	bool		first = true;

	memset(out, 0, sizeof(*out));
	initStringInfo(&out->body);
	if (target->upstream_model == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "target has no upstream model");
	if (!provider_option_string(target, "keep_alive", &keep_alive, err))
		return false;
	truncate = json_get(&target->provider_options->root, "truncate");
	if (truncate != NULL && truncate->type != jbvBool)
	{
		provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
					  "provider option \"truncate\" must be a boolean");
		err->hint = pstrdup("Correct the option in the provider's options.");
		return false;
	}

	out->url = psprintf("%s/api/embed", provider_base_url(target));
	provider_add_header(out, "content-type", "application/json");
	if (target->secret != NULL)
		provider_add_header(out, "authorization", psprintf("Bearer %s", target->secret));
	if (!provider_option_headers(out, target, reserved_headers, err))
		return false;

	appendStringInfoChar(buf, '{');
	json_append_key(buf, &first, "model");
	json_append_string(buf, target->upstream_model);
	json_append_key(buf, &first, "input");
	appendStringInfoChar(buf, '[');
	for (int i = 0; i < call->ninputs; i++)
	{
		if (i > 0)
			appendStringInfoChar(buf, ',');
		json_append_string(buf, call->inputs[i]);
	}
	appendStringInfoChar(buf, ']');
	if (call->dimensions > 0)
	{
		json_append_key(buf, &first, "dimensions");
		appendStringInfo(buf, "%d", call->dimensions);
	}
	if (truncate != NULL)
	{
		json_append_key(buf, &first, "truncate");
		appendStringInfoString(buf, truncate->val.boolean ? "true" : "false");
	}
	if (keep_alive != NULL)
	{
		json_append_key(buf, &first, "keep_alive");
		json_append_string(buf, keep_alive);
	}
	appendStringInfoChar(buf, '}');
	return true;
}

bool
ollama_parse_embed_response(const LlmEmbedCall *call, const LlmTarget *target,
							const LlmHttpResult *res, LlmEmbedAnswer *out,
							LlmError *err)
{
	JsonbContainer *root;
	JsonbContainer *embeddings;
	const char *error;
	const char *model;
	char	   *why = NULL;
	int64		tokens;
	int			n;

	if (!embed_answer_object(res, target, out, &root, err))
		return false;

	/* {"error": "..."} with a 200: the server failed after the status line */
	error = json_get_cstring(root, "error");
	if (error != NULL)
	{
		provider_fail(err, ERRCODE_LLM_PROVIDER_INBAND_ERROR, LLM_FAIL_RETRYABLE,
					  "%s", provider_text(error, target->secret));
		err->http_status = (int) res->status;
		return false;
	}

	embeddings = json_get_array(root, "embeddings");
	if (!embed_answer_vectors(call, embeddings, "embeddings", res, target, out, err))
		return false;
	n = out->nvectors;
	for (int i = 0; i < n; i++)
	{
		JsonbContainer *values = json_value_container(json_array_elem(embeddings, i), true);

		if (values == NULL)
			return provider_malformed(err, res, "an \"embeddings\" element is not an array",
									  target->secret);
		if (!embed_read_vector(values, &out->dimension, &out->vectors[i], &why))
			return provider_malformed(err, res, why, target->secret);
	}
	if (!json_get_int64(root, "prompt_eval_count", &tokens) || tokens < 0)
		tokens = 0;
	out->input_tokens = tokens;
	model = json_get_cstring(root, "model");
	out->model = model ? pstrdup(model) : NULL;
	return embed_answer_check(call, out, res, target->secret, err);
}
