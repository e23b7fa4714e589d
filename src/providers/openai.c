/*-------------------------------------------------------------------------
 *
 * openai.c
 *	  Adapter for the OpenAI Chat Completions protocol, used by OpenAI and
 *	  every compatible server (vLLM, llama.cpp, Ollama /v1, Together, Groq,
 *	  Mistral, OpenRouter), and for Azure OpenAI.
 *
 * runs in: worker (and backends, for the diagnostic adapter functions).
 *
 * The adapter is in three files: openai_request.c (build_request),
 * openai_response.c (parse_response), openai_error.c (parse_error and
 * errors inside a 2xx body); this one registers the kinds.
 *
 * Two kinds share these functions and differ only in an OpenAiFlavour:
 *	 openai			POST {base_url}/chat/completions, authorization: Bearer
 *	 azure_openai	POST {base_url}/openai/deployments/{model}/chat/completions
 *					?api-version=..., api-key header
 *
 * Canonical (Messages) -> Chat Completions, the choices made here:
 *	 - system (string or text blocks, joined by a blank line) becomes the
 *	   first message, role "system".
 *	 - A message whose remaining blocks are all text is sent as one string
 *	   (texts joined by a blank line): every compatible server accepts a
 *	   string, not all accept content parts.  With an image it is sent as
 *	   parts.
 *	 - tool_result blocks become "tool" messages, in order, before the rest
 *	   of their user message.  Their content is a string (text blocks
 *	   joined); an error result is prefixed "Error: ", because the protocol
 *	   has no error flag and the model must still learn the call failed.
 *	 - tool_use blocks become tool_calls with the input as a JSON string.
 *	 - thinking and redacted_thinking blocks are dropped: their signatures
 *	   only mean something to Anthropic.  cache_control is dropped (OpenAI
 *	   caches prefixes by itself), as are top_k and thinking.
 *	 - tool_choice and parallel_tool_calls are only sent with tools, since
 *	   OpenAI rejects them otherwise.
 *	 - Blocks the protocol cannot carry (document, server tools, images in
 *	   a tool result, ...) fail the request with FEATURE_NOT_SUPPORTED.
 *
 * Provider options:
 *	 max_tokens_field	"max_completion_tokens" (default; the only one
 *						OpenAI reasoning models accept) or "max_tokens"
 *						(what many compatible servers still expect)
 *	 organization, project	OpenAI-Organization / OpenAI-Project headers
 *	 api_version		Azure only: api-version query value (2024-10-21)
 *	 headers			extra request headers
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "providers/adapter.h"
#include "providers/openai.h"

const LlmProvider llm_provider_openai = {
	"openai",					/* kind */
	"an API key sent as \"Authorization: Bearer\" (sk-... for OpenAI; any value, or none, for a local server)",	/* auth_hint */
	openai_build_request,		/* build_request */
	openai_parse_response,		/* parse_response */
	openai_parse_error,			/* parse_error */
	openai_build_embed_request, /* build_embed_request */
	openai_parse_embed_response,	/* parse_embed_response */
	OPENAI_EMBED_BATCH_MAX		/* embed_batch_max */
};

const LlmProvider llm_provider_azure_openai = {
	"azure_openai",				/* kind */
	"an Azure OpenAI resource key, sent as api-key",	/* auth_hint */
	azure_build_request,		/* build_request */
	openai_parse_response,		/* parse_response */
	openai_parse_error,			/* parse_error */
	azure_build_embed_request,	/* build_embed_request */
	openai_parse_embed_response,	/* parse_embed_response */
	OPENAI_EMBED_BATCH_MAX		/* embed_batch_max */
};
