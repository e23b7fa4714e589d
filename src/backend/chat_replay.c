/*-------------------------------------------------------------------------
 *
 * chat_replay.c
 *	  llm.replay_conversation: the user turns of a conversation sent, in
 *	  order, to another model alias with the replayed history, and the
 *	  answers side by side.
 *
 * runs in: backend.
 *
 * Nothing is stored but the calls' llm.requests rows (tagged "purpose":
 * "replay").  A replay keeps to the original's tool path: a tool_result
 * turn is sent for the replayed model's own tool calls when it made the
 * same ones (the nth call of a tool name answers the nth), with their ids;
 * when it did not, the replayed history takes the original assistant turn
 * instead, so the original tool results still make sense and the later
 * turns stay comparable.  The history is fitted by drop_oldest to the
 * replay alias's budget (a replay makes no summary calls).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "funcapi.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/tuplestore.h"

#include "common/json_util.h"
#include "backend/conversation.h"

PG_FUNCTION_INFO_V1(llm_replay_conversation);

/* the id of the nth tool_use of name in content (blocks); NULL if none */
static const char *
nth_tool_use(JsonbContainer *content, const char *name, int nth)
{
	int			i;

	for (i = 0; i < json_array_size(content); i++)
	{
		JsonbContainer *b = json_value_container(json_array_elem(content, i), false);
		const char *type = b ? json_get_cstring(b, "type") : NULL;
		const char *n = b ? json_get_cstring(b, "name") : NULL;

		if (type && strcmp(type, "tool_use") == 0 && n && strcmp(n, name) == 0 && nth-- == 0)
			return json_get_cstring(b, "id");
	}
	return NULL;
}

/* which tool_use of content has id: its name and rank among calls of that name */
static bool
find_tool_use(JsonbContainer *content, const char *id, const char **name, int *nth)
{
	int			i;

	for (i = 0; i < json_array_size(content); i++)
	{
		JsonbContainer *b = json_value_container(json_array_elem(content, i), false);
		const char *type = b ? json_get_cstring(b, "type") : NULL;
		const char *bid = b ? json_get_cstring(b, "id") : NULL;

		if (type && strcmp(type, "tool_use") == 0 && bid && strcmp(bid, id) == 0)
		{
			int			j;

			*name = json_get_cstring(b, "name");
			*nth = 0;
			for (j = 0; j < i; j++)
			{
				JsonbContainer *p = json_value_container(json_array_elem(content, j), false);
				const char *pt = p ? json_get_cstring(p, "type") : NULL;
				const char *pn = p ? json_get_cstring(p, "name") : NULL;

				if (pt && strcmp(pt, "tool_use") == 0 && pn && *name && strcmp(pn, *name) == 0)
					(*nth)++;
			}
			return *name != NULL;
		}
	}
	return false;
}

/*
 * The tool_result blocks of message (an original user turn) pointed at the
 * replayed answer's calls; NULL when the replayed model did not make the
 * calls the original did.
 */
static Jsonb *
retarget_tool_results(Jsonb *message, JsonbContainer *original_answer,
					  JsonbContainer *replayed_answer)
{
	JsonbContainer *blocks = &message->root;
	StringInfoData buf;
	int			i;

	if (original_answer == NULL || replayed_answer == NULL ||
		JsonContainerIsScalar(original_answer) || JsonContainerIsScalar(replayed_answer))
		return NULL;
	initStringInfo(&buf);
	appendStringInfoChar(&buf, '[');
	for (i = 0; i < json_array_size(blocks); i++)
	{
		JsonbContainer *b = json_value_container(json_array_elem(blocks, i), false);
		const char *type = b ? json_get_cstring(b, "type") : NULL;

		if (i > 0)
			appendStringInfoChar(&buf, ',');
		if (type && strcmp(type, "tool_result") == 0)
		{
			const char *name;
			int			nth;
			const char *id = json_get_cstring(b, "tool_use_id");
			const char *new_id;
			Jsonb	   *block = JsonbValueToJsonb(json_array_elem(blocks, i));
			StringInfoData set;

			if (id == NULL || !find_tool_use(original_answer, id, &name, &nth) ||
				(new_id = nth_tool_use(replayed_answer, name, nth)) == NULL)
				return NULL;
			initStringInfo(&set);
			appendStringInfoString(&set, "{\"tool_use_id\":");
			json_append_string(&set, new_id);
			appendStringInfoChar(&set, '}');
			block = DatumGetJsonbP(DirectFunctionCall2(jsonb_concat, JsonbPGetDatum(block),
													   JsonbPGetDatum(jsonb_from_cstring(set.data))));
			json_append_container(&buf, &block->root);
		}
		else
			json_append_value(&buf, json_array_elem(blocks, i));
	}
	appendStringInfoChar(&buf, ']');
	return jsonb_from_cstring(buf.data);
}

