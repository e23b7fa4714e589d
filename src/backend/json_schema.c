/*-------------------------------------------------------------------------
 *
 * json_schema.c
 *	  Validate an llm_extract answer against the caller's JSON Schema.
 *
 * runs in: backend.
 *
 * Keywords checked: type (a name or a list of names; "integer" is a number
 * without a fraction), enum, const, required, properties,
 * additionalProperties (false, or a schema for the other members), items
 * (one schema for every element), minItems, maxItems.  Every other keyword
 * ($ref, anyOf, oneOf, allOf, pattern, format, minimum, minLength, ...) is
 * ignored: the provider enforces what it supports, and we check the shape
 * a caller's SQL depends on.
 *
 * Hostile input.  A schema deeper than JSON_SCHEMA_MAX_DEPTH containers is
 * refused before anything is sent (json_schema_check, an iterative walk),
 * and the validator recurses only where the schema does, so its depth is
 * bounded by the schema's, whatever the answer's shape.  An answer is
 * scanned for its nesting depth before it is parsed (JSON_ANSWER_MAX_DEPTH),
 * so a 10,000-deep answer is a violation, not a stack overflow.
 *
 * Errors as values: json_schema_validate returns false and the first
 * violation as "<JSON path>: <what was expected>", e.g.
 * "$.items[2].qty: expected integer, got number 1.5".
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include "fmgr.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "common/json_util.h"
#include "backend/json_schema.h"

/* the depth of a Jsonb's containers, counted without recursion */
static int
jsonb_depth(Jsonb *j)
{
	JsonbIterator *it = JsonbIteratorInit(&j->root);
	JsonbIteratorToken tok;
	JsonbValue	v;
	int			depth = 0;
	int			max = 0;

	while ((tok = JsonbIteratorNext(&it, &v, false)) != WJB_DONE)
	{
		if (tok == WJB_BEGIN_ARRAY || tok == WJB_BEGIN_OBJECT)
		{
			depth++;
			max = Max(max, depth);
		}
		else if (tok == WJB_END_ARRAY || tok == WJB_END_OBJECT)
			depth--;
	}
	return max;
}

/*
 * Is this schema one we can check?  It must be an object and at most
 * JSON_SCHEMA_MAX_DEPTH containers deep.
 */
bool
json_schema_check(Jsonb *schema, char **problem)
{
	int			depth;

	*problem = NULL;
	if (!JB_ROOT_IS_OBJECT(schema))
	{
		*problem = pstrdup("the schema must be a JSON object");
		return false;
	}
	depth = jsonb_depth(schema);
	if (depth > JSON_SCHEMA_MAX_DEPTH)
	{
		*problem = psprintf("the schema nests %d levels deep, more than %d",
							depth, JSON_SCHEMA_MAX_DEPTH);
		return false;
	}
	return true;
}

/* the member path of a key: $.name, or $["odd key"] */
static char *
path_key(const char *path, const char *key, int len)
{
	StringInfoData buf;
	bool		plain = len > 0 && !isdigit((unsigned char) key[0]);
	int			i;

	for (i = 0; i < len && plain; i++)
		plain = isalnum((unsigned char) key[i]) || key[i] == '_';
	initStringInfo(&buf);
	appendStringInfoString(&buf, path);
	if (plain)
	{
		appendStringInfoChar(&buf, '.');
		appendBinaryStringInfo(&buf, key, len);
	}
	else
	{
		appendStringInfoChar(&buf, '[');
		json_append_string(&buf, pnstrdup(key, len));
		appendStringInfoChar(&buf, ']');
	}
	return buf.data;
}

