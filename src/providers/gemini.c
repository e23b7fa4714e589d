/*-------------------------------------------------------------------------
 *
 * gemini.c
 *	  Adapter for the Gemini API's generateContent protocol
 *	  (POST {base_url}/v1beta/models/{model}:generateContent, x-goog-api-key).
 *
 * runs in: worker (and backends, for the diagnostic adapter functions).
 *
 * The adapter is in three files: gemini_request.c (build_request and the
 * choices of the translation), gemini_schema.c (JSON Schema to Gemini's
 * Schema), gemini_response.c (parse_response and parse_error); this one
 * registers the kind.  Vertex AI speaks the same protocol: it reuses
 * gemini_build_http() with its own URL and auth, and the parsers unchanged.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "providers/adapter.h"
#include "providers/gemini.h"

const LlmProvider llm_provider_gemini = {
	"gemini",					/* kind */
	"a Gemini API key (AIza...), sent as x-goog-api-key",	/* auth_hint */
	gemini_build_request,		/* build_request */
	gemini_parse_response,		/* parse_response */
	gemini_parse_error			/* parse_error */
};
