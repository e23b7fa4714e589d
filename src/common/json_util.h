/*-------------------------------------------------------------------------
 *
 * json_util.h
 *	  Small jsonb helpers shared by the adapters, validation and the worker.
 *
 * runs in: backend and worker.
 *
 * Reading goes through PostgreSQL's jsonb; writing JSON text goes through
 * escape_json() and JsonbToCString(), so no JSON is produced by hand.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_JSON_UTIL_H
#define LLM_JSON_UTIL_H

#include "lib/stringinfo.h"
#include "utils/jsonb.h"

/* Parse JSON text; on invalid input return NULL and set *errmsg (no ERROR). */
extern Jsonb *json_parse_safe(const char *text, size_t len, char **errmsg);
extern Jsonb *jsonb_from_cstring(const char *text);	/* text we built: a mistake in it is an ERROR */

/* Object member lookup; NULL when absent or c is not an object. */
extern JsonbValue *json_get(JsonbContainer *c, const char *key);
extern const char *json_get_cstring(JsonbContainer *c, const char *key);
extern bool json_get_int64(JsonbContainer *c, const char *key, int64 *out);
extern bool json_get_float8(JsonbContainer *c, const char *key, double *out);
extern JsonbContainer *json_get_object(JsonbContainer *c, const char *key);
extern JsonbContainer *json_get_array(JsonbContainer *c, const char *key);

/* Value helpers */
extern char *json_value_cstring(JsonbValue *v);	/* string value, else NULL */
extern JsonbContainer *json_value_container(JsonbValue *v, bool want_array);
extern int	json_array_size(JsonbContainer *arr);
extern JsonbValue *json_array_elem(JsonbContainer *arr, int i);

/* Writing JSON text */
extern void json_append_value(StringInfo buf, JsonbValue *v);
extern void json_append_container(StringInfo buf, JsonbContainer *c);
extern void json_append_string(StringInfo buf, const char *s);
extern void json_append_key(StringInfo buf, bool *first, const char *key);

#endif							/* LLM_JSON_UTIL_H */
