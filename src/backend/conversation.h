/*-------------------------------------------------------------------------
 *
 * conversation.h
 *	  Conversations: what chat_context.c (loading a conversation and
 *	  fitting its history to the budget), chat.c (llm_chat), chat_replay.c
 *	  and conversation_sql.c (create, fork, share) share.
 *
 * runs in: backend.  Reads that decide access run as the caller (row
 * security); everything else runs as llm_gateway_worker (run_as.h), after
 * that check.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CONVERSATION_H
#define LLM_CONVERSATION_H

#include "nodes/nodes.h"
#include "utils/jsonb.h"

#include "channel/channel.h"

/* the budget when neither the policy nor a route says (docs/design.md §27) */
#define CHAT_DEFAULT_BUDGET_TOKENS	16000
/* estimate until the first answer corrects it: 3 bytes of JSON per token */
#define CHAT_DEFAULT_RATIO			(4.0 / 3.0)
#define CHAT_DEFAULT_SUMMARY_TOKENS 512

/* One turn as the history is fitted: its size, not (yet) its content. */
typedef struct ChatTurn
{
	int			seq;
	char		role;			/* 'u'ser, 'a'ssistant, 's'ummary */
	bool		starts;			/* a user turn that answers no tool call */
	int64		bytes;			/* content as JSON text */
	int			summary_through;	/* summary: the last seq it stands for */
	int64		input_tokens;	/* assistant: the provider's count, else -1 */
	int64		est_tokens;		/* assistant: the gateway's raw estimate, else -1 */
	int64		tokens;			/* the turn's tokens column, else -1 */
	int			context_first_seq;	/* assistant: the first turn its request sent */
	char	   *cost_usd;		/* assistant: numeric text, or NULL */
	Jsonb	   *content;		/* loaded only for the turns sent */
} ChatTurn;

typedef struct ChatConversation
{
	int64		id;
	char	   *owner;
	char	   *alias;
	char	   *system;			/* NULL: none */
	Jsonb	   *options;
	Jsonb	   *policy;
	bool		may_continue;	/* owner, llm_admin, or shared with can_continue */
	ChatTurn   *turns;			/* in seq order, inherited (fork) turns included */
	int			nturns;
	int			loaded_from;	/* turns before this seq are not loaded */
	int			next_seq;
} ChatConversation;

typedef struct ChatPolicy
{
	bool		summarize;		/* else drop_oldest */
	int64		budget_tokens;	/* 0: from the routes */
	char	   *summary_model;	/* NULL: the conversation's alias */
	int64		summary_max_tokens;
} ChatPolicy;

/* The new user message of a call. */
typedef struct ChatMessage
{
	Jsonb	   *content;		/* a string or content blocks */
	int64		bytes;
	bool		starts;			/* holds no tool_result */
} ChatMessage;

/* What one call sends. */
typedef struct ChatContext
{
	int			first;			/* index of the first turn sent; nturns: none */
	int			summary;		/* index of the summary turn sent, or -1 */
	int64		est_raw;		/* bytes / 4 of the request (system, options, history) */
	int64		message_tokens; /* the corrected estimate of the new message */
	Jsonb	   *history;		/* the messages, the new one last */
	char	   *system;			/* the system prompt, with the summary */
} ChatContext;

/* the header of a summary in the system prompt */
#define SUMMARY_HEADER "\n\nSummary of the earlier part of this conversation (those turns are not repeated below):\n"

/* chat_context.c */
extern void conversation_spi(Oid role, const char *sql, int nargs, Oid *types, Datum *values,
							 const char *nulls, int expect);
extern void conversation_load(int64 id, bool lock, ChatConversation *conv);
extern int64 chat_budget(const char *alias, int64 max_tokens, int64 policy_budget, bool *known);
extern void chat_fit(ChatConversation *conv, const ChatMessage *msg, Jsonb *options,
					 ChatContext *ctx);
extern void chat_fit_replay(ChatConversation *conv, ChatTurn *turns, int nturns,
							const char *alias, const ChatMessage *msg, Jsonb *options,
							ChatContext *ctx);
extern void chat_load_all_turns(ChatConversation *conv);
extern void chat_load_all_contents(ChatConversation *conv);
extern char *chat_estimate_site(Node *arg, double *bytes);

/* chat_message.c */
extern char *chat_jsonb_text(Jsonb *j);
extern void chat_policy_parse(Jsonb *policy, ChatPolicy *p);
extern void chat_message_parse(Jsonb *message, ChatMessage *m);
extern Jsonb *chat_text_message(const char *text, ChatMessage *m);
extern Jsonb *chat_options(ChatConversation *conv, Jsonb *call_options, const char *system,
						   const char *purpose);

/* the parts of an answer a turn keeps */
typedef struct ChatAnswer
{
	Jsonb	   *content;
	int64		input_tokens;	/* cache reads and writes included */
	int64		output_tokens;
	int64		request_id;
	char	   *stop_reason;
	char	   *cost_usd;		/* numeric text, or NULL */
} ChatAnswer;

extern void chat_answer_parts(Jsonb *answer, ChatAnswer *a);
extern Jsonb *chat_call(const char *alias, Jsonb *history, Jsonb *options, LlmCallResult *r);

/* chat_summary.c */
extern char *chat_content_text(Jsonb *content);
extern int	chat_summarize(ChatConversation *conv, const ChatPolicy *p, const char *old, int from,
						   int to, char **text);

/* chat.c */
extern void chat_define_callbacks(void);

#endif							/* LLM_CONVERSATION_H */
