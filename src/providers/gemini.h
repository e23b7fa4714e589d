/*-------------------------------------------------------------------------
 *
 * gemini.h
 *	  Internal interface of the Gemini generateContent protocol, split in
 *	  four: the request body (gemini_request.c), JSON Schema translated to
 *	  Gemini's schema subset (gemini_schema.c), answers and errors
 *	  (gemini_response.c), and the "gemini" kind's URL, auth and
 *	  registration (gemini.c).
 *
 * runs in: worker (and backends, for the diagnostic adapter functions).
 * Pure, like every adapter (see providers/adapter.h).
 *
 * The body and the answer are the same on the Gemini API and on Vertex AI;
 * only the URL and the auth header differ.  So the builder takes both as
 * parameters (gemini_build_http), and a Vertex kind calls it with its own
 * URL and "authorization: Bearer <token>".
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_GEMINI_H
#define LLM_GEMINI_H

#include "providers/adapter.h"

/*
 * Tool ids Gemini did not give are synthesized as GEMINI_TOOL_ID_PREFIX +
 * responseId + "_" + part index; the request side recognises the prefix
 * and does not send such an id back (Gemini never saw it).
 */
#define GEMINI_TOOL_ID_PREFIX	"gemini_"

/*
 * A Gemini thoughtSignature travels in a canonical thinking block whose
 * signature is this prefix + the opaque value, so the request side can
 * tell it from an Anthropic signature (dropped: Gemini cannot verify it).
 */
#define GEMINI_SIGNATURE_PREFIX "gemini:"

/* gemini.c: the URL and header pieces the embeddings request shares */
extern const char *const gemini_reserved_headers[];
extern char *gemini_path_encode(const char *s);

/* gemini_request.c */
extern bool gemini_write_body(const LlmCall *call, const LlmTarget *target,
							  StringInfo body, LlmError *err);
extern bool gemini_build_http(const LlmCall *call, const LlmTarget *target,
							  const char *url, const char *auth_header,
							  const char *auth_value,
							  const char *const *reserved_headers,
							  LlmHttpRequest *out, LlmError *err);
extern bool gemini_build_request(const LlmCall *call, const LlmTarget *target,
								 LlmHttpRequest *out, LlmError *err);

/* gemini_schema.c: JSON Schema -> Gemini Schema (OpenAPI 3.0 subset) */
extern bool gemini_write_schema(StringInfo buf, JsonbValue *schema,
								const LlmTarget *target, const char *where,
								LlmError *err);
extern bool gemini_schema_is_empty_object(JsonbValue *schema);

/* gemini_response.c */
extern bool gemini_parse_response(const LlmCall *call, const LlmTarget *target,
								  const LlmHttpResult *res, LlmAnswer *out,
								  LlmError *err);
extern void gemini_parse_error(const LlmHttpResult *res, LlmError *err);

#endif							/* LLM_GEMINI_H */
