/*-------------------------------------------------------------------------
 *
 * validate.c
 *	  Checks a call's history and options and builds the canonical request.
 *
 * runs in: backend.
 *
 * Every mistake is an ERROR with SQLSTATE 22023 (or 42704 for an unknown
 * alias, checked by the worker), a message that names the field, and a
 * hint.  The canonical request is the Anthropic Messages request body:
 * the Messages options the caller gave plus "messages"; gateway options
 * (timeout_ms, tags, on_error) are taken out.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>
#include <math.h>

#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "common/json_util.h"
#include "llm_gateway.h"
#include "backend/validate.h"
#include "backend/call_result.h"

#define LLM_MAX_TOKENS_LIMIT	1048576
#define LLM_MAX_STOP_SEQUENCES	64

static const char *const messages_options[] = {
	"system", "max_tokens", "temperature", "top_p", "top_k", "stop_sequences",
	"tools", "tool_choice", "metadata", "thinking", "output_config", NULL
};
static const char *const gateway_options[] = {"timeout_ms", "tags", "on_error", NULL};

#define OPTION_HINT "Valid options: system, max_tokens, temperature, top_p, top_k, stop_sequences, tools, tool_choice, metadata, thinking, output_config, timeout_ms, tags, on_error."

static bool
in_list(const char *const *list, const char *key)
{
	for (; *list; list++)
		if (strcmp(*list, key) == 0)
			return true;
	return false;
}

static void
bad(const char *msg, const char *hint) pg_attribute_noreturn();

static void
bad(const char *msg, const char *hint)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg_internal("%s", msg),
			 hint ? errhint("%s", hint) : 0));
}

static const char *
type_name(JsonbValue *v)
{
	if (v->type == jbvBinary)
		return JsonContainerIsArray(v->val.binary.data) ? "array" :
			JsonContainerIsObject(v->val.binary.data) ? "object" : "scalar";
	return JsonbTypeName(v);
}

static double
number_of(JsonbValue *v)
{
	return DatumGetFloat8(DirectFunctionCall1(numeric_float8_no_overflow,
											  NumericGetDatum(v->val.numeric)));
}

/* the integer value of v, or error naming the field */
static int64
integer_option(JsonbValue *v, const char *field, int64 min, int64 max, const char *hint)
{
	double		d;

	if (v->type != jbvNumeric)
		bad(psprintf("option \"%s\" must be an integer, not %s", field, type_name(v)), hint);
	d = number_of(v);
	if (d != floor(d))
		bad(psprintf("option \"%s\" must be an integer, not %s", field,
					 DatumGetCString(DirectFunctionCall1(numeric_out, NumericGetDatum(v->val.numeric))) ), hint);
	if (d < (double) min || d > (double) max)
		bad(psprintf("option \"%s\" is out of range: %.0f", field, d), hint);
	return (int64) d;
}

static void
number_option(JsonbValue *v, const char *field, double min, double max)
{
	double		d;

	if (v->type != jbvNumeric)
		bad(psprintf("option \"%s\" must be a number, not %s", field, type_name(v)),
			psprintf("Give %s as a number between %g and %g.", field, min, max));
	d = number_of(v);
	if (isnan(d) || d < min || d > max)
		bad(psprintf("option \"%s\" is out of range: %g", field, d),
			psprintf("Give %s as a number between %g and %g.", field, min, max));
}

/* "text" blocks: {"type":"text","text":"..."} */
static void
check_text_block(JsonbContainer *b, const char *where)
{
	JsonbValue *t = json_get(b, "text");

	if (t == NULL || t->type != jbvString)
		bad(psprintf("%s: a text block needs a string \"text\"", where),
			"Write the block as {\"type\": \"text\", \"text\": \"...\"}.");
}

