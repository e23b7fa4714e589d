/*-------------------------------------------------------------------------
 *
 * openai_embed.c
 *	  OpenAI's embeddings endpoint, for the openai and azure_openai kinds:
 *	  POST {base_url}/embeddings (Azure: the deployment URL with
 *	  api-version), {"model", "input": [...], "encoding_format": "float",
 *	  "dimensions"} -> {"data": [{"index", "embedding": [...]}], "model",
 *	  "usage": {"prompt_tokens"}}.
 *
 * runs in: worker, backends (diagnostic functions), fuzz harness.  Pure
 * (providers/adapter.h).
 *
 * The protocol has no input type: input_type is accepted and not sent
 * (OpenAI's models embed queries and documents alike).  data[] is put back
 * in input order by its "index": the API does not promise the order.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <math.h>

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "providers/adapter.h"
#include "providers/adapter_util.h"
#include "providers/openai.h"
#include "utils/builtins.h"

static bool
build_embed(const LlmEmbedCall *call, const LlmTarget *target, bool azure,
			LlmHttpRequest *out, LlmError *err)
{
	StringInfo	buf = &out->body;
	bool		first = true;
	int			i;

	memset(out, 0, sizeof(*out));
	initStringInfo(&out->body);
	if (target->upstream_model == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "target has no upstream model");
	if (!openai_endpoint(target, azure, "embeddings", out, err))
		return false;

	appendStringInfoChar(buf, '{');
	json_append_key(buf, &first, "model");
	json_append_string(buf, target->upstream_model);
	json_append_key(buf, &first, "input");
	appendStringInfoChar(buf, '[');
	for (i = 0; i < call->ninputs; i++)
	{
		if (i > 0)
			appendStringInfoChar(buf, ',');
		json_append_string(buf, call->inputs[i]);
	}
	appendStringInfoChar(buf, ']');
	json_append_key(buf, &first, "encoding_format");
	json_append_string(buf, "float");
	if (call->dimensions > 0)
	{
		json_append_key(buf, &first, "dimensions");
		appendStringInfo(buf, "%d", call->dimensions);
	}
	appendStringInfoChar(buf, '}');
	return true;
}

bool
openai_build_embed_request(const LlmEmbedCall *call, const LlmTarget *target,
						   LlmHttpRequest *out, LlmError *err)
{
	return build_embed(call, target, false, out, err);
}

bool
azure_build_embed_request(const LlmEmbedCall *call, const LlmTarget *target,
						  LlmHttpRequest *out, LlmError *err)
{
	return build_embed(call, target, true, out, err);
}

bool
openai_parse_embed_response(const LlmEmbedCall *call, const LlmTarget *target,
							const LlmHttpResult *res, LlmEmbedAnswer *out,
							LlmError *err)
{
	JsonbContainer *root;
	JsonbContainer *data;
	JsonbContainer *usage;
	char	   *why = NULL;
	int			n;
	int			i;

	if (!embed_answer_object(res, target, out, &root, err))
		return false;
	if (json_get(root, "error") != NULL && json_get(root, "data") == NULL)
		return openai_inband_error(root, target, res, err);
	data = json_get_array(root, "data");
	if (!embed_answer_vectors(call, data, "data", res, target, out, err))
		return false;
	n = out->nvectors;
	for (i = 0; i < n; i++)
	{
		JsonbContainer *item = json_value_container(json_array_elem(data, i), false);
		JsonbContainer *vec;
		int64		index;

		if (item == NULL || !json_get_int64(item, "index", &index))
			return provider_malformed(err, res, "a \"data\" element has no integer \"index\"",
									  target->secret);
		if (index < 0 || index >= n || out->vectors[index] != NULL)
			return provider_malformed(err, res,
									  psprintf("\"index\" " INT64_FORMAT " is out of range or repeated", index),
									  target->secret);
		vec = json_get_array(item, "embedding");
		if (vec == NULL)
			return provider_malformed(err, res, "a \"data\" element has no \"embedding\" array (encoding_format must be float)",
									  target->secret);
		if (!embed_read_vector(vec, &out->dimension, &out->vectors[index], &why))
			return provider_malformed(err, res, why, target->secret);
	}
	usage = json_get_object(root, "usage");
	if (usage == NULL || !json_get_int64(usage, "prompt_tokens", &out->input_tokens) ||
		out->input_tokens < 0)
		out->input_tokens = 0;
	if (json_get_cstring(root, "model") != NULL)
		out->model = pstrdup(json_get_cstring(root, "model"));
	return embed_answer_check(call, out, res, target->secret, err);
}
