/*-------------------------------------------------------------------------
 *
 * adapter.h
 *	  The adapter contract: one LlmProvider per wire protocol, and the
 *	  structs that carry a call to an adapter and its answer back.
 *
 * runs in: worker (and backends, for the diagnostic adapter functions
 * llm.adapter_build_request / llm.adapter_parse_response, and the fuzz
 * harness, which links src/providers/ without a server).
 *
 * Purity.  An adapter is a translation between structs and bytes:
 *	 - no curl (attempt.c and http.c send and receive), no SPI or catalog
 *	   access, no shared memory, no GUCs, no static or global state that
 *	   outlives a call (constant tables are fine);
 *	 - no ereport(ERROR) and nothing that raises one on input it is given
 *	   (use json_util.h readers, not jsonb casts): every failure is returned
 *	   as false plus a filled LlmError.  Out-of-memory is the exception,
 *	   as everywhere in PostgreSQL.
 * So a hostile provider answer can only produce an LlmError, and the
 * fixture and fuzz tests can drive an adapter directly.
 *
 * Memory.  Everything an adapter returns (url, headers, body, answer
 * strings, error texts) is palloc'd in CurrentMemoryContext, which the
 * caller owns: the worker's per-call context, freed with the call.  Inputs
 * are borrowed: an adapter never frees or modifies the LlmCall, LlmTarget
 * or LlmHttpResult it is given, and keeps no pointer to them after it
 * returns.  target->secret is plaintext: it may be copied only into the
 * auth header, and provider text is passed through provider_scrub() (or
 * provider_text()) before it goes into an LlmError.
 *
 * What each callback must fill:
 *	 build_request	  out->url, out->headers (including auth and
 *					  content-type) and out->body (initialised by the
 *					  caller); or return false with err->sqlerrcode,
 *					  message, hint and fail_class FATAL for a request the
 *					  protocol cannot express.
 *	 parse_response	  (2xx only) out->content (a JSON array of Messages
 *					  blocks), stop_reason, the token counts and, when the
 *					  provider gives them, id and model; or return false
 *					  with err filled: LL006 (malformed, which the router
 *					  treats as "answered but unreadable") or an in-band
 *					  error with its fail_class.
 *	 parse_error	  (non-2xx) refine the err attempt.c prefilled from the
 *					  status: message, provider_type, retry_after_s, and
 *					  sqlerrcode/fail_class when the body says more than
 *					  the status (quota, overloaded).  Never fails.
 * Status classes common to every provider (429, 5xx, timeouts) are
 * classified once in attempt.c; an adapter only adds its own quirks
 * (Anthropic 529, an error inside a 200 body, an OpenAI 429 that means
 * "out of quota").  Headers the router adds itself (an idempotency key)
 * are added after build_request.
 *
 * Vocabulary:
 *	 canonical request  the Anthropic Messages request body the backend
 *						validated (messages, system, max_tokens, ...), with
 *						no "model" key: the target supplies it.
 *	 target				one (provider, upstream model) pair of a route.
 *	 answer				the canonical Messages "message", in parts; the
 *						worker assembles the final JSON (attempt.c).
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
	const char *region;			/* llm.providers.region, or NULL */
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

/*
 * Embeddings.  An embedding call travels as a canonical request with one
 * key, "embed": {"input": [text, ...], "dimensions": n, "input_type":
 * "query"|"document"} (embed_call_from_request() reads it), so the channel
 * and the log carry it like any request; chat requests always have
 * "messages" and never "embed" (validate.c allows no such option).
 */
typedef struct LlmEmbedCall
{
	int			ninputs;
	char	  **inputs;			/* ninputs texts, in the caller's order */
	int			dimensions;		/* vector size to ask for; 0 = model's own */
	const char *input_type;		/* "query", "document", or NULL */
	int64		request_id;		/* llm.requests.id of the first input */
} LlmEmbedCall;

/* A successful embeddings answer: vectors[i] is the vector of inputs[i]. */
typedef struct LlmEmbedAnswer
{
	int			nvectors;		/* == the call's ninputs */
	int			dimension;		/* length of every vector */
	float4	  **vectors;
	int64		input_tokens;	/* for the whole request, or LLM_EMBED_TOKENS_UNKNOWN */
	char	   *model;			/* upstream model that answered, or NULL */
} LlmEmbedAnswer;

/*
 * input_tokens of an answer that counts none (Gemini's embeddings): the
 * worker then estimates from the bytes it sent, which the parser is not
 * given (embed_batch.c passes it no inputs).
 */
#define LLM_EMBED_TOKENS_UNKNOWN	(-1)

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

	/*
	 * Embeddings, optional (NULL: the kind has none, and a call routed to
	 * it fails with 0A000 before anything is sent).  Pure
	 * like the rest.  build_embed_request fills url, headers and body for
	 * all the call's inputs (at most embed_batch_max of them);
	 * parse_embed_response (2xx only) fills every vector in input order,
	 * all of one dimension, or returns false with LL006 / an in-band error.
	 * Non-2xx answers go through parse_error as for chat.
	 */
	bool		(*build_embed_request) (const LlmEmbedCall *call, const LlmTarget *target,
										LlmHttpRequest *out, LlmError *err);
	bool		(*parse_embed_response) (const LlmEmbedCall *call, const LlmTarget *target,
										 const LlmHttpResult *res, LlmEmbedAnswer *out,
										 LlmError *err);
	int			embed_batch_max;	/* most inputs in one request (provider's limit) */

	/*
	 * Optional: the limit for this target when it depends on the model
	 * (Bedrock: Titan takes one input, Cohere 96); NULL = embed_batch_max.
	 * Read through embed_batch_limit(), never directly.
	 */
	int			(*embed_batch_max_for) (const LlmTarget *target);
} LlmProvider;

/* provider.c: the registry and helpers shared by adapters */
extern const LlmProvider *provider_lookup(const char *kind);
extern const char *provider_kinds(void);
extern const char *provider_header(const LlmHttpResult *res, const char *name);
extern void provider_add_header(LlmHttpRequest *req, const char *name, const char *value);
extern char *provider_scrub(const char *text, const char *secret);
extern void provider_init_answer(LlmAnswer *answer);
extern double provider_parse_retry_after(const char *value);

/* embed.c: the canonical embedding request, both ways */
extern bool embed_call_from_request(Jsonb *request, LlmEmbedCall *call);
extern int	embed_batch_limit(const LlmTarget *target);
extern bool embed_answer_check(const LlmEmbedCall *call, const LlmEmbedAnswer *answer,
							   const LlmHttpResult *res, const char *secret, LlmError *err);
extern void embed_append_vectors(StringInfo buf, const LlmEmbedAnswer *answer);
extern bool embed_read_vector(JsonbContainer *arr, int *dim, float4 **vec, char **why);
extern bool embed_answer_object(const LlmHttpResult *res, const LlmTarget *target,
								LlmEmbedAnswer *out, JsonbContainer **root, LlmError *err);
extern bool embed_answer_vectors(const LlmEmbedCall *call, JsonbContainer *list, const char *key,
								 const LlmHttpResult *res, const LlmTarget *target,
								 LlmEmbedAnswer *out, LlmError *err);

/* adapters (src/providers/) */
extern const LlmProvider llm_provider_anthropic;
extern const LlmProvider llm_provider_openai;
extern const LlmProvider llm_provider_azure_openai;
extern const LlmProvider llm_provider_gemini;
extern const LlmProvider llm_provider_bedrock;
extern const LlmProvider llm_provider_ollama;
extern const LlmProvider llm_provider_vertex;

#endif							/* LLM_PROVIDER_H */