static void
check_block(JsonbContainer *b, const char *where, const char *role)
{
	const char *type = json_get_cstring(b, "type");

	if (type == NULL)
		bad(psprintf("%s: a content block needs a string \"type\"", where),
			"Block types: text, image, tool_use, tool_result, thinking, redacted_thinking, document.");
	if (strcmp(type, "text") == 0)
		check_text_block(b, where);
	else if (strcmp(type, "image") == 0 || strcmp(type, "document") == 0)
	{
		JsonbContainer *src = json_get_object(b, "source");
		const char *stype = src ? json_get_cstring(src, "type") : NULL;

		if (stype == NULL)
			bad(psprintf("%s: an %s block needs a \"source\" object with a \"type\"", where, type),
				"Use {\"type\": \"base64\", \"media_type\": \"image/png\", \"data\": \"...\"} or {\"type\": \"url\", \"url\": \"...\"}.");
		if (strcmp(stype, "base64") == 0)
		{
			if (!json_get_cstring(src, "media_type") || !json_get_cstring(src, "data"))
				bad(psprintf("%s: a base64 source needs string \"media_type\" and \"data\"", where),
					"Use {\"type\": \"base64\", \"media_type\": \"image/png\", \"data\": \"...\"}.");
		}
		else if (strcmp(stype, "url") == 0)
		{
			if (!json_get_cstring(src, "url"))
				bad(psprintf("%s: a url source needs a string \"url\"", where),
					"Use {\"type\": \"url\", \"url\": \"https://...\"}.");
		}
		else if (strcmp(stype, "text") != 0 && strcmp(stype, "file") != 0)
			bad(psprintf("%s: unknown %s source type \"%s\"", where, type, stype),
				"Source types: base64, url.");
	}
	else if (strcmp(type, "tool_use") == 0)
	{
		if (strcmp(role, "assistant") != 0)
			bad(psprintf("%s: tool_use blocks belong in assistant messages", where),
				"Put the model's tool call in an assistant message and your tool_result in the next user message.");
		if (!json_get_cstring(b, "id") || !json_get_cstring(b, "name") ||
			json_get_object(b, "input") == NULL)
			bad(psprintf("%s: a tool_use block needs string \"id\" and \"name\" and an object \"input\"", where),
				"Send the tool_use block back exactly as the model returned it.");
	}
	else if (strcmp(type, "tool_result") == 0)
	{
		JsonbValue *c = json_get(b, "content");

		if (strcmp(role, "user") != 0)
			bad(psprintf("%s: tool_result blocks belong in user messages", where),
				"Answer the model's tool_use in the next user message.");
		if (!json_get_cstring(b, "tool_use_id"))
			bad(psprintf("%s: a tool_result block needs a string \"tool_use_id\"", where),
				"Copy the id of the tool_use block it answers.");
		if (c != NULL && c->type != jbvString && json_value_container(c, true) == NULL)
			bad(psprintf("%s: tool_result \"content\" must be a string or an array of blocks", where),
				"Give the tool's output as text.");
	}
	else if (strcmp(type, "thinking") == 0)
	{
		if (!json_get_cstring(b, "thinking"))
			bad(psprintf("%s: a thinking block needs a string \"thinking\"", where),
				"Send thinking blocks back exactly as the model returned them.");
	}
	else if (strcmp(type, "redacted_thinking") == 0)
	{
		if (!json_get_cstring(b, "data"))
			bad(psprintf("%s: a redacted_thinking block needs a string \"data\"", where),
				"Send redacted_thinking blocks back exactly as the model returned them.");
	}
	else
		bad(psprintf("%s: unknown content block type \"%s\"", where, type),
			"Block types: text, image, tool_use, tool_result, thinking, redacted_thinking, document.");
}

