/*-------------------------------------------------------------------------
 *
 * chat_message.c
 *	  The pieces of one conversation call: the context policy, the user
 *	  message, the merged options, and the answer's parts a turn keeps.
 *
 * runs in: backend.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "mb/pg_wchar.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/numeric.h"

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "backend/call_result.h"
#include "backend/conversation.h"
#include "backend/run_as.h"
#include "backend/sql_api.h"
#include "backend/validate.h"

char *
chat_jsonb_text(Jsonb *j)
{
	return JsonbToCString(NULL, &j->root, VARSIZE(j));
}

static void
bad_policy(const char *msg)
{
	ereport(ERROR,
			(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
			 errmsg("context policy: %s", msg),
			 errhint("Write it as {\"strategy\": \"drop_oldest\" | \"summarize\", \"budget_tokens\": N, \"summary_model\": alias, \"summary_max_tokens\": N}.")));
}

static int64
policy_count(JsonbContainer *c, const char *key, int64 max)
{
	JsonbValue *v = json_get(c, key);
	int64		n;

	if (v == NULL || v->type == jbvNull)
		return 0;
	if (v->type != jbvNumeric || !json_get_int64(c, key, &n) || n < 1 || n > max)
		bad_policy(psprintf("\"%s\" must be an integer from 1 to " INT64_FORMAT, key, max));
	return n;
}

void
chat_policy_parse(Jsonb *policy, ChatPolicy *p)
{
	JsonbContainer *c = &policy->root;
	JsonbIterator *it;
	JsonbValue	v;
	JsonbIteratorToken tok;
	const char *strategy;

	memset(p, 0, sizeof(*p));
	if (!JB_ROOT_IS_OBJECT(policy) || JB_ROOT_IS_SCALAR(policy))
		bad_policy("it must be a JSON object");
	it = JsonbIteratorInit(c);
	while ((tok = JsonbIteratorNext(&it, &v, true)) != WJB_DONE)
	{
		char	   *key;

		if (tok != WJB_KEY)
			continue;
		key = pnstrdup(v.val.string.val, v.val.string.len);
		if (strcmp(key, "strategy") != 0 && strcmp(key, "budget_tokens") != 0 &&
			strcmp(key, "summary_model") != 0 && strcmp(key, "summary_max_tokens") != 0)
			bad_policy(psprintf("unknown key \"%s\"", key));
	}
	strategy = json_get_cstring(c, "strategy");
	if (json_get(c, "strategy") != NULL && strategy == NULL)
		bad_policy("\"strategy\" must be a string");
	if (strategy == NULL || strcmp(strategy, "drop_oldest") == 0)
		p->summarize = false;
	else if (strcmp(strategy, "summarize") == 0)
		p->summarize = true;
	else
		bad_policy(psprintf("unknown strategy \"%s\"", strategy));
	p->budget_tokens = policy_count(c, "budget_tokens", PG_INT32_MAX);
	p->summary_max_tokens = policy_count(c, "summary_max_tokens", 100000);
	if (p->summary_max_tokens == 0)
		p->summary_max_tokens = CHAT_DEFAULT_SUMMARY_TOKENS;
	if (json_get(c, "summary_model") != NULL)
	{
		p->summary_model = (char *) json_get_cstring(c, "summary_model");
		if (p->summary_model == NULL || p->summary_model[0] == '\0')
			bad_policy("\"summary_model\" must be a model alias");
	}
	if (!p->summarize && p->summary_model != NULL)
		bad_policy("\"summary_model\" needs \"strategy\": \"summarize\"");
}

/* whether content (a string or blocks) holds a tool_result */
static bool
has_tool_result(JsonbContainer *blocks)
{
	int			i;

	for (i = 0; i < json_array_size(blocks); i++)
	{
		JsonbContainer *b = json_value_container(json_array_elem(blocks, i), false);
		const char *type = b ? json_get_cstring(b, "type") : NULL;

		if (type != NULL && strcmp(type, "tool_result") == 0)
			return true;
	}
	return false;
}

/*
 * The user message of llm_chat's jsonb form: content blocks, a string, or
 * {"role": "user", "content": ...}.  Its shape is checked again with the
 * whole history by validate_call.
 */
void
chat_message_parse(Jsonb *message, ChatMessage *m)
{
	JsonbValue	v;
	JsonbValue *content = NULL;

	if (JB_ROOT_IS_SCALAR(message))
	{
		if (!JsonbExtractScalar(&message->root, &v) || v.type != jbvString)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("llm_chat: message must be content blocks, a string, or a user message object"),
					 errhint("Pass e.g. '[{\"type\": \"tool_result\", \"tool_use_id\": \"...\", \"content\": \"...\"}]'.")));
		m->content = message;
	}
	else if (JB_ROOT_IS_ARRAY(message))
		m->content = message;
	else
	{
		const char *role = json_get_cstring(&message->root, "role");

		content = json_get(&message->root, "content");
		if (role == NULL || strcmp(role, "user") != 0 || content == NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("llm_chat: a message object must have \"role\": \"user\" and \"content\""),
					 errhint("The answer is appended by llm_chat itself; pass only the user's turn.")));
		m->content = JsonbValueToJsonb(content);
	}
	m->bytes = strlen(chat_jsonb_text(m->content));
	m->starts = !(JB_ROOT_IS_ARRAY(m->content) && !JB_ROOT_IS_SCALAR(m->content) &&
				  has_tool_result(&m->content->root));
}

