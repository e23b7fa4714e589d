/*-------------------------------------------------------------------------
 *
 * bedrock_embed.c
 *	  Embeddings for the bedrock kind through InvokeModel
 *	  (POST {base_url}/model/{modelId}/invoke, SigV4-signed exactly like
 *	  Converse: bedrock_request.c's bedrock_sign()).  InvokeModel bodies are
 *	  the model vendor's own, so the family is chosen by the model id:
 *
 *	 amazon.titan-embed-text-v2*  {"inputText": t, "dimensions"?: n,
 *								  "normalize": true} -> {"embedding": [...],
 *								  "inputTextTokenCount": n}; ONE input per
 *								  request (embed_batch_max_for says 1)
 *	 cohere.embed-*				  {"texts": [...], "input_type":
 *								  "search_query"|"search_document",
 *								  "output_dimension"?: n} -> {"embeddings":
 *								  [[...]]} or {"embeddings": {"float":
 *								  [[...]]}}; up to 96 texts
 *
 * The id may carry a cross-region inference profile prefix ("us.", "eu.",
 * "global.") or be an ARN whose last path label is such an id.  Any other
 * model is refused before anything is sent (0A000, naming the families).
 *
 * The answer is read by its shape ("embedding" = Titan, "embeddings" =
 * Cohere), not the id: the diagnostic llm.adapter_parse_embed_response has
 * no model, and a shape check is what matters for safety anyway.  Tokens:
 * Titan's inputTextTokenCount; Cohere's body has none, so the
 * x-amzn-bedrock-input-token-count header Bedrock adds to InvokeModel
 * answers, else 0.
 *
 * runs in: worker, backends (diagnostic functions), fuzz harness.  Pure
 * (providers/adapter.h).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "providers/adapter.h"
#include "providers/adapter_util.h"
#include "providers/bedrock.h"

typedef enum BedrockEmbedFamily
{
	EMBED_FAMILY_NONE,
	EMBED_FAMILY_TITAN_V2,
	EMBED_FAMILY_COHERE
} BedrockEmbedFamily;

#define TITAN_V2_PREFIX "amazon.titan-embed-text-v2"
#define COHERE_PREFIX	"cohere.embed-"

static bool
starts_with(const char *s, const char *prefix)
{
	return strncmp(s, prefix, strlen(prefix)) == 0;
}

/*
 * The family of a model id: its last '/'-separated label (an ARN's
 * resource), with at most one lower-case inference-profile prefix
 * ("us.", "apac.", "global.") before the vendor.
 */
static BedrockEmbedFamily
embed_family(const char *model)
{
	const char *label;
	const char *p;

	if (model == NULL)
		return EMBED_FAMILY_NONE;
	label = strrchr(model, '/');
	label = label ? label + 1 : model;
	for (int pass = 0; pass < 2; pass++)
	{
		if (starts_with(label, TITAN_V2_PREFIX))
			return EMBED_FAMILY_TITAN_V2;
		if (starts_with(label, COHERE_PREFIX))
			return EMBED_FAMILY_COHERE;
		/* skip one profile prefix of lower-case letters */
		for (p = label; *p >= 'a' && *p <= 'z'; p++)
			;
		if (p == label || *p != '.')
			break;
		label = p + 1;
	}
	return EMBED_FAMILY_NONE;
}

/* Titan takes one text per request, Cohere 96; unknown: 1 (refused when built) */
int
bedrock_embed_batch_max_for(const LlmTarget *target)
{
	return embed_family(target->upstream_model) == EMBED_FAMILY_COHERE
		? BEDROCK_EMBED_BATCH_MAX : 1;
}

