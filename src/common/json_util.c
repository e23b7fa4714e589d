/*-------------------------------------------------------------------------
 *
 * json_util.c
 *	  Small jsonb helpers shared by the adapters, validation and the worker.
 *
 * runs in: backend and worker.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "utils/builtins.h"
#include "utils/json.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "common/json_util.h"

/*
 * Parse JSON text into a Jsonb without throwing.  jsonb_in reports bad
 * input with ereport(ERROR); provider answers are untrusted, so we turn that
 * into a value.  Nothing but memory is held across the call, so catching
 * the error and flushing it is safe.
 */
Jsonb *
json_parse_safe(const char *text, size_t len, char **errmsg)
{
	MemoryContext oldcxt = CurrentMemoryContext;
	Jsonb	   *result = NULL;
	char	   *copy;

	*errmsg = NULL;
	copy = palloc(len + 1);
	memcpy(copy, text, len);
	copy[len] = '\0';
	if (strlen(copy) != len)
	{
		*errmsg = pstrdup("the JSON text contains a NUL byte");
		return NULL;
	}

	PG_TRY();
	{
		result = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(copy)));
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		MemoryContextSwitchTo(oldcxt);
		edata = CopyErrorData();
		FlushErrorState();
		*errmsg = edata->detail ? psprintf("%s: %s", edata->message, edata->detail)
			: pstrdup(edata->message);
		FreeErrorData(edata);
		result = NULL;
	}
	PG_END_TRY();
	return result;
}

JsonbValue *
json_get(JsonbContainer *c, const char *key)
{
	if (c == NULL || !JsonContainerIsObject(c))
		return NULL;
	return getKeyJsonValueFromContainer(c, key, strlen(key), NULL);
}

char *
json_value_cstring(JsonbValue *v)
{
	if (v == NULL || v->type != jbvString)
		return NULL;
	return pnstrdup(v->val.string.val, v->val.string.len);
}

const char *
json_get_cstring(JsonbContainer *c, const char *key)
{
	return json_value_cstring(json_get(c, key));
}

bool
json_get_int64(JsonbContainer *c, const char *key, int64 *out)
{
	JsonbValue *v = json_get(c, key);
	char	   *text;
	char	   *end;
	long long	n;

	if (v == NULL || v->type != jbvNumeric)
		return false;
	/* only plain integers count; fractions and huge values are "absent" */
	text = DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric)));
	errno = 0;
	n = strtoll(text, &end, 10);
	if (errno != 0 || *end != '\0' || end == text)
		return false;
	*out = (int64) n;
	return true;
}

bool
json_get_float8(JsonbContainer *c, const char *key, double *out)
{
	JsonbValue *v = json_get(c, key);

	if (v == NULL || v->type != jbvNumeric)
		return false;
	*out = DatumGetFloat8(DirectFunctionCall1(numeric_float8_no_overflow,
											  NumericGetDatum(v->val.numeric)));
	return true;
}

JsonbContainer *
json_value_container(JsonbValue *v, bool want_array)
{
	JsonbContainer *c;

	if (v == NULL || v->type != jbvBinary)
		return NULL;
	c = v->val.binary.data;
	if (want_array ? !JsonContainerIsArray(c) : !JsonContainerIsObject(c))
		return NULL;
	return c;
}

JsonbContainer *
json_get_object(JsonbContainer *c, const char *key)
{
	return json_value_container(json_get(c, key), false);
}

JsonbContainer *
json_get_array(JsonbContainer *c, const char *key)
{
	return json_value_container(json_get(c, key), true);
}

int
json_array_size(JsonbContainer *arr)
{
	if (arr == NULL || !JsonContainerIsArray(arr))
		return 0;
	return JsonContainerSize(arr);
}

JsonbValue *
json_array_elem(JsonbContainer *arr, int i)
{
	if (arr == NULL || !JsonContainerIsArray(arr))
		return NULL;
	return getIthJsonbValueFromContainer(arr, i);
}

void
json_append_container(StringInfo buf, JsonbContainer *c)
{
	(void) JsonbToCString(buf, c, VARSIZE_ANY_EXHDR(c));
}

/* Append the JSON text of any jsonb value (scalar or container). */
void
json_append_value(StringInfo buf, JsonbValue *v)
{
	switch (v->type)
	{
		case jbvNull:
			appendStringInfoString(buf, "null");
			break;
		case jbvBool:
			appendStringInfoString(buf, v->val.boolean ? "true" : "false");
			break;
		case jbvString:
			{
				char	   *s = pnstrdup(v->val.string.val, v->val.string.len);

				escape_json(buf, s);
				pfree(s);
			}
			break;
		case jbvNumeric:
			appendStringInfoString(buf,
								   DatumGetCString(DirectFunctionCall1(numeric_out,
																	   NumericGetDatum(v->val.numeric))));
			break;
		case jbvBinary:
			(void) JsonbToCString(buf, v->val.binary.data, v->val.binary.len);
			break;
		default:
			{
				/* in-memory arrays/objects: serialise through a Jsonb */
				Jsonb	   *jb = JsonbValueToJsonb(v);

				(void) JsonbToCString(buf, &jb->root, VARSIZE(jb));
			}
			break;
	}
}

void
json_append_string(StringInfo buf, const char *s)
{
	escape_json(buf, s);
}

/* Append ,"key": to an object under construction (no comma before the first). */
void
json_append_key(StringInfo buf, bool *first, const char *key)
{
	if (!*first)
		appendStringInfoChar(buf, ',');
	*first = false;
	escape_json(buf, key);
	appendStringInfoChar(buf, ':');
}

/* JSON text this code built itself, as jsonb (jsonb_in: a mistake is an ERROR) */
Jsonb *
jsonb_from_cstring(const char *text)
{
	return DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum(text)));
}
