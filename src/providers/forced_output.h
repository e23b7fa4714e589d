/*-------------------------------------------------------------------------
 *
 * forced_output.h
 *	  Structured output for providers without a native JSON-schema mode:
 *	  the schema becomes a tool the request forces, and the tool call in
 *	  the answer becomes the answer's text.
 *
 * runs in: worker (and backends, for the diagnostic adapter functions).
 * Pure, like the adapters that call it (see providers/adapter.h).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_FORCED_OUTPUT_H
#define LLM_FORCED_OUTPUT_H

#include "providers/adapter.h"

/* the tool the request forces; a caller's tool of this name is refused */
#define FORCED_OUTPUT_TOOL	"json_output"

extern bool forced_output_request(Jsonb *request, Jsonb **out, LlmError *err);
extern bool forced_output_answer(LlmAnswer *answer, LlmError *err);

#endif							/* LLM_FORCED_OUTPUT_H */
