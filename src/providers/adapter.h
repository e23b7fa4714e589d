/*-------------------------------------------------------------------------
 *
 * provider.h
 *	  The adapter interface: one LlmProvider per wire protocol, and the
 *	  structs that carry a call to an adapter and its answer back.
 *
 * runs in: worker (and backends, for the diagnostic adapter functions).
 *
 * Adapters are pure: no curl, no SPI, no shared memory, no globals and no
 * ereport(ERROR).  Everything comes in as structs and goes out as structs
 * allocated in CurrentMemoryContext (the request's context), so fixture
 * tests can drive them directly.  Status classes common to every provider
 * (429, 5xx, timeouts) are classified once in attempt.c; an adapter only
 * adds its own quirks (Anthropic 529, an error inside a 200 body, an
 * OpenAI 429 that means "out of quota").
 *
 * Vocabulary:
 *	 canonical request  the Anthropic Messages request body the backend
 *						validated (messages, system, max_tokens, ...), with
 *						no "model" key: the target supplies it.
 *	 target				one (provider, upstream model) pair of a route.
 *	 answer				the canonical Messages "message", in parts; the
 *						worker assembles the final JSON (answer.c).
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_PROVIDER_H
#define LLM_PROVIDER_H

#include "lib/stringinfo.h"
#include "nodes/pg_list.h"
#include "utils/jsonb.h"

/* What a failed attempt means for the router. */
typedef enum LlmFailClass
{
	LLM_FAIL_NONE = 0,			/* not a failure */
	LLM_FAIL_RETRYABLE,			/* retry, then fall over to the next target */
	LLM_FAIL_CREDENTIAL,		/* this key is refused: try another target */
	LLM_FAIL_FATAL				/* the request itself is bad: fail the call */
} LlmFailClass;

/*
 * An error as a value.  Messages never contain a secret: adapters scrub
 * provider text with provider_scrub() before storing it.
 */
typedef struct LlmError
{
	int			sqlerrcode;		/* MAKE_SQLSTATE code for the caller */
	char	   *message;		/* primary message */
	char	   *detail;			/* may be NULL */
	char	   *hint;			/* may be NULL */
	int			http_status;	/* provider status, 0 if none */
	char	   *provider_type;	/* provider's error type/code, may be NULL */
	LlmFailClass fail_class;
	double		retry_after_s;	/* from the answer's headers or body; < 0 = none */
} LlmError;

typedef struct LlmHttpHeader
{
	char	   *name;			/* lower case */
	char	   *value;
} LlmHttpHeader;

/* What an adapter asks the HTTP layer to send (always a POST). */
typedef struct LlmHttpRequest
{
	char	   *url;
	List	   *headers;		/* of char *, "Name: value" */
	StringInfoData body;
} LlmHttpRequest;

/* What came back. */
typedef struct LlmHttpResult
{
	long		status;			/* HTTP status */
	const char *body;
	size_t		body_len;
	List	   *headers;		/* of LlmHttpHeader *, or NIL and ... */
	/* ... looked up on demand: only errors read headers, so answers skip them */
	const char *(*header_lookup) (void *arg, const char *name);
	void	   *header_arg;
} LlmHttpResult;

struct LlmProvider;

/* One target of a route, as the worker resolved it. */
typedef struct LlmTarget
{
	const struct LlmProvider *provider;
	const char *provider_name;
	const char *base_url;		/* no trailing slash */
	const char *upstream_model;
	const char *secret;			/* plaintext key, worker only; NULL if none */
	Jsonb	   *provider_options;	/* llm.providers.options, never NULL */
	Jsonb	   *route_options;	/* llm.routes.options, never NULL */
} LlmTarget;

/* One call, as adapters see it. */
typedef struct LlmCall
{
	Jsonb	   *request;		/* canonical request (see above) */
	int64		request_id;		/* llm.requests.id, for idempotency headers */
} LlmCall;

/* A successful answer in canonical parts. */
typedef struct LlmAnswer
{
	char	   *id;				/* provider's id, or NULL (worker invents one) */
	char	   *model;			/* upstream model that answered */
	StringInfoData content;		/* JSON array of Messages content blocks */
	char	   *stop_reason;	/* normalised: end_turn, max_tokens, ... */
	char	   *stop_sequence;	/* or NULL */
	int64		input_tokens;	/* excluding cache reads and writes */
	int64		output_tokens;
	int64		cache_creation_input_tokens;
	int64		cache_read_input_tokens;
} LlmAnswer;

typedef struct LlmProvider
{
	const char *kind;			/* value of llm.providers.kind */
	const char *auth_hint;		/* what the secret is, for error hints */

	/* canonical request -> HTTP request; false + err on a request it cannot express */
	bool		(*build_request) (const LlmCall *call, const LlmTarget *target,
								  LlmHttpRequest *out, LlmError *err);

	/* 2xx answer -> canonical answer; false + err for malformed or in-band errors */
	bool		(*parse_response) (const LlmCall *call, const LlmTarget *target,
								   const LlmHttpResult *res, LlmAnswer *out,
								   LlmError *err);

	/*
	 * Non-2xx answer: fill err->message / provider_type / retry_after_s from
	 * the provider's error body, and override err->fail_class when the
	 * protocol says more than the status (e.g. quota exhausted).  attempt.c
	 * has already set the class and SQLSTATE the status implies.
	 */
	void		(*parse_error) (const LlmHttpResult *res, LlmError *err);
} LlmProvider;

/* provider.c: the registry and helpers shared by adapters */
extern const LlmProvider *provider_lookup(const char *kind);
extern const char *provider_kinds(void);
extern const char *provider_header(const LlmHttpResult *res, const char *name);
extern void provider_add_header(LlmHttpRequest *req, const char *name, const char *value);
extern char *provider_scrub(const char *text, const char *secret);
extern void provider_init_answer(LlmAnswer *answer);
extern double provider_parse_retry_after(const char *value);

/* adapters (src/providers/) */
extern const LlmProvider llm_provider_anthropic;
extern const LlmProvider llm_provider_openai;
extern const LlmProvider llm_provider_azure_openai;

#endif							/* LLM_PROVIDER_H */