static void
check_history(Jsonb *history)
{
	int			n,
				i;

	if (!JB_ROOT_IS_ARRAY(history) || JB_ROOT_IS_SCALAR(history))
		bad("history must be a JSON array of messages",
			"Pass e.g. '[{\"role\": \"user\", \"content\": \"Hello\"}]'.");
	n = JB_ROOT_COUNT(history);
	if (n == 0)
		bad("history must contain at least one message",
			"Pass e.g. '[{\"role\": \"user\", \"content\": \"Hello\"}]'.");

	for (i = 0; i < n; i++)
	{
		JsonbValue *m = getIthJsonbValueFromContainer(&history->root, i);
		JsonbContainer *mc = json_value_container(m, false);
		const char *role;
		JsonbValue *content;
		char	   *where = psprintf("history[%d]", i);

		if (mc == NULL)
			bad(psprintf("%s must be an object with \"role\" and \"content\"", where),
				"Pass e.g. {\"role\": \"user\", \"content\": \"Hello\"}.");
		role = json_get_cstring(mc, "role");
		if (role == NULL)
			bad(psprintf("%s.role must be a string", where), "Roles are \"user\" and \"assistant\".");
		if (strcmp(role, "user") != 0 && strcmp(role, "assistant") != 0)
			bad(psprintf("%s.role \"%s\" is not valid", where, role),
				"Roles are \"user\" and \"assistant\"; pass a system prompt as the \"system\" option.");
		content = json_get(mc, "content");
		if (content == NULL)
			bad(psprintf("%s.content is missing", where),
				"Give content as a string or an array of content blocks.");
		if (content->type == jbvString)
		{
			if (content->val.string.len == 0 && i < n - 1)
				bad(psprintf("%s.content must not be empty", where),
					"Only a final assistant message (a prefill) may be empty.");
		}
		else
		{
			JsonbContainer *blocks = json_value_container(content, true);
			int			b;

			if (blocks == NULL)
				bad(psprintf("%s.content must be a string or an array of content blocks, not %s",
							 where, type_name(content)),
					"Give content as a string or an array of content blocks.");
			if (JsonContainerSize(blocks) == 0)
				bad(psprintf("%s.content must not be an empty array", where),
					"Give at least one content block.");
			for (b = 0; b < (int) JsonContainerSize(blocks); b++)
			{
				JsonbContainer *bc = json_value_container(getIthJsonbValueFromContainer(blocks, b), false);
				char	   *bwhere = psprintf("%s.content[%d]", where, b);

				if (bc == NULL)
					bad(psprintf("%s must be an object", bwhere),
						"Write blocks as {\"type\": \"text\", \"text\": \"...\"}.");
				check_block(bc, bwhere, role);
			}
		}
	}
}

static void
check_system(JsonbValue *v)
{
	JsonbContainer *blocks;
	int			i;

	if (v->type == jbvString)
		return;
	blocks = json_value_container(v, true);
	if (blocks == NULL)
		bad(psprintf("option \"system\" must be a string or an array of text blocks, not %s", type_name(v)),
			"Pass the system prompt as a string.");
	for (i = 0; i < (int) JsonContainerSize(blocks); i++)
	{
		JsonbContainer *b = json_value_container(getIthJsonbValueFromContainer(blocks, i), false);
		const char *type = b ? json_get_cstring(b, "type") : NULL;

		if (type == NULL || strcmp(type, "text") != 0)
			bad(psprintf("option \"system\"[%d] must be a text block", i),
				"Write it as {\"type\": \"text\", \"text\": \"...\"}.");
		check_text_block(b, psprintf("option \"system\"[%d]", i));
	}
}

static void
check_tools(JsonbValue *v)
{
	JsonbContainer *tools = json_value_container(v, true);
	int			i;

	if (tools == NULL)
		bad(psprintf("option \"tools\" must be an array, not %s", type_name(v)),
			"Give tools as [{\"name\": ..., \"description\": ..., \"input_schema\": {...}}].");
	for (i = 0; i < (int) JsonContainerSize(tools); i++)
	{
		JsonbContainer *t = json_value_container(getIthJsonbValueFromContainer(tools, i), false);

		if (t == NULL || json_get_cstring(t, "name") == NULL)
			bad(psprintf("option \"tools\"[%d] needs a string \"name\"", i),
				"Give tools as [{\"name\": ..., \"description\": ..., \"input_schema\": {...}}].");
		if (json_get_cstring(t, "type") == NULL && json_get_object(t, "input_schema") == NULL)
			bad(psprintf("option \"tools\"[%d] needs an object \"input_schema\"", i),
				"Describe the tool's input as a JSON Schema object.");
	}
}

