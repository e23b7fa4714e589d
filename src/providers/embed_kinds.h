/*-------------------------------------------------------------------------
 *
 * embed_kinds.h
 *	  Embeddings of the gemini, vertex and ollama kinds (gemini_embed.c,
 *	  vertex_embed.c, ollama_embed.c); they read vectors with embed.c's embed_read_vector.
 *
 * runs in: worker, backends (diagnostic functions), fuzz harness.  Pure
 * (providers/adapter.h).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_EMBED_KINDS_H
#define LLM_EMBED_KINDS_H

#include "providers/adapter.h"

/* Gemini batchEmbedContents takes at most 100 requests per call */
#define GEMINI_EMBED_BATCH_MAX	100

/*
 * Ollama documents no limit; a batch is one request under one timeout on
 * what is often a CPU-only server, and embed_batch_size can only lower the
 * kind's limit, so this is a middle value (design §23.1).
 */
#define OLLAMA_EMBED_BATCH_MAX	128

/* gemini_embed.c */
extern bool gemini_embed_task(const LlmEmbedCall *call, const char **task, LlmError *err);
extern bool gemini_embed_inband_error(JsonbContainer *root, const LlmTarget *target,
									  const LlmHttpResult *res, LlmError *err);
extern bool gemini_build_embed_request(const LlmEmbedCall *call, const LlmTarget *target,
									   LlmHttpRequest *out, LlmError *err);
extern bool gemini_parse_embed_response(const LlmEmbedCall *call, const LlmTarget *target,
										const LlmHttpResult *res, LlmEmbedAnswer *out,
										LlmError *err);

/* vertex_embed.c: Vertex AI :predict takes at most 250 instances */
#define VERTEX_EMBED_BATCH_MAX	250
extern bool vertex_build_embed_request(const LlmEmbedCall *call, const LlmTarget *target,
									   LlmHttpRequest *out, LlmError *err);
extern bool vertex_parse_embed_response(const LlmEmbedCall *call, const LlmTarget *target,
										const LlmHttpResult *res, LlmEmbedAnswer *out,
										LlmError *err);

/* ollama_embed.c */
extern bool ollama_build_embed_request(const LlmEmbedCall *call, const LlmTarget *target,
									   LlmHttpRequest *out, LlmError *err);
extern bool ollama_parse_embed_response(const LlmEmbedCall *call, const LlmTarget *target,
										const LlmHttpResult *res, LlmEmbedAnswer *out,
										LlmError *err);

#endif							/* LLM_EMBED_KINDS_H */