/* the JSON type name of a value, with "integer" for whole numbers */
static const char *
value_type(JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			return "null";
		case jbvBool:
			return "boolean";
		case jbvString:
			return "string";
		case jbvNumeric:
			{
				Numeric		n = v->val.numeric;

				if (numeric_is_nan(n) || numeric_is_inf(n))
					return "number";
				return DatumGetBool(DirectFunctionCall2(numeric_eq, NumericGetDatum(n),
														DirectFunctionCall1(numeric_floor, NumericGetDatum(n))))
					? "integer" : "number";
			}
		case jbvBinary:
			return JsonContainerIsArray(v->val.binary.data) ? "array" : "object";
		default:
			return "value";
	}
}

/* does value type "have" satisfy schema type name "want"? */
static bool
type_matches(const char *have, const char *want, int want_len)
{
	if (strlen(have) == want_len && strncmp(have, want, want_len) == 0)
		return true;
	/* an integer is a number too */
	return strcmp(have, "integer") == 0 && want_len == 6 && strncmp(want, "number", 6) == 0;
}

/* a value as short JSON text, for messages (cut at 60 bytes) */
static char *
show(JsonbValue *v)
{
	StringInfoData buf;

	initStringInfo(&buf);
	json_append_value(&buf, v);
	if (buf.len > 60)
	{
		/* at a character boundary: the text goes into messages */
		buf.len = pg_mbcliplen(buf.data, buf.len, 57);
		buf.data[buf.len] = '\0';
		appendStringInfoString(&buf, "...");
	}
	return buf.data;
}

/* JSON equality of two values (object member order does not matter) */
static bool
values_equal(JsonbValue *a, JsonbValue *b)
{
	if (a->type == jbvNumeric && b->type == jbvNumeric)
		return DatumGetBool(DirectFunctionCall2(numeric_eq, NumericGetDatum(a->val.numeric),
												NumericGetDatum(b->val.numeric)));
	if (a->type != b->type)
		return false;
	switch (a->type)
	{
		case jbvNull:
			return true;
		case jbvBool:
			return a->val.boolean == b->val.boolean;
		case jbvString:
			return a->val.string.len == b->val.string.len &&
				memcmp(a->val.string.val, b->val.string.val, a->val.string.len) == 0;
		case jbvBinary:
			{
				/* jsonb's text form is canonical: keys sorted, duplicates gone */
				StringInfoData x;
				StringInfoData y;

				initStringInfo(&x);
				initStringInfo(&y);
				json_append_value(&x, a);
				json_append_value(&y, b);
				return strcmp(x.data, y.data) == 0;
			}
		default:
			return false;
	}
}

static bool validate_value(JsonbContainer *schema, JsonbValue *v, const char *path,
						   int depth, char **violation);

static bool
fail(char **violation, const char *path, char *what)
{
	*violation = psprintf("%s: %s", path, what);
	return false;
}

static bool
check_type(JsonbContainer *schema, JsonbValue *v, const char *path, char **violation)
{
	JsonbValue *t = json_get(schema, "type");
	const char *have = value_type(v);
	JsonbContainer *list;
	StringInfoData names;
	int			i;

	if (t == NULL)
		return true;
	if (t->type == jbvString)
	{
		if (type_matches(have, t->val.string.val, t->val.string.len))
			return true;
		return fail(violation, path, psprintf("expected %s, got %s %s",
											  pnstrdup(t->val.string.val, t->val.string.len),
											  have, show(v)));
	}
	list = json_value_container(t, true);
	if (list == NULL)
		return true;			/* not a type we understand: ignored */
	initStringInfo(&names);
	for (i = 0; i < json_array_size(list); i++)
	{
		JsonbValue *n = json_array_elem(list, i);

		if (n->type != jbvString)
			continue;
		if (type_matches(have, n->val.string.val, n->val.string.len))
			return true;
		appendStringInfo(&names, "%s%.*s", names.len ? " or " : "",
						 n->val.string.len, n->val.string.val);
	}
	if (names.len == 0)
		return true;
	return fail(violation, path, psprintf("expected %s, got %s %s", names.data, have, show(v)));
}

