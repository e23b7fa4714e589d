/*-------------------------------------------------------------------------
 *
 * openai_format.c
 *	  Structured output for the OpenAI Chat Completions adapter: the
 *	  canonical output_config as response_format (json_schema).
 *
 * runs in: worker (and backends, for the diagnostic adapter functions).
 * Pure, like every adapter (see providers/adapter.h).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/json_util.h"
#include "providers/openai.h"

/* deepest schema we inspect for strict mode; deeper is sent with strict false */
#define STRICT_MAX_DEPTH 64

/*
 * Can this schema go with "strict": true?  OpenAI's strict mode wants every
 * object to say additionalProperties false and list all its properties in
 * required.  Recursion follows the schema's own nesting (properties,
 * items, anyOf, $defs), bounded by STRICT_MAX_DEPTH.
 */
static bool
strict_compatible(JsonbContainer *schema, int depth)
{
	static const char *const lists[] = {"anyOf", "allOf", "oneOf", "prefixItems"};
	static const char *const maps[] = {"properties", "$defs", "definitions"};
	JsonbContainer *props;
	JsonbValue *extra;
	JsonbContainer *required;
	const char *type = json_get_cstring(schema, "type");
	int			i;
	int			k;

	if (depth > STRICT_MAX_DEPTH)
		return false;
	props = json_get_object(schema, "properties");
	if ((type != NULL && strcmp(type, "object") == 0) || props != NULL)
	{
		JsonbIterator *it;
		JsonbIteratorToken tok;
		JsonbValue	key;
		JsonbValue	val;

		extra = json_get(schema, "additionalProperties");
		if (extra == NULL || extra->type != jbvBool || extra->val.boolean)
			return false;
		required = json_get_array(schema, "required");
		if (props != NULL)
		{
			it = JsonbIteratorInit(props);
			while ((tok = JsonbIteratorNext(&it, &key, true)) != WJB_DONE)
			{
				bool		listed = false;

				if (tok != WJB_KEY)
					continue;
				(void) JsonbIteratorNext(&it, &val, true);
				for (i = 0; i < json_array_size(required) && !listed; i++)
				{
					JsonbValue *r = json_array_elem(required, i);

					listed = r->type == jbvString && r->val.string.len == key.val.string.len &&
						memcmp(r->val.string.val, key.val.string.val, key.val.string.len) == 0;
				}
				if (!listed)
					return false;
			}
		}
	}
	for (k = 0; k < lengthof(maps); k++)
	{
		JsonbContainer *m = json_get_object(schema, maps[k]);
		JsonbIterator *it;
		JsonbIteratorToken tok;
		JsonbValue	v;

		if (m == NULL)
			continue;
		it = JsonbIteratorInit(m);
		while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
		{
			JsonbContainer *sub;

			if (tok != WJB_VALUE)
				continue;
			sub = json_value_container(&v, false);
			if (sub != NULL && !strict_compatible(sub, depth + 1))
				return false;
		}
	}
	for (k = 0; k < lengthof(lists); k++)
	{
		JsonbContainer *l = json_get_array(schema, lists[k]);

		for (i = 0; i < json_array_size(l); i++)
		{
			JsonbContainer *sub = json_value_container(json_array_elem(l, i), false);

			if (sub != NULL && !strict_compatible(sub, depth + 1))
				return false;
		}
	}
	if (json_get_object(schema, "items") != NULL &&
		!strict_compatible(json_get_object(schema, "items"), depth + 1))
		return false;
	return true;
}

/*
 * output_config.format (json_schema) -> response_format.  strict is true
 * only for a schema strict mode accepts; any other schema is sent with
 * strict false rather than refused (the model is still asked for it, and
 * llm_extract validates the answer itself).
 */
void
openai_write_response_format(StringInfo buf, bool *first, JsonbContainer *req)
{
	JsonbContainer *format = json_get_object(json_get_object(req, "output_config"), "format");
	JsonbValue *schema = json_get(format, "schema");
	JsonbContainer *s = schema ? json_value_container(schema, false) : NULL;

	if (s == NULL)
		return;
	json_append_key(buf, first, "response_format");
	appendStringInfoString(buf, "{\"type\":\"json_schema\",\"json_schema\":{\"name\":\"output\",\"schema\":");
	json_append_value(buf, schema);
	appendStringInfo(buf, ",\"strict\":%s}}", strict_compatible(s, 0) ? "true" : "false");
}

