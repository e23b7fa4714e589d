/*-------------------------------------------------------------------------
 *
 * chat.c
 *	  llm_chat: continue a conversation.  Two call kinds (text and jsonb),
 *	  so the LLM Pipeline runs many conversations' calls at once.
 *
 * runs in: backend.
 *
 * prepare locks the conversation (FOR NO KEY UPDATE, until the caller's
 * transaction ends: a second llm_chat on it, from any session, waits and
 * then reads the first's turns), fits its history to the budget
 * (chat_context.c) and builds the call; result appends the user turn and
 * the answer in the caller's transaction, only when the call succeeded.
 *
 * Between the two, the call's state waits in this backend's in-flight
 * list, one entry per conversation: a second call on a conversation whose
 * first is unanswered would be sent the history without the first's
 * turns, so the pipeline holds it back (llm_chat_busy) until the first is
 * taken, and anything else making one is refused.  The list lives in
 * TopTransactionContext; a (sub)transaction's abort forgets its entries,
 * and a pipeline that abandons a call forgets its entry (abandoned).
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "utils/builtins.h"
#include "utils/memutils.h"

#include "backend/call_result.h"
#include "backend/conversation.h"
#include "backend/run_as.h"
#include "backend/sql_api.h"
#include "backend/validate.h"

PG_FUNCTION_INFO_V1(llm_chat);
PG_FUNCTION_INFO_V1(llm_chat_json);

/* a call prepared and not yet answered: what its turns will need */
typedef struct ChatInFlight
{
	int64		conversation;
	SubTransactionId subid;
	int			seq;			/* of the user turn; the answer is seq + 1 */
	Jsonb	   *message;
	bool		starts;
	int64		message_tokens;
	int			first_seq;
	int			summary_seq;	/* 0: none */
	int64		est_raw;
} ChatInFlight;

static List *in_flight = NIL;	/* of ChatInFlight, in TopTransactionContext */

static ChatInFlight *
in_flight_find(int64 conversation)
{
	ListCell   *lc;

	foreach(lc, in_flight)
		if (((ChatInFlight *) lfirst(lc))->conversation == conversation)
			return lfirst(lc);
	return NULL;
}

static void
in_flight_forget(ChatInFlight *e)
{
	in_flight = list_delete_ptr(in_flight, e);
	pfree(e->message);
	pfree(e);
}

static void
chat_xact_callback(XactEvent event, void *arg)
{
	in_flight = NIL;			/* its memory goes with TopTransactionContext */
}

static void
chat_subxact_callback(SubXactEvent event, SubTransactionId mySubid,
					  SubTransactionId parentSubid, void *arg)
{
	ListCell   *lc;

	foreach(lc, in_flight)
	{
		ChatInFlight *e = lfirst(lc);

		if (e->subid != mySubid)
			continue;
		if (event == SUBXACT_EVENT_COMMIT_SUB)
			e->subid = parentSubid;
		else if (event == SUBXACT_EVENT_ABORT_SUB)
			in_flight = foreach_delete_current(in_flight, lc);
	}
}

void
chat_define_callbacks(void)
{
	RegisterXactCallback(chat_xact_callback, NULL);
	RegisterSubXactCallback(chat_subxact_callback, NULL);
}

static int64
conversation_arg(const NullableDatum *args)
{
	if (args[0].isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("conversation must not be NULL"),
				 errhint("Pass the id llm.new_conversation() returned.")));
	if (args[1].isnull)
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("message must not be NULL"),
				 errhint("Filter out NULL rows, or coalesce() the message.")));
	return DatumGetInt64(args[0].value);
}

