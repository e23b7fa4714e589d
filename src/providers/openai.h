/*-------------------------------------------------------------------------
 *
 * openai.h
 *	  Internal interface of the OpenAI Chat Completions adapter, split in
 *	  three: request building (openai_request.c), answer parsing
 *	  (openai_response.c) and error parsing (openai_error.c); openai.c
 *	  registers the two kinds that speak the protocol.
 *
 * runs in: worker (and backends, for the diagnostic adapter functions).
 * Pure, like every adapter (see providers/adapter.h).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_OPENAI_H
#define LLM_OPENAI_H

#include "providers/adapter.h"

/* openai_request.c: canonical request -> HTTP request, per kind */
extern bool openai_build_request(const LlmCall *call, const LlmTarget *target,
								 LlmHttpRequest *out, LlmError *err);
extern bool azure_build_request(const LlmCall *call, const LlmTarget *target,
								LlmHttpRequest *out, LlmError *err);
extern void openai_write_text_part(StringInfo parts, const char *text);
extern bool openai_endpoint(const LlmTarget *target, bool azure, const char *op,
							LlmHttpRequest *out, LlmError *err);

/* openai_embed.c: the embeddings endpoint (both kinds) */
#define OPENAI_EMBED_BATCH_MAX 2048
extern bool openai_build_embed_request(const LlmEmbedCall *call, const LlmTarget *target,
									   LlmHttpRequest *out, LlmError *err);
extern bool azure_build_embed_request(const LlmEmbedCall *call, const LlmTarget *target,
									  LlmHttpRequest *out, LlmError *err);
extern bool openai_parse_embed_response(const LlmEmbedCall *call, const LlmTarget *target,
										const LlmHttpResult *res, LlmEmbedAnswer *out,
										LlmError *err);

/* openai_format.c: output_config as response_format */
extern void openai_write_response_format(StringInfo buf, bool *first, JsonbContainer *req);

/* openai_response.c: 2xx answer -> canonical answer (both kinds) */
extern bool openai_parse_response(const LlmCall *call, const LlmTarget *target,
								  const LlmHttpResult *res, LlmAnswer *out,
								  LlmError *err);

/* openai_error.c: non-2xx answers, errors inside a 2xx body, and a helper */
extern void openai_parse_error(const LlmHttpResult *res, LlmError *err);
extern bool openai_inband_error(JsonbContainer *root, const LlmTarget *target,
								const LlmHttpResult *res, LlmError *err);
extern char *openai_scalar_text(JsonbValue *v);

#endif							/* LLM_OPENAI_H */
