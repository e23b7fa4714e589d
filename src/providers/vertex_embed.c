/*-------------------------------------------------------------------------
 *
 * vertex_embed.c
 *	  Embeddings on Vertex AI (kind "vertex"): POST {model URL}:predict,
 *	  {"instances": [{"content", "task_type"}, ...], "parameters":
 *	  {"autoTruncate": false, "outputDimensionality"}} ->
 *	  {"predictions": [{"embeddings": {"values": [...], "statistics":
 *	  {"token_count"}}}, ...]}, authorised like chat with the worker's
 *	  access token (vertex.c, worker/vertex_token.c).
 *
 * runs in: worker, backends (diagnostic functions), fuzz harness.  Pure
 * (providers/adapter.h).
 *
 * input_type maps to the task type as on the Gemini API
 * (gemini_embed_task).  autoTruncate is false: an input longer than the
 * model takes is an error (LL004), never a vector of part of it, as with
 * the other kinds.  Tokens are the sum of the predictions'
 * statistics.token_count; an answer without them leaves the count to the
 * worker's estimate (LLM_EMBED_TOKENS_UNKNOWN), as for Gemini.  Some
 * models take one instance per request (gemini-embedding-001): their
 * provider sets the option embed_batch_size = 1.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "providers/adapter.h"
#include "providers/adapter_util.h"
#include "providers/embed_kinds.h"
#include "providers/vertex.h"

bool
vertex_build_embed_request(const LlmEmbedCall *call, const LlmTarget *target,
						   LlmHttpRequest *out, LlmError *err)
{
	StringInfo	buf = &out->body;
	const char *task;
	bool		first = true;
	bool		first_p = true;

	memset(out, 0, sizeof(*out));
	initStringInfo(&out->body);
	if (!gemini_embed_task(call, &task, err) ||
		!vertex_model_url(target, "predict", &out->url, err))
		return false;
	provider_add_header(out, "content-type", "application/json");
	provider_add_header(out, "authorization", psprintf("Bearer %s", target->secret));
	if (!provider_option_headers(out, target, vertex_reserved_headers, err))
		return false;

	appendStringInfoChar(buf, '{');
	json_append_key(buf, &first, "instances");
	appendStringInfoChar(buf, '[');
	for (int i = 0; i < call->ninputs; i++)
	{
		bool		first_i = true;

		if (i > 0)
			appendStringInfoChar(buf, ',');
		appendStringInfoChar(buf, '{');
		json_append_key(buf, &first_i, "content");
		json_append_string(buf, call->inputs[i]);
		if (task != NULL)
		{
			json_append_key(buf, &first_i, "task_type");
			json_append_string(buf, task);
		}
		appendStringInfoChar(buf, '}');
	}
	appendStringInfoChar(buf, ']');
	json_append_key(buf, &first, "parameters");
	appendStringInfoChar(buf, '{');
	json_append_key(buf, &first_p, "autoTruncate");
	appendStringInfoString(buf, "false");
	if (call->dimensions > 0)
	{
		json_append_key(buf, &first_p, "outputDimensionality");
		appendStringInfo(buf, "%d", call->dimensions);
	}
	appendStringInfoString(buf, "}}");
	return true;
}

bool
vertex_parse_embed_response(const LlmEmbedCall *call, const LlmTarget *target,
							const LlmHttpResult *res, LlmEmbedAnswer *out,
							LlmError *err)
{
	JsonbContainer *root;
	JsonbContainer *predictions;
	char	   *why = NULL;
	int64		tokens = 0;
	bool		counted = true;
	int			n;

	if (!embed_answer_object(res, target, out, &root, err))
		return false;
	if (json_get_object(root, "error") != NULL && json_get(root, "predictions") == NULL)
		return gemini_embed_inband_error(root, target, res, err);

	predictions = json_get_array(root, "predictions");
	if (!embed_answer_vectors(call, predictions, "predictions", res, target, out, err))
		return false;
	n = out->nvectors;
	for (int i = 0; i < n; i++)
	{
		JsonbContainer *p = json_value_container(json_array_elem(predictions, i), false);
		JsonbContainer *emb = p ? json_get_object(p, "embeddings") : NULL;
		JsonbContainer *values = emb ? json_get_array(emb, "values") : NULL;
		int64		count;

		if (values == NULL)
			return provider_malformed(err, res, "a prediction has no \"embeddings\".\"values\" array",
									  target->secret);
		if (!embed_read_vector(values, &out->dimension, &out->vectors[i], &why))
			return provider_malformed(err, res, why, target->secret);
		if (json_get_int64(json_get_object(emb, "statistics"), "token_count", &count) && count >= 0)
			tokens += count;
		else
			counted = false;
	}
	out->input_tokens = counted ? tokens : LLM_EMBED_TOKENS_UNKNOWN;
	out->model = NULL;			/* the answer does not name it */
	return embed_answer_check(call, out, res, target->secret, err);
}