static bool
check_enum(JsonbContainer *schema, JsonbValue *v, const char *path, char **violation)
{
	JsonbValue *c = json_get(schema, "const");
	JsonbValue *e = json_get(schema, "enum");
	JsonbContainer *list = e ? json_value_container(e, true) : NULL;
	int			i;

	if (c != NULL && !values_equal(c, v))
		return fail(violation, path, psprintf("expected %s, got %s", show(c), show(v)));
	if (list == NULL)
		return true;
	for (i = 0; i < json_array_size(list); i++)
		if (values_equal(json_array_elem(list, i), v))
			return true;
	return fail(violation, path, psprintf("expected one of %s, got %s", show(e), show(v)));
}

static bool
check_object(JsonbContainer *schema, JsonbContainer *obj, const char *path, int depth,
			 char **violation)
{
	JsonbContainer *required = json_get_array(schema, "required");
	JsonbContainer *props = json_get_object(schema, "properties");
	JsonbValue *extra = json_get(schema, "additionalProperties");
	JsonbContainer *extra_schema = extra ? json_value_container(extra, false) : NULL;
	bool		no_extra = extra != NULL && extra->type == jbvBool && !extra->val.boolean;
	JsonbIterator *it;
	JsonbIteratorToken tok;
	JsonbValue	k;
	JsonbValue	val;
	int			i;

	for (i = 0; i < json_array_size(required); i++)
	{
		JsonbValue *name = json_array_elem(required, i);

		if (name->type == jbvString &&
			getKeyJsonValueFromContainer(obj, name->val.string.val, name->val.string.len, NULL) == NULL)
			return fail(violation, path,
						psprintf("missing required property %s", show(name)));
	}

	it = JsonbIteratorInit(obj);
	while ((tok = JsonbIteratorNext(&it, &k, true)) != WJB_DONE)
	{
		JsonbValue *sub;
		JsonbContainer *sub_schema;
		char	   *kpath;

		if (tok != WJB_KEY)
			continue;
		tok = JsonbIteratorNext(&it, &val, true);
		kpath = path_key(path, k.val.string.val, k.val.string.len);
		sub = props ? getKeyJsonValueFromContainer(props, k.val.string.val, k.val.string.len, NULL) : NULL;
		if (sub != NULL)
		{
			sub_schema = json_value_container(sub, false);
			if (sub_schema != NULL && !validate_value(sub_schema, &val, kpath, depth + 1, violation))
				return false;
		}
		else if (no_extra)
			return fail(violation, kpath, pstrdup("property not allowed (additionalProperties is false)"));
		else if (extra_schema != NULL &&
				 !validate_value(extra_schema, &val, kpath, depth + 1, violation))
			return false;
	}
	return true;
}

static bool
check_array(JsonbContainer *schema, JsonbContainer *arr, const char *path, int depth,
			char **violation)
{
	int			n = json_array_size(arr);
	int64		bound;
	JsonbContainer *items = json_get_object(schema, "items");
	int			i;

	if (json_get_int64(schema, "minItems", &bound) && n < bound)
		return fail(violation, path, psprintf("expected at least " INT64_FORMAT " items, got %d", bound, n));
	if (json_get_int64(schema, "maxItems", &bound) && n > bound)
		return fail(violation, path, psprintf("expected at most " INT64_FORMAT " items, got %d", bound, n));
	if (items == NULL)
		return true;
	for (i = 0; i < n; i++)
		if (!validate_value(items, json_array_elem(arr, i), psprintf("%s[%d]", path, i),
							depth + 1, violation))
			return false;
	return true;
}

static bool
validate_value(JsonbContainer *schema, JsonbValue *v, const char *path, int depth,
			   char **violation)
{
	/* json_schema_check bounds the schema; this bounds us even without it */
	if (depth > JSON_SCHEMA_MAX_DEPTH)
		return fail(violation, path, psprintf("the schema nests more than %d levels deep", JSON_SCHEMA_MAX_DEPTH));
	if (!JsonContainerIsObject(schema))
		return true;
	if (!check_type(schema, v, path, violation) || !check_enum(schema, v, path, violation))
		return false;
	if (v->type == jbvBinary && JsonContainerIsObject(v->val.binary.data))
		return check_object(schema, v->val.binary.data, path, depth, violation);
	if (v->type == jbvBinary && JsonContainerIsArray(v->val.binary.data))
		return check_array(schema, v->val.binary.data, path, depth, violation);
	return true;
}