Jsonb *
chat_text_message(const char *text, ChatMessage *m)
{
	StringInfoData buf;

	initStringInfo(&buf);
	json_append_string(&buf, text);
	m->content = jsonb_from_cstring(buf.data);
	m->bytes = buf.len;
	m->starts = true;
	return m->content;
}

/*
 * The conversation's options with the call's over them, its system prompt
 * (summary included), and tags "conversation" (and "purpose", when given)
 * over the caller's: the log always names the conversation truly.
 */
Jsonb *
chat_options(ChatConversation *conv, Jsonb *call_options, const char *system, const char *purpose)
{
	Jsonb	   *opts = conv->options;
	StringInfoData add;
	JsonbContainer *tags;
	bool		first = true;

	if (call_options != NULL)
	{
		if (!JB_ROOT_IS_OBJECT(call_options) || JB_ROOT_IS_SCALAR(call_options))
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("llm_chat: options must be a JSON object")));
		if (json_get(&call_options->root, "system") != NULL)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("llm_chat takes the system prompt from the conversation, not from option \"system\""),
					 errhint("UPDATE llm.conversations SET system = ... WHERE id = %lld.", (long long) conv->id)));
		opts = DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(opts),
												  JsonbPGetDatum(call_options)));
	}
	initStringInfo(&add);
	appendStringInfoChar(&add, '{');
	if (system != NULL)
	{
		json_append_key(&add, &first, "system");
		json_append_string(&add, system);
	}
	tags = json_get_object(&opts->root, "tags");
	if (json_get(&opts->root, "tags") == NULL || tags != NULL)
	{
		json_append_key(&add, &first, "tags");
		appendStringInfoChar(&add, '{');
		if (tags != NULL && JsonContainerSize(tags) > 0)
		{
			Jsonb	   *own = JsonbValueToJsonb(json_get(&opts->root, "tags"));
			char	   *t;

			/* the caller's tags, then ours (a key of theirs is replaced) */
			own = DatumGetJsonbP(DirectFunctionCall2(jsonb_delete, JsonbPGetDatum(own),
													 CStringGetTextDatum("conversation")));
			if (purpose != NULL)
				own = DatumGetJsonbP(DirectFunctionCall2(jsonb_delete, JsonbPGetDatum(own),
														 CStringGetTextDatum("purpose")));
			t = chat_jsonb_text(own);
			if (strlen(t) > 2)
			{
				appendBinaryStringInfo(&add, t + 1, strlen(t) - 2);
				appendStringInfoChar(&add, ',');
			}
		}
		appendStringInfo(&add, "\"conversation\":\"" INT64_FORMAT "\"", conv->id);
		if (purpose != NULL)
			appendStringInfo(&add, ",\"purpose\":\"%s\"", purpose);
		appendStringInfoChar(&add, '}');
	}
	appendStringInfoChar(&add, '}');
	return DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(opts),
											  JsonbPGetDatum(jsonb_from_cstring(add.data))));
}


/*
 * One call as the caller, start to end; its failure is raised.  Returns
 * the answer (the Messages object with "gateway").
 */
Jsonb *
chat_call(const char *alias, Jsonb *history, Jsonb *options, LlmCallResult *r)
{
	LlmCallSpec spec;
	LlmPreparedCall call;
	bool		isnull;

	llm_check_can_call(alias);
	validate_call(alias, history, options, &spec);
	llm_build_call(alias, &spec, &call);
	channel_call(&call.hdr, call.data.data, call.data.len, call.hdr.timeout_ms, r);
	pfree(call.data.data);
	return DatumGetJsonbP(llm_call_result(r, false, false, &isnull));
}

void
chat_answer_parts(Jsonb *answer, ChatAnswer *a)
{
	JsonbContainer *usage = json_get_object(&answer->root, "usage");
	JsonbContainer *gw = json_get_object(&answer->root, "gateway");
	JsonbValue *content = json_get(&answer->root, "content");
	JsonbValue *cost = gw ? json_get(gw, "cost_usd") : NULL;
	int64		n;

	memset(a, 0, sizeof(*a));
	a->content = content ? JsonbValueToJsonb(content) : jsonb_from_cstring("[]");
	if (usage && json_get_int64(usage, "input_tokens", &n))
		a->input_tokens = n;
	if (usage && json_get_int64(usage, "cache_read_input_tokens", &n))
		a->input_tokens += n;
	if (usage && json_get_int64(usage, "cache_creation_input_tokens", &n))
		a->input_tokens += n;
	if (usage && json_get_int64(usage, "output_tokens", &n))
		a->output_tokens = n;
	if (!gw || !json_get_int64(gw, "request_id", &a->request_id))
		a->request_id = 0;
	a->stop_reason = (char *) json_get_cstring(&answer->root, "stop_reason");
	if (cost && cost->type == jbvNumeric)
		a->cost_usd = DatumGetCString(DirectFunctionCall1(numeric_out,
														  NumericGetDatum(cost->val.numeric)));
}