bool
bedrock_build_embed_request(const LlmEmbedCall *call, const LlmTarget *target,
							LlmHttpRequest *out, LlmError *err)
{
	StringInfo	buf = &out->body;
	BedrockEmbedFamily family;
	BedrockEndpoint ep;
	AwsCredential cred;
	bool		first = true;

	memset(out, 0, sizeof(*out));
	initStringInfo(&out->body);
	if (target->upstream_model == NULL || target->upstream_model[0] == '\0' ||
		strcmp(target->upstream_model, ".") == 0 || strcmp(target->upstream_model, "..") == 0)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "target has no valid upstream model id");
	family = embed_family(target->upstream_model);
	if (family == EMBED_FAMILY_NONE)
	{
		provider_fail(err, ERRCODE_FEATURE_NOT_SUPPORTED, LLM_FAIL_FATAL,
					  "bedrock embeddings support the model families " TITAN_V2_PREFIX "* and " COHERE_PREFIX "*, not \"%s\"",
					  target->upstream_model);
		err->hint = pstrdup("Route the embedding alias to an amazon.titan-embed-text-v2 or cohere.embed model id (an inference profile prefix or ARN ending in one is fine).");
		return false;
	}
	if (call->ninputs < 1 ||
		(family == EMBED_FAMILY_TITAN_V2 && call->ninputs != 1) ||
		call->ninputs > BEDROCK_EMBED_BATCH_MAX)
		return provider_fail(err, ERRCODE_PROGRAM_LIMIT_EXCEEDED, LLM_FAIL_FATAL,
							 family == EMBED_FAMILY_TITAN_V2
							 ? "model \"%s\" takes one input per request, not %d"
							 : "model \"%s\" takes at most 96 inputs per request, not %d",
							 target->upstream_model, call->ninputs);
	if (!bedrock_endpoint(target, &ep, err) || !bedrock_credential(target, &cred, err))
		return false;

	appendStringInfoChar(buf, '{');
	if (family == EMBED_FAMILY_TITAN_V2)
	{
		json_append_key(buf, &first, "inputText");
		json_append_string(buf, call->inputs[0]);
		if (call->dimensions > 0)
		{
			json_append_key(buf, &first, "dimensions");
			appendStringInfo(buf, "%d", call->dimensions);
		}
		/* unit vectors, as OpenAI's and Gemini's are: cosine == dot product */
		json_append_key(buf, &first, "normalize");
		appendStringInfoString(buf, "true");
	}
	else
	{
		json_append_key(buf, &first, "texts");
		appendStringInfoChar(buf, '[');
		for (int i = 0; i < call->ninputs; i++)
		{
			if (i > 0)
				appendStringInfoChar(buf, ',');
			json_append_string(buf, call->inputs[i]);
		}
		appendStringInfoChar(buf, ']');
		/* Cohere requires one; without a hint the text is most likely stored */
		json_append_key(buf, &first, "input_type");
		json_append_string(buf, call->input_type != NULL && strcmp(call->input_type, "query") == 0
						   ? "search_query" : "search_document");
		json_append_key(buf, &first, "embedding_types");
		appendStringInfoString(buf, "[\"float\"]");
		if (call->dimensions > 0)
		{
			/* embed v4; v3 models have one size and answer a ValidationException */
			json_append_key(buf, &first, "output_dimension");
			appendStringInfo(buf, "%d", call->dimensions);
		}
	}
	appendStringInfoChar(buf, '}');
	return bedrock_sign(target, &ep, &cred, "invoke", out, err);
}

static int64
header_tokens(const LlmHttpResult *res)
{
	const char *h = provider_header(res, "x-amzn-bedrock-input-token-count");
	int64		n = 0;

	if (h == NULL)
		return 0;
	for (; *h >= '0' && *h <= '9' && n < PG_INT64_MAX / 10 - 10; h++)
		n = n * 10 + (*h - '0');
	return *h == '\0' ? n : 0;
}

bool
bedrock_parse_embed_response(const LlmEmbedCall *call, const LlmTarget *target,
							 const LlmHttpResult *res, LlmEmbedAnswer *out,
							 LlmError *err)
{
	JsonbContainer *root;
	JsonbValue *embs;
	JsonbContainer *list;
	char	   *why = NULL;
	int			n;

	if (!embed_answer_object(res, target, out, &root, err))
		return false;
	out->model = target->upstream_model ? pstrdup(target->upstream_model) : NULL;

	if (json_get(root, "embedding") != NULL)
	{
		/* Titan: one vector */
		JsonbContainer *vec = json_get_array(root, "embedding");

		if (vec == NULL)
			return provider_malformed(err, res, "\"embedding\" is not an array", target->secret);
		if (call->ninputs != 1)
			return provider_malformed(err, res,
									  psprintf("1 embedding for %d inputs", call->ninputs),
									  target->secret);
		out->nvectors = 1;
		out->vectors = palloc0(sizeof(float4 *));
		if (!embed_read_vector(vec, &out->dimension, &out->vectors[0], &why))
			return provider_malformed(err, res, why, target->secret);
		if (!json_get_int64(root, "inputTextTokenCount", &out->input_tokens) ||
			out->input_tokens < 0)
			out->input_tokens = header_tokens(res);
		return embed_answer_check(call, out, res, target->secret, err);
	}

	embs = json_get(root, "embeddings");
	if (embs == NULL)
	{
		const char *msg = json_get_cstring(root, "message");

		if (msg == NULL)
			msg = json_get_cstring(root, "Message");
		if (msg != NULL)
		{
			/* an exception body with a 2xx status: retry, as for Converse */
			provider_fail(err, ERRCODE_LLM_PROVIDER_INBAND_ERROR, LLM_FAIL_RETRYABLE,
						  "%s", provider_text(msg, target->secret));
			err->http_status = (int) res->status;
			return false;
		}
		return provider_malformed(err, res, "no \"embedding\" or \"embeddings\" in the answer",
								  target->secret);
	}
	/* Cohere: a list of vectors, or by type when embedding_types was sent */
	list = json_value_container(embs, true);
	if (list == NULL)
	{
		JsonbContainer *bytype = json_value_container(embs, false);

		list = bytype ? json_get_array(bytype, "float") : NULL;
		if (list == NULL)
			return provider_malformed(err, res, "\"embeddings\" has no \"float\" array",
									  target->secret);
	}
	if (!embed_answer_vectors(call, list, "embeddings", res, target, out, err))
		return false;
	n = out->nvectors;
	for (int i = 0; i < n; i++)
	{
		JsonbContainer *vec = json_value_container(json_array_elem(list, i), true);

		if (vec == NULL)
			return provider_malformed(err, res, "an embedding is not an array", target->secret);
		if (!embed_read_vector(vec, &out->dimension, &out->vectors[i], &why))
			return provider_malformed(err, res, why, target->secret);
	}
	out->input_tokens = header_tokens(res);
	return embed_answer_check(call, out, res, target->secret, err);
}