/*
 * Does doc follow schema?  False with the first violation, in document
 * order, as "<path>: <expected>".
 */
bool
json_schema_validate(JsonbContainer *schema, Jsonb *doc, char **violation)
{
	JsonbValue	root;

	*violation = NULL;
	if (JB_ROOT_IS_SCALAR(doc))
	{
		JsonbValue *s = getIthJsonbValueFromContainer(&doc->root, 0);

		root = *s;
	}
	else
	{
		root.type = jbvBinary;
		root.val.binary.data = &doc->root;
		root.val.binary.len = VARSIZE(doc) - VARHDRSZ;
	}
	return validate_value(schema, &root, "$", 0, violation);
}

/*
 * The answer text as JSON, or NULL and why not (a violation: too deep,
 * not JSON).  Never raises on the provider's text.  A Markdown code fence
 * around the JSON (```json ... ```), which models add even when asked
 * for JSON only, is taken off.
 */
Jsonb *
json_schema_parse_answer(const char *text, size_t len, char **violation)
{
	bool		in_string = false;
	bool		escaped = false;
	int			depth = 0;
	size_t		i;
	char	   *why;
	Jsonb	   *doc;

	*violation = NULL;
	while (len > 0 && isspace((unsigned char) *text))
		text++, len--;
	while (len > 0 && isspace((unsigned char) text[len - 1]))
		len--;
	if (len >= 6 && strncmp(text, "```", 3) == 0 && strncmp(text + len - 3, "```", 3) == 0)
	{
		const char *nl = memchr(text, '\n', len - 3);

		if (nl != NULL)
		{
			len -= (nl + 1 - text) + 3;
			text = nl + 1;
		}
	}
	for (i = 0; i < len; i++)
	{
		char		c = text[i];

		if (in_string)
		{
			if (escaped)
				escaped = false;
			else if (c == '\\')
				escaped = true;
			else if (c == '"')
				in_string = false;
		}
		else if (c == '"')
			in_string = true;
		else if (c == '[' || c == '{')
		{
			if (++depth > JSON_ANSWER_MAX_DEPTH)
			{
				*violation = psprintf("$: the answer nests deeper than %d levels", JSON_ANSWER_MAX_DEPTH);
				return NULL;
			}
		}
		else if (c == ']' || c == '}')
			depth--;
	}
	doc = json_parse_safe(text, len, &why);
	if (doc == NULL)
		*violation = psprintf("$: the answer is not JSON (%s)", why);
	return doc;
}

PG_FUNCTION_INFO_V1(llm_json_schema_violation);

/*
 * llm.json_schema_violation(schema jsonb, answer text) -> text: what
 * llm_extract would say of this answer text (NULL: it follows the schema).
 */
Datum
llm_json_schema_violation(PG_FUNCTION_ARGS)
{
	Jsonb	   *schema = PG_GETARG_JSONB_P(0);
	text	   *answer = PG_GETARG_TEXT_PP(1);
	char	   *problem;
	Jsonb	   *doc;

	if (!json_schema_check(schema, &problem))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("llm_extract: %s", problem),
				 errhint("Pass a JSON Schema object, e.g. '{\"type\": \"object\", \"properties\": {...}}'.")));
	doc = json_schema_parse_answer(VARDATA_ANY(answer), VARSIZE_ANY_EXHDR(answer), &problem);
	if (doc != NULL && json_schema_validate(&schema->root, doc, &problem))
		PG_RETURN_NULL();
	PG_RETURN_TEXT_P(cstring_to_text(problem));
}