static void
prepare(const NullableDatum *args, bool text_form, LlmPreparedCall *call)
{
	int64		id = conversation_arg(args);
	ChatConversation conv;
	ChatMessage msg;
	ChatContext ctx;
	Jsonb	   *call_options = text_form ? NULL : options_arg(&args[2]);
	LlmCallSpec spec;
	ChatInFlight *e;
	MemoryContext old;

	if (in_flight_find(id) != NULL)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("conversation " INT64_FORMAT " is already being continued by this session's running statement", id),
				 errdetail("Its next turn is sent only after the answer to the previous one is appended."),
				 errhint("Continue a conversation once per statement (several rows of one LLM Pipeline wait for each other), or in a loop.")));
	conversation_load(id, true, &conv);
	llm_check_can_call(conv.alias);
	if (text_form)
		chat_text_message(text_to_cstring(DatumGetTextPP(args[1].value)), &msg);
	else
		chat_message_parse(DatumGetJsonbP(args[1].value), &msg);
	chat_fit(&conv, &msg, chat_options(&conv, call_options, NULL, NULL), &ctx);
	validate_call(conv.alias, ctx.history, chat_options(&conv, call_options, ctx.system, NULL), &spec);
	llm_build_call(conv.alias, &spec, call);

	old = MemoryContextSwitchTo(TopTransactionContext);
	e = palloc0(sizeof(ChatInFlight));
	e->conversation = id;
	e->subid = GetCurrentSubTransactionId();
	e->seq = conv.next_seq;
	e->message = DatumGetJsonbPCopy(JsonbPGetDatum(msg.content));
	e->starts = msg.starts;
	e->message_tokens = ctx.message_tokens;
	e->first_seq = ctx.first < conv.nturns ? conv.turns[ctx.first].seq : conv.next_seq;
	e->summary_seq = ctx.summary >= 0 ? conv.turns[ctx.summary].seq : 0;
	e->est_raw = ctx.est_raw;
	in_flight = lappend(in_flight, e);
	MemoryContextSwitchTo(old);
}

/* The user turn and the answer, as llm_gateway_worker, in the caller's transaction. */
static void
append_turns(ChatInFlight *e, const ChatAnswer *a)
{
	/*
	 * the answer without empty text blocks (a history holding one is
	 * refused by providers); an answer left with nothing is stored as []
	 * and left out of later histories with its question
	 */
	static const char *const sql =
	"WITH a AS (SELECT CASE WHEN jsonb_typeof($7) = 'array' THEN"
	"    (SELECT coalesce(jsonb_agg(b ORDER BY n), '[]') FROM jsonb_array_elements($7) WITH ORDINALITY e(b, n)"
	"      WHERE NOT (b->>'type' = 'text' AND coalesce(b->>'text', '') = ''))"
	"    ELSE $7 END AS content)"
	"INSERT INTO llm.conversation_turns (conversation, seq, role, content, bytes, starts_exchange,"
	"    tokens, request_id, input_tokens, cost_usd, stop_reason, context_first_seq,"
	"    context_summary_seq, context_est_tokens)"
	" SELECT $1, $2, 'user', $3, octet_length($3::text), $4, $5, $6, NULL::int8, NULL::numeric,"
	"        NULL::text, NULL::int4, NULL::int4, NULL::int8"
	" UNION ALL"
	" SELECT $1, $2 + 1, 'assistant', a.content, octet_length(a.content::text), false, $8, $6, $9,"
	"        $10::numeric, $11, $12, $13, $14 FROM a";
	Oid			types[14] = {INT8OID, INT4OID, JSONBOID, BOOLOID, INT8OID, INT8OID, JSONBOID,
		INT8OID, INT8OID, TEXTOID, TEXTOID, INT4OID, INT4OID, INT8OID};
	Datum		v[14];
	char		nulls[15] = "              ";

	v[0] = Int64GetDatum(e->conversation);
	v[1] = Int32GetDatum(e->seq);
	v[2] = JsonbPGetDatum(e->message);
	v[3] = BoolGetDatum(e->starts);
	v[4] = Int64GetDatum(e->message_tokens);
	v[5] = Int64GetDatum(a->request_id);
	nulls[5] = a->request_id > 0 ? ' ' : 'n';
	v[6] = JsonbPGetDatum(a->content);
	v[7] = Int64GetDatum(a->output_tokens);
	v[8] = Int64GetDatum(a->input_tokens);
	v[9] = a->cost_usd ? CStringGetTextDatum(a->cost_usd) : (Datum) 0;
	nulls[9] = a->cost_usd ? ' ' : 'n';
	v[10] = a->stop_reason ? CStringGetTextDatum(a->stop_reason) : (Datum) 0;
	nulls[10] = a->stop_reason ? ' ' : 'n';
	v[11] = Int32GetDatum(e->first_seq);
	v[12] = Int32GetDatum(e->summary_seq);
	nulls[12] = e->summary_seq > 0 ? ' ' : 'n';
	v[13] = Int64GetDatum(e->est_raw);

	SPI_connect();
	conversation_spi(run_as_gateway_role(), sql, 14, types, v, nulls, SPI_OK_INSERT);
	SPI_finish();
}

