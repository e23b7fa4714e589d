/*-------------------------------------------------------------------------
 *
 * gemini.c
 *	  Adapter for the Gemini API's generateContent protocol
 *	  (POST {base_url}/v1beta/models/{model}:generateContent, x-goog-api-key).
 *
 * runs in: worker (and backends, for the diagnostic adapter functions).
 *
 * The adapter is in four files: gemini_request.c (the request body),
 * gemini_schema.c (JSON Schema to Gemini's Schema), gemini_response.c
 * (parse_response and parse_error) and this one, which puts the kind's
 * URL and auth around the body and registers the kind.
 * Vertex AI speaks the same protocol: it reuses gemini_build_http() with
 * its own URL and auth, and the parsers unchanged.
 *
 * Canonical -> Gemini, the choices made here:
 *	 - system (a string or text blocks) -> systemInstruction.parts.
 *	 - messages -> contents, role user -> "user", assistant -> "model",
 *	   one content per message, blocks in order.
 *	 - text -> {"text"}; a base64 image -> inlineData.  A url image is
 *	   refused: the Gemini API only reads Files API or gs:// URIs with a
 *	   declared MIME type, and the worker does not fetch URLs for callers.
 *	 - tool_use -> functionCall {name, args}; tool_result -> functionResponse
 *	   {name, response: {"output": text}} ({"error": text} when is_error).
 *	   Gemini matches a response to its call by name, so the name is the
 *	   one of the tool_use with that id earlier in the history; an id that
 *	   matches nothing is an invalid request (LL004, fatal).  Ids are sent
 *	   back as functionCall.id / functionResponse.id, except those this
 *	   adapter synthesized (GEMINI_TOOL_ID_PREFIX), which Gemini never saw.
 *	 - thinking blocks whose signature is GEMINI_SIGNATURE_PREFIX + value
 *	   carry a Gemini thoughtSignature: with text they go back as a thought
 *	   part, empty they put the signature on the next part (as Gemini gave
 *	   it).  Other thinking and redacted_thinking blocks are dropped: their
 *	   signatures only mean something to Anthropic.
 *	 - tools -> one tools[].functionDeclarations; input_schema through
 *	   gemini_schema.c (parameters omitted for a tool without arguments).
 *	 - tool_choice auto/any/tool/none -> toolConfig.functionCallingConfig
 *	   AUTO / ANY / ANY + allowedFunctionNames / NONE, sent only with tools;
 *	   disable_parallel_tool_use has no Gemini equivalent and is dropped.
 *	 - max_tokens, temperature, top_p, top_k, stop_sequences ->
 *	   generationConfig maxOutputTokens, temperature, topP, topK,
 *	   stopSequences.
 *	 - thinking {"type":"enabled","budget_tokens":N} -> thinkingConfig
 *	   {thinkingBudget: N, includeThoughts: true}; {"type":"disabled"} ->
 *	   {thinkingBudget: 0}; {"type":"adaptive"} -> {thinkingBudget: -1
 *	   (dynamic), includeThoughts: true}.
 *	 - output_config.format {"type":"json_schema","schema":S} ->
 *	   responseMimeType "application/json" + responseSchema (S translated).
 *	 - metadata is dropped (Gemini has no per-request user field).
 *
 * Provider options:
 *	 api_version	 URL version segment (default v1beta)
 *	 schema_mode	 "openapi" (default): schemas translated to the Schema
 *					 subset every Gemini model accepts; "json_schema": sent
 *					 unchanged as parametersJsonSchema / responseJsonSchema
 *					 (newer models, full JSON Schema)
 *	 safety_settings an array copied to safetySettings
 *	 headers		 extra request headers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "common/llm_errors.h"
#include "providers/adapter.h"
#include "providers/adapter_util.h"
#include "providers/embed_kinds.h"
#include "providers/gemini.h"

#define GEMINI_DEFAULT_API_VERSION "v1beta"

const char *const gemini_reserved_headers[] = {
	"content-type", "x-goog-api-key", "authorization", "content-length", "host", NULL
};

const LlmProvider llm_provider_gemini = {
	"gemini",					/* kind */
	"a Gemini API key (AIza...), sent as x-goog-api-key",	/* auth_hint */
	gemini_build_request,		/* build_request */
	gemini_parse_response,		/* parse_response */
	gemini_parse_error,			/* parse_error */
	gemini_build_embed_request, /* build_embed_request */
	gemini_parse_embed_response,	/* parse_embed_response */
	GEMINI_EMBED_BATCH_MAX		/* embed_batch_max */
};

/*
 * The HTTP request around the body: a kind that speaks this protocol gives
 * its URL and its auth header (value NULL: none).
 */
bool
gemini_build_http(const LlmCall *call, const LlmTarget *target, const char *url,
				  const char *auth_header, const char *auth_value,
				  const char *const *reserved_headers, LlmHttpRequest *out,
				  LlmError *err)
{
	memset(out, 0, sizeof(*out));
	initStringInfo(&out->body);
	out->url = (char *) url;
	provider_add_header(out, "content-type", "application/json");
	if (auth_value != NULL)
		provider_add_header(out, auth_header, auth_value);
	if (!provider_option_headers(out, target, reserved_headers, err))
		return false;
	return gemini_write_body(call, target, &out->body, err);
}

/* Percent-encode a URL path segment (RFC 3986 unreserved kept). */
char *
gemini_path_encode(const char *s)
{
	StringInfoData buf;

	initStringInfo(&buf);
	for (const unsigned char *p = (const unsigned char *) s; *p; p++)
	{
		if (isalnum(*p) || strchr("-._~", *p) != NULL)
			appendStringInfoChar(&buf, (char) *p);
		else
			appendStringInfo(&buf, "%%%02X", *p);
	}
	return buf.data;
}

/* kind "gemini": POST {base_url}/{api_version}/models/{model}:generateContent */
bool
gemini_build_request(const LlmCall *call, const LlmTarget *target,
					 LlmHttpRequest *out, LlmError *err)
{
	const char *version;

	if (target->upstream_model == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "target has no upstream model");
	if (!provider_option_string(target, "api_version", &version, err))
		return false;
	return gemini_build_http(call, target,
							 psprintf("%s/%s/models/%s:generateContent",
									  provider_base_url(target),
									  gemini_path_encode(version ? version : GEMINI_DEFAULT_API_VERSION),
									  gemini_path_encode(target->upstream_model)),
							 "x-goog-api-key", target->secret,
							 gemini_reserved_headers, out, err);
}
