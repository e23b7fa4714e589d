/*-------------------------------------------------------------------------
 *
 * vertex.h
 *	  Kind "vertex": the model URL shared by chat and embeddings, and the
 *	  pure half of the token exchange, reading the OAuth token endpoint's
 *	  answer (vertex.c), so that the fuzz harness can drive it; the
 *	  worker's half is worker/vertex_token.c.
 *
 * runs in: worker (and the fuzz harness).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_VERTEX_H
#define LLM_VERTEX_H

#include "providers/adapter.h"

/* vertex.c: the URL of a model method, and the headers options may not set */
extern bool vertex_model_url(const LlmTarget *target, const char *method, char **url,
							 LlmError *err);
extern const char *const vertex_reserved_headers[];

extern bool vertex_parse_token_answer(long status, const char *body, size_t len,
									  const char *scrub1, const char *scrub2,
									  char **token, int64 *expires_in, char **why);

#endif							/* LLM_VERTEX_H */