static Datum
result(const NullableDatum *args, const LlmCallResult *r, bool on_error_null, bool want_text,
	   bool *isnull)
{
	int64		id = DatumGetInt64(args[0].value);
	ChatInFlight *e = in_flight_find(id);
	ChatInFlight copy;

	if (e == NULL)
		elog(ERROR, "llm_gateway: no llm_chat call in flight on conversation " INT64_FORMAT, id);
	copy = *e;
	copy.message = DatumGetJsonbPCopy(JsonbPGetDatum(e->message));
	in_flight_forget(e);

	*isnull = false;
	if (r->outcome == LLM_OUTCOME_OK)
	{
		Jsonb	   *answer = DatumGetJsonbP(llm_call_result(r, on_error_null, false, isnull));
		ChatAnswer	a;

		chat_answer_parts(answer, &a);
		append_turns(&copy, &a);
		if (!want_text)
			return JsonbPGetDatum(answer);
	}
	/* the text, or the failure: raised, NULL or an error object (on_error) */
	return llm_call_result(r, on_error_null, want_text, isnull);
}

static void
chat_prepare(const NullableDatum *args, LlmPreparedCall *call)
{
	prepare(args, true, call);
}

static void
chat_json_prepare(const NullableDatum *args, LlmPreparedCall *call)
{
	prepare(args, false, call);
}

static Datum
chat_result(const NullableDatum *args, const LlmCallResult *r, bool on_error_null, bool *isnull)
{
	return result(args, r, on_error_null, true, isnull);
}

static Datum
chat_json_result(const NullableDatum *args, const LlmCallResult *r, bool on_error_null,
				 bool *isnull)
{
	return result(args, r, on_error_null, false, isnull);
}

/* for the pipeline: an earlier call of this backend on the conversation is unanswered */
static bool
chat_busy(const NullableDatum *args)
{
	return !args[0].isnull && in_flight_find(DatumGetInt64(args[0].value)) != NULL;
}

/* for the pipeline: a prepared call will never be taken */
static void
chat_abandoned(const NullableDatum *args)
{
	ChatInFlight *e = args[0].isnull ? NULL : in_flight_find(DatumGetInt64(args[0].value));

	if (e != NULL)
		in_flight_forget(e);
}

const LlmCallKind llm_chat_kind = {
	.name = "llm_chat", .fn = llm_chat, .prepare = chat_prepare, .result = chat_result,
	.options_arg = 2, .has_output = true, .conversation = true,
	.busy = chat_busy, .abandoned = chat_abandoned
};
const LlmCallKind llm_chat_json_kind = {
	.name = "llm_chat_json", .fn = llm_chat_json, .prepare = chat_json_prepare,
	.result = chat_json_result, .options_arg = 2, .has_output = true, .conversation = true,
	.busy = chat_busy, .abandoned = chat_abandoned
};

/*
 * llm_chat(conversation bigint, message text) -> text
 */
Datum
llm_chat(PG_FUNCTION_ARGS)
{
	return llm_run_call(&llm_chat_kind, fcinfo);
}

/*
 * llm_chat(conversation bigint, message jsonb, options jsonb DEFAULT '{}') -> jsonb
 */
Datum
llm_chat_json(PG_FUNCTION_ARGS)
{
	return llm_run_call(&llm_chat_json_kind, fcinfo);
}