static Datum
numeric_or_null(const char *text, bool *isnull)
{
	*isnull = (text == NULL);
	return text ? DirectFunctionCall3(numeric_in, CStringGetDatum(text),
									  ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1)) : (Datum) 0;
}

/*
 * llm.replay_conversation(conversation bigint, model text)
 *	 RETURNS TABLE (seq, user_turn, original, replayed, original_tokens,
 *					replayed_tokens, original_cost, replayed_cost)
 */
Datum
llm_replay_conversation(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	ChatConversation conv;
	char	   *alias;
	ChatTurn   *rt;				/* the replayed history */
	int			nrt = 0;
	int			i;

	if (PG_ARGISNULL(0) || PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("conversation and model must not be NULL")));
	alias = text_to_cstring(PG_GETARG_TEXT_PP(1));
	InitMaterializedSRF(fcinfo, 0);
	conversation_load(PG_GETARG_INT64(0), false, &conv);
	chat_load_all_contents(&conv);
	rt = palloc0(sizeof(ChatTurn) * (2 * conv.nturns + 2));

	for (i = 0; i < conv.nturns; i++)
	{
		ChatTurn   *u = &conv.turns[i];
		ChatTurn   *orig = NULL;
		ChatMessage msg;
		ChatContext ctx;
		ChatAnswer	a;
		LlmCallResult r;
		Datum		values[8];
		bool		nulls[8] = {0};
		int			j;

		if (u->role != 'u')
			continue;
		for (j = i + 1; j < conv.nturns && conv.turns[j].role == 's'; j++)
			;
		if (j < conv.nturns && conv.turns[j].role == 'a')
			orig = &conv.turns[j];

		chat_message_parse(u->content, &msg);
		if (!msg.starts && nrt > 0)
		{
			ChatTurn   *prev_orig = NULL;
			Jsonb	   *moved;

			for (j = i - 1; j >= 0 && conv.turns[j].role != 'a'; j--)
				;
			if (j >= 0)
				prev_orig = &conv.turns[j];
			moved = retarget_tool_results(msg.content, prev_orig ? &prev_orig->content->root : NULL,
										  &rt[nrt - 1].content->root);
			if (moved != NULL)
				chat_message_parse(moved, &msg);
			else if (prev_orig != NULL)
			{
				rt[nrt - 1] = *prev_orig;	/* stay on the original's tool path */
				rt[nrt - 1].input_tokens = -1;	/* another model's count */
			}
		}

		chat_fit_replay(&conv, rt, nrt, alias, &msg, chat_options(&conv, NULL, NULL, "replay"), &ctx);
		chat_answer_parts(chat_call(alias, ctx.history,
									chat_options(&conv, NULL, ctx.system, "replay"), &r), &a);

		rt[nrt] = *u;
		rt[nrt].content = msg.content;
		rt[nrt].bytes = msg.bytes;
		nrt++;
		memset(&rt[nrt], 0, sizeof(ChatTurn));
		rt[nrt].role = 'a';
		rt[nrt].content = a.content;
		rt[nrt].input_tokens = a.input_tokens;	/* the replay model's rate, for the next fit */
		rt[nrt].est_tokens = ctx.est_raw;
		rt[nrt].bytes = strlen(JsonbToCString(NULL, &a.content->root, VARSIZE(a.content)));
		nrt++;

		values[0] = Int32GetDatum(u->seq);
		values[1] = JsonbPGetDatum(u->content);
		values[2] = orig ? JsonbPGetDatum(orig->content) : (Datum) 0;
		nulls[2] = (orig == NULL);
		values[3] = JsonbPGetDatum(a.content);
		values[4] = Int64GetDatum(orig ? Max(orig->input_tokens, 0) + Max(orig->tokens, 0) : 0);
		nulls[4] = (orig == NULL || orig->tokens < 0);
		values[5] = Int64GetDatum(a.input_tokens + a.output_tokens);
		values[6] = numeric_or_null(orig ? orig->cost_usd : NULL, &nulls[6]);
		values[7] = numeric_or_null(a.cost_usd, &nulls[7]);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
