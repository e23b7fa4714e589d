/*-------------------------------------------------------------------------
 *
 * json_schema.h
 *	  A small JSON Schema validator for llm_extract: the keywords that say
 *	  what an extracted object must look like, errors as values.
 *
 * runs in: backend.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_JSON_SCHEMA_H
#define LLM_JSON_SCHEMA_H

#include "utils/jsonb.h"

/* deepest schema (containers within containers) we accept */
#define JSON_SCHEMA_MAX_DEPTH	64
/* deepest answer document we parse */
#define JSON_ANSWER_MAX_DEPTH	128

extern bool json_schema_check(Jsonb *schema, char **problem);
extern bool json_schema_validate(JsonbContainer *schema, Jsonb *doc, char **violation);
extern Jsonb *json_schema_parse_answer(const char *text, size_t len, char **violation);

#endif							/* LLM_JSON_SCHEMA_H */