static void
check_tool_choice(JsonbValue *v)
{
	JsonbContainer *c = json_value_container(v, false);
	const char *type = c ? json_get_cstring(c, "type") : NULL;

	if (type == NULL)
		bad("option \"tool_choice\" must be an object with a \"type\"",
			"Use {\"type\": \"auto\"}, {\"type\": \"any\"}, {\"type\": \"none\"} or {\"type\": \"tool\", \"name\": \"...\"}.");
	if (strcmp(type, "tool") == 0 && json_get_cstring(c, "name") == NULL)
		bad("option \"tool_choice\" of type \"tool\" needs a string \"name\"",
			"Use {\"type\": \"tool\", \"name\": \"...\"}.");
	if (strcmp(type, "auto") != 0 && strcmp(type, "any") != 0 &&
		strcmp(type, "none") != 0 && strcmp(type, "tool") != 0)
		bad(psprintf("option \"tool_choice\" has unknown type \"%s\"", type),
			"Use {\"type\": \"auto\"}, {\"type\": \"any\"}, {\"type\": \"none\"} or {\"type\": \"tool\", \"name\": \"...\"}.");
}

static void
check_stop_sequences(JsonbValue *v)
{
	JsonbContainer *a = json_value_container(v, true);
	int			i;

	if (a == NULL)
		bad(psprintf("option \"stop_sequences\" must be an array of strings, not %s", type_name(v)),
			"Pass e.g. [\"END\"].");
	if (JsonContainerSize(a) > LLM_MAX_STOP_SEQUENCES)
		bad(psprintf("option \"stop_sequences\" has %u entries, more than %d",
					 JsonContainerSize(a), LLM_MAX_STOP_SEQUENCES),
			"Pass fewer stop sequences.");
	for (i = 0; i < (int) JsonContainerSize(a); i++)
	{
		JsonbValue *s = getIthJsonbValueFromContainer(a, i);

		if (s->type != jbvString || s->val.string.len == 0)
			bad(psprintf("option \"stop_sequences\"[%d] must be a non-empty string", i),
				"Pass e.g. [\"END\"].");
	}
}

/*
 * output_config: {"format": {"type": "json_schema", "schema": {...}}}, the
 * Messages structured-output shape every adapter translates.  Other
 * members of output_config (e.g. effort) pass through to Anthropic.
 */
#define OUTPUT_CONFIG_HINT "Use {\"format\": {\"type\": \"json_schema\", \"schema\": {\"type\": \"object\", ...}}}."

static void
check_output_config(JsonbValue *v)
{
	JsonbContainer *c = json_value_container(v, false);
	JsonbValue *format;
	JsonbContainer *f;
	const char *type;
	JsonbValue *schema;

	if (c == NULL)
		bad(psprintf("option \"output_config\" must be a JSON object, not %s", type_name(v)),
			OUTPUT_CONFIG_HINT);
	format = json_get(c, "format");
	if (format == NULL)
		return;
	f = json_value_container(format, false);
	if (f == NULL)
		bad(psprintf("option \"output_config\".format must be a JSON object, not %s", type_name(format)),
			OUTPUT_CONFIG_HINT);
	type = json_get_cstring(f, "type");
	if (type == NULL || strcmp(type, "json_schema") != 0)
		bad(type ? psprintf("option \"output_config\".format.type must be \"json_schema\", not \"%s\"", type)
			: pstrdup("option \"output_config\".format needs \"type\": \"json_schema\""),
			OUTPUT_CONFIG_HINT);
	schema = json_get(f, "schema");
	if (schema == NULL || json_value_container(schema, false) == NULL)
		bad(schema ? psprintf("option \"output_config\".format.schema must be a JSON object, not %s", type_name(schema))
			: pstrdup("option \"output_config\".format needs a \"schema\" object"),
			OUTPUT_CONFIG_HINT);
}

/*
 * Validate one call and build its canonical request.
 */
