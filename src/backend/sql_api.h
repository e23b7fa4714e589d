/*-------------------------------------------------------------------------
 *
 * sql_api.h
 *	  What sql_api.c shares with the other call paths (async_api.c, the
 *	  pipeline node): each provider-calling function as an LlmCallKind, one
 *	  way to build its call and one to turn its result into SQL (through
 *	  call_result.c), so llm_messages, llm_await and a pipelined row behave
 *	  alike.
 *
 * runs in: backend.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_SQL_API_H
#define LLM_SQL_API_H

#include "fmgr.h"
#include "lib/stringinfo.h"
#include "utils/jsonb.h"

#include "channel/channel.h"
#include "backend/call_result.h"

/* One call, checked and built, ready for channel_submit / channel_call. */
typedef struct LlmPreparedCall
{
	StringInfoData data;		/* what follows hdr (palloc'd) */
	bool		on_error_null;	/* the call's on_error: a failure is an answer */
	LlmRequestMsg hdr;			/* last: its data[] is the flexible tail */
} LlmPreparedCall;

/*
 * A SQL function that calls a provider, described so that every way of
 * running it (the function itself, the pipeline node that runs many rows'
 * calls at once) builds the call and turns its result into SQL alike.
 * The pipeline node recognises a call in a plan by its C symbol, name,
 * resolving to fn; adding a function to sql_api.c's list is all it takes
 * for the node to pipeline it.
 */
typedef struct LlmCallKind
{
	const char *name;
	PGFunction	fn;
	/* check the SQL arguments (all of them, defaults filled) and build the call */
	void		(*prepare) (const NullableDatum *args, LlmPreparedCall *call);
	/*
	 * the finished call as SQL: the answer, NULL / an error object, or
	 * raise; args are the ones prepare had (llm_extract reads its schema
	 * there, and may make one more call)
	 */
	Datum		(*result) (const NullableDatum *args, const LlmCallResult *r,
						   bool on_error_null, bool *isnull);
	/* for llm.estimate: the SQL argument holding the options (2 or 3) */
	int			options_arg;
	/* for llm.estimate: the call can produce output tokens (not embeddings) */
	bool		has_output;
	/* argument 0 is a conversation (llm_chat), not a model alias */
	bool		conversation;
	/*
	 * optional, for the pipeline: busy says an earlier call of this backend
	 * must be answered before this one is prepared (the pipeline waits);
	 * abandoned is told of a prepared call that will never be taken
	 */
	bool		(*busy) (const NullableDatum *args);
	void		(*abandoned) (const NullableDatum *args);
} LlmCallKind;

extern const LlmCallKind llm_messages_kind;
/* one blocking call of a kind, as its SQL function runs it */
extern Datum llm_run_call(const LlmCallKind *kind, FunctionCallInfo fcinfo);
extern const LlmCallKind llm_embed_kind;	/* embed_sql.c */
extern const LlmCallKind llm_chat_kind; /* chat.c */
extern const LlmCallKind llm_chat_json_kind;
extern bool llm_calls_forbidden;	/* llm.estimate's exact count is running */
extern const LlmCallKind *llm_call_kind_named(const char *symbol);

/* the steps of building a call, for kinds defined in other files */
struct LlmCallSpec;
extern void llm_check_can_call(const char *alias);
extern void llm_build_call(const char *alias, const struct LlmCallSpec *spec,
						   LlmPreparedCall *call);
extern Jsonb *options_arg(const NullableDatum *arg);
extern void require_args(const NullableDatum *args, const char *input, const char *hint);

#endif							/* LLM_SQL_API_H */
