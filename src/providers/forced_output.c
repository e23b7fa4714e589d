/*-------------------------------------------------------------------------
 *
 * forced_output.c
 *	  Structured output through a forced tool call, for providers that
 *	  have tools but no JSON-schema output mode.
 *
 * runs in: worker (and backends, for the diagnostic adapter functions).
 * Pure, like the adapters that call it: no ERROR on any input, errors as
 * LlmError values.
 *
 * An adapter calls forced_output_request on the canonical request before
 * translating it, and forced_output_answer on its parsed answer:
 *	 request  output_config {"format": {"type": "json_schema", "schema": S}}
 *			  is taken out; a tool {"name": "json_output", "input_schema": S}
 *			  is added after the caller's tools and forced with
 *			  tool_choice {"type": "tool", "name": "json_output"}.
 *	 answer   a tool_use block named json_output becomes the answer: one
 *			  text block holding its input as JSON, stop_reason end_turn
 *			  (max_tokens is kept: the input may be cut short).  An answer
 *			  without that call is left as it is (llm_extract then finds it
 *			  does not follow the schema).
 * Tool inputs are objects, so the schema must be of type object.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "common/json_util.h"
#include "providers/adapter_util.h"
#include "providers/forced_output.h"

/* The request with output_config turned into a forced tool; *out = request if it has none. */
bool
forced_output_request(Jsonb *request, Jsonb **out, LlmError *err)
{
	JsonbContainer *req = &request->root;
	JsonbContainer *config = json_get_object(req, "output_config");
	JsonbContainer *format = json_get_object(config, "format");
	JsonbValue *schema = json_get(format, "schema");
	JsonbContainer *schema_obj = schema ? json_value_container(schema, false) : NULL;
	JsonbContainer *tools = json_get_array(req, "tools");
	const char *type;
	JsonbIterator *it;
	JsonbIteratorToken tok;
	JsonbValue	v;
	StringInfoData buf;
	bool		first = true;
	bool		skip = false;
	char	   *why;
	int			i;

	*out = request;
	if (config == NULL)
		return true;
	if (schema_obj == NULL)
		return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
							 "output_config.format.schema must be a JSON object");
	type = json_get_cstring(schema_obj, "type");
	if (type == NULL || strcmp(type, "object") != 0)
	{
		provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
					  "structured output through a forced tool call needs a schema of type \"object\"");
		err->hint = pstrdup("Wrap the value in an object, e.g. {\"type\": \"object\", \"properties\": {\"value\": ...}, \"required\": [\"value\"]}.");
		return false;
	}
	for (i = 0; i < json_array_size(tools); i++)
	{
		const char *name = json_get_cstring(json_value_container(json_array_elem(tools, i), false), "name");

		if (name != NULL && strcmp(name, FORCED_OUTPUT_TOOL) == 0)
			return provider_fail(err, ERRCODE_INVALID_PARAMETER_VALUE, LLM_FAIL_FATAL,
								 "a tool named \"%s\" cannot be combined with output_config on this provider",
								 FORCED_OUTPUT_TOOL);
	}

	initStringInfo(&buf);
	appendStringInfoChar(&buf, '{');
	it = JsonbIteratorInit(req);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		if (tok == WJB_KEY)
		{
			char	   *key = pnstrdup(v.val.string.val, v.val.string.len);

			skip = strcmp(key, "output_config") == 0 || strcmp(key, "tools") == 0 ||
				strcmp(key, "tool_choice") == 0;
			if (!skip)
				json_append_key(&buf, &first, key);
		}
		else if (tok == WJB_VALUE && !skip)
			json_append_value(&buf, &v);
	}
	json_append_key(&buf, &first, "tools");
	appendStringInfoChar(&buf, '[');
	for (i = 0; i < json_array_size(tools); i++)
	{
		json_append_value(&buf, json_array_elem(tools, i));
		appendStringInfoChar(&buf, ',');
	}
	appendStringInfoString(&buf, "{\"name\":\"" FORCED_OUTPUT_TOOL "\","
						   "\"description\":\"Return the answer as this tool's input.\","
						   "\"input_schema\":");
	json_append_value(&buf, schema);
	appendStringInfoString(&buf, "}]");
	json_append_key(&buf, &first, "tool_choice");
	appendStringInfoString(&buf, "{\"type\":\"tool\",\"name\":\"" FORCED_OUTPUT_TOOL "\"}");
	appendStringInfoChar(&buf, '}');

	*out = json_parse_safe(buf.data, buf.len, &why);
	if (*out == NULL)
		return provider_fail(err, ERRCODE_INTERNAL_ERROR, LLM_FAIL_FATAL,
							 "could not build the forced-tool request: %s", why);
	return true;
}

/* The answer's json_output call as its text; unchanged if it has none. */
bool
forced_output_answer(LlmAnswer *answer, LlmError *err)
{
	Jsonb	   *content;
	char	   *why;
	int			i;

	content = json_parse_safe(answer->content.data, answer->content.len, &why);
	if (content == NULL || !JB_ROOT_IS_ARRAY(content) || JB_ROOT_IS_SCALAR(content))
		return provider_fail(err, ERRCODE_INTERNAL_ERROR, LLM_FAIL_FATAL,
							 "the answer's content is not a JSON array");
	for (i = 0; i < json_array_size(&content->root); i++)
	{
		JsonbContainer *block = json_value_container(json_array_elem(&content->root, i), false);
		const char *type = json_get_cstring(block, "type");
		const char *name = json_get_cstring(block, "name");
		JsonbValue *input = json_get(block, "input");
		StringInfoData text;

		if (type == NULL || strcmp(type, "tool_use") != 0 || name == NULL ||
			strcmp(name, FORCED_OUTPUT_TOOL) != 0 || input == NULL)
			continue;
		initStringInfo(&text);
		json_append_value(&text, input);
		resetStringInfo(&answer->content);
		appendStringInfoString(&answer->content, "[{\"type\":\"text\",\"text\":");
		json_append_string(&answer->content, text.data);
		appendStringInfoString(&answer->content, "}]");
		if (answer->stop_reason == NULL || strcmp(answer->stop_reason, "max_tokens") != 0)
			answer->stop_reason = pstrdup("end_turn");
		return true;
	}
	return true;
}