void
validate_call(const char *alias, Jsonb *history, Jsonb *options, LlmCallSpec *spec)
{
	JsonbParseState *state = NULL;
	JsonbIterator *it;
	JsonbIteratorToken tok;
	JsonbValue	key;
	JsonbValue	val;
	JsonbValue *result;

	if (alias == NULL || alias[0] == '\0')
		bad("model alias must not be empty", "Pass the alias of a route defined with llm.add_route().");

	check_history(history);

	spec->timeout_ms = llm_request_timeout_ms;
	spec->tags = NULL;
	spec->on_error_null = (llm_on_error == LLM_ON_ERROR_NULL);

	if (options == NULL)
		options = jsonb_from_cstring("{}");
	if (!JB_ROOT_IS_OBJECT(options))
		bad("options must be a JSON object", "Pass e.g. '{\"max_tokens\": 256}', or '{}' for none.");

	pushJsonbValue(&state, WJB_BEGIN_OBJECT, NULL);

	it = JsonbIteratorInit(&options->root);
	while ((tok = JsonbIteratorNext(&it, &key, false)) != WJB_DONE)
	{
		char	   *name;

		if (tok != WJB_KEY)
			continue;
		name = pnstrdup(key.val.string.val, key.val.string.len);
		/* the value, unexpanded (containers stay jbvBinary) */
		tok = JsonbIteratorNext(&it, &val, true);

		if (in_list(gateway_options, name))
		{
			if (strcmp(name, "timeout_ms") == 0)
				spec->timeout_ms = (int) integer_option(&val, name, 1, INT_MAX / 2,
														"Give timeout_ms as a positive number of milliseconds.");
			else if (strcmp(name, "on_error") == 0)
			{
				if (val.type != jbvString ||
					!llm_on_error_parse(pnstrdup(val.val.string.val, val.val.string.len),
										&spec->on_error_null))
					bad("option \"on_error\" must be \"raise\" or \"null\"",
						"\"null\" makes a failed call return NULL (llm_complete) or an error object (llm_messages).");
			}
			else
			{
				StringInfoData buf;

				if (json_value_container(&val, false) == NULL)
					bad(psprintf("option \"tags\" must be a JSON object, not %s", type_name(&val)),
						"Pass tags as {\"name\": \"value\", ...}.");
				initStringInfo(&buf);
				json_append_value(&buf, &val);
				spec->tags = buf.data;
			}
			continue;
		}
		if (!in_list(messages_options, name))
			bad(psprintf("unknown option \"%s\"", name), OPTION_HINT);

		if (strcmp(name, "system") == 0)
			check_system(&val);
		else if (strcmp(name, "max_tokens") == 0)
			(void) integer_option(&val, name, 1, LLM_MAX_TOKENS_LIMIT,
								  psprintf("Give max_tokens as an integer between 1 and %d.", LLM_MAX_TOKENS_LIMIT));
		else if (strcmp(name, "temperature") == 0)
			number_option(&val, name, 0.0, 2.0);
		else if (strcmp(name, "top_p") == 0)
			number_option(&val, name, 0.0, 1.0);
		else if (strcmp(name, "top_k") == 0)
			(void) integer_option(&val, name, 0, INT_MAX, "Give top_k as a non-negative integer.");
		else if (strcmp(name, "stop_sequences") == 0)
			check_stop_sequences(&val);
		else if (strcmp(name, "tools") == 0)
			check_tools(&val);
		else if (strcmp(name, "tool_choice") == 0)
			check_tool_choice(&val);
		else if (strcmp(name, "output_config") == 0)
			check_output_config(&val);
		else if ((strcmp(name, "metadata") == 0 || strcmp(name, "thinking") == 0) &&
				 json_value_container(&val, false) == NULL)
			bad(psprintf("option \"%s\" must be a JSON object, not %s", name, type_name(&val)),
				psprintf("Pass %s as an object.", name));

		pushJsonbValue(&state, WJB_KEY, &key);
		pushJsonbValue(&state, WJB_VALUE, &val);
	}

	key.type = jbvString;
	key.val.string.val = "messages";
	key.val.string.len = strlen("messages");
	pushJsonbValue(&state, WJB_KEY, &key);
	val.type = jbvBinary;
	val.val.binary.data = &history->root;
	val.val.binary.len = VARSIZE(history) - VARHDRSZ;
	pushJsonbValue(&state, WJB_VALUE, &val);

	result = pushJsonbValue(&state, WJB_END_OBJECT, NULL);
	spec->request = JsonbValueToJsonb(result);
}
