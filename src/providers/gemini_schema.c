/*-------------------------------------------------------------------------
 *
 * gemini_schema.c
 *	  JSON Schema (tool input_schema, output_config.format.schema)
 *	  translated into Gemini's Schema object, a subset of OpenAPI 3.0.
 *
 * runs in: worker (and backends, for the diagnostic adapter functions).
 * Pure, like every adapter (see providers/adapter.h).
 *
 * Three lists decide what happens to each keyword:
 *	 kept		type, format, title, description, nullable, enum (strings),
 *				properties, required, items, minItems, maxItems, minLength,
 *				maxLength, pattern, minimum, maximum, minProperties,
 *				maxProperties, anyOf, default, example, propertyOrdering
 *	 rewritten	"type": ["x", "null"] -> "type": "x", "nullable": true;
 *				"const": "s" -> "enum": ["s"]
 *	 refused	$ref, $defs, definitions, allOf, oneOf, not, if, then, else,
 *				prefixItems, dependentSchemas, a tuple "items" array, a
 *				type list of two non-null types, a non-string enum or const:
 *				they change which values are valid and Gemini has no way to
 *				say them, so sending a looser schema would be a silent lie.
 *	 dropped	everything else ($schema, $id, $comment, additionalProperties,
 *				examples, exclusiveMinimum, multipleOf, uniqueItems, ...):
 *				annotations, or constraints whose loss only loosens the
 *				schema.  llm_extract validates the answer against the full
 *				schema anyway.
 * A refusal is FEATURE_NOT_SUPPORTED (fatal: no retry can help) and names
 * the keyword and where it was.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "providers/adapter.h"
#include "providers/adapter_util.h"
#include "providers/gemini.h"

/* deeper schemas are refused rather than recursed into */
#define GEMINI_SCHEMA_MAX_DEPTH 32

static const char *const kept_keys[] = {
	"type", "format", "title", "description", "nullable", "enum", "properties",
	"required", "items", "minItems", "maxItems", "minLength", "maxLength",
	"pattern", "minimum", "maximum", "minProperties", "maxProperties", "anyOf",
	"default", "example", "propertyOrdering", NULL
};

static const char *const refused_keys[] = {
	"$ref", "$defs", "definitions", "allOf", "oneOf", "not", "if", "then",
	"else", "prefixItems", "dependentSchemas", NULL
};

static bool
in_list(const char *const *list, const char *key)
{
	for (int i = 0; list[i] != NULL; i++)
		if (strcmp(list[i], key) == 0)
			return true;
	return false;
}

static bool
refuse(LlmError *err, const LlmTarget *target, const char *where, const char *what)
{
	return provider_unsupported(err, target,
								psprintf("JSON Schema %s (at %s)", what, where));
}

/* true when every element of an array is a string */
static bool
all_strings(JsonbContainer *arr)
{
	for (int i = 0; i < json_array_size(arr); i++)
		if (json_array_elem(arr, i)->type != jbvString)
			return false;
	return true;
}

static bool write_schema(StringInfo buf, JsonbValue *schema, const LlmTarget *target,
						 const char *where, int depth, LlmError *err);

/* "type": a string, or a list of one type plus optionally "null" */
static bool
write_type(StringInfo buf, bool *first, JsonbValue *v, const LlmTarget *target,
		   const char *where, LlmError *err)
{
	JsonbContainer *list = json_value_container(v, true);
	const char *type = NULL;
	bool		nullable = false;

	if (v->type == jbvString)
	{
		json_append_key(buf, first, "type");
		json_append_value(buf, v);
		return true;
	}
	for (int i = 0; i < json_array_size(list); i++)
	{
		const char *t = json_value_cstring(json_array_elem(list, i));

		if (t == NULL)
			return refuse(err, target, where, "\"type\" lists that are not strings");
		if (strcmp(t, "null") == 0)
			nullable = true;
		else if (type != NULL)
			return refuse(err, target, where, "\"type\" lists of several non-null types");
		else
			type = t;
	}
	if (list == NULL || type == NULL)
		return refuse(err, target, where, "a \"type\" that names no type");
	json_append_key(buf, first, "type");
	json_append_string(buf, type);
	if (nullable)
	{
		json_append_key(buf, first, "nullable");
		appendStringInfoString(buf, "true");
	}
	return true;
}

/* "properties": the same names, each value a schema */
static bool
write_properties(StringInfo buf, JsonbContainer *props, const LlmTarget *target,
				 const char *where, int depth, LlmError *err)
{
	JsonbIterator *it = JsonbIteratorInit(props);
	JsonbValue	v;
	JsonbIteratorToken tok;
	bool		first = true;
	char	   *name = NULL;

	appendStringInfoChar(buf, '{');
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			name = pnstrdup(v.val.string.val, v.val.string.len);
			json_append_key(buf, &first, name);
		}
		else if (tok == WJB_VALUE &&
				 !write_schema(buf, &v, target, psprintf("%s.properties.%s", where, name),
							   depth + 1, err))
			return false;
	}
	appendStringInfoChar(buf, '}');
	return true;
}

static bool
write_keyword(StringInfo buf, bool *first, const char *key, JsonbValue *v,
			  const LlmTarget *target, const char *where, int depth, LlmError *err)
{
	JsonbContainer *obj = json_value_container(v, false);
	JsonbContainer *arr = json_value_container(v, true);

	if (strcmp(key, "type") == 0)
		return write_type(buf, first, v, target, where, err);
	if (strcmp(key, "const") == 0)
	{
		if (v->type != jbvString)
			return refuse(err, target, where, "\"const\" with a value that is not a string");
		json_append_key(buf, first, "enum");
		appendStringInfoChar(buf, '[');
		json_append_value(buf, v);
		appendStringInfoChar(buf, ']');
		return true;
	}
	if (strcmp(key, "enum") == 0 && (arr == NULL || !all_strings(arr)))
		return refuse(err, target, where, "\"enum\" with values that are not strings");
	if (strcmp(key, "properties") == 0)
	{
		if (obj == NULL)
			return refuse(err, target, where, "\"properties\" that is not an object");
		json_append_key(buf, first, key);
		return write_properties(buf, obj, target, where, depth, err);
	}
	if (strcmp(key, "items") == 0)
	{
		if (obj == NULL)
			return refuse(err, target, where, "\"items\" that is not a single schema");
		json_append_key(buf, first, key);
		return write_schema(buf, v, target, psprintf("%s.items", where), depth + 1, err);
	}
	if (strcmp(key, "anyOf") == 0)
	{
		if (arr == NULL)
			return refuse(err, target, where, "\"anyOf\" that is not an array");
		json_append_key(buf, first, key);
		appendStringInfoChar(buf, '[');
		for (int i = 0; i < json_array_size(arr); i++)
		{
			if (i > 0)
				appendStringInfoChar(buf, ',');
			if (!write_schema(buf, json_array_elem(arr, i), target,
							  psprintf("%s.anyOf[%d]", where, i), depth + 1, err))
				return false;
		}
		appendStringInfoChar(buf, ']');
		return true;
	}
	json_append_key(buf, first, key);
	json_append_value(buf, v);
	return true;
}

static bool
write_schema(StringInfo buf, JsonbValue *schema, const LlmTarget *target,
			 const char *where, int depth, LlmError *err)
{
	JsonbContainer *obj = json_value_container(schema, false);
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	bool		first = true;
	char	   *key = NULL;

	if (obj == NULL)
		return refuse(err, target, where, "schemas that are not objects");
	if (depth > GEMINI_SCHEMA_MAX_DEPTH)
		return refuse(err, target, where,
					  psprintf("nested deeper than %d levels", GEMINI_SCHEMA_MAX_DEPTH));

	appendStringInfoChar(buf, '{');
	it = JsonbIteratorInit(obj);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
			key = pnstrdup(v.val.string.val, v.val.string.len);
		else if (tok == WJB_VALUE)
		{
			if (in_list(refused_keys, key))
				return refuse(err, target, where, psprintf("keyword \"%s\"", key));
			if (!in_list(kept_keys, key) && strcmp(key, "const") != 0)
				continue;
			if (!write_keyword(buf, &first, key, &v, target, where, depth, err))
				return false;
		}
	}
	appendStringInfoChar(buf, '}');
	return true;
}

bool
gemini_write_schema(StringInfo buf, JsonbValue *schema, const LlmTarget *target,
					const char *where, LlmError *err)
{
	return write_schema(buf, schema, target, where, 0, err);
}

/*
 * An object schema without properties: a tool that takes no arguments.
 * Gemini rejects an OBJECT with empty properties, so the caller sends no
 * parameters at all.
 */
bool
gemini_schema_is_empty_object(JsonbValue *schema)
{
	JsonbContainer *obj = json_value_container(schema, false);
	JsonbContainer *props;
	const char *type;

	if (schema == NULL || schema->type == jbvNull)
		return true;
	if (obj == NULL)
		return false;
	type = json_get_cstring(obj, "type");
	if (type != NULL && strcmp(type, "object") != 0)
		return false;
	props = json_get_object(obj, "properties");
	return json_get(obj, "anyOf") == NULL &&
		(props == NULL || JsonContainerSize(props) == 0);
}
