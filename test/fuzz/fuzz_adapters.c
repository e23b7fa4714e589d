/*-------------------------------------------------------------------------
 *
 * fuzz_adapters.c
 *	  libFuzzer harness for every provider adapter: provider answers (2xx
 *	  and errors) and canonical requests built from arbitrary JSON.
 *
 * runs in: a single-user postgres process (test/fuzz/run-fuzz.sh).  The
 * adapters use PostgreSQL's jsonb and memory contexts, so the harness is a
 * shared library loaded into the server, compiled with
 * -fsanitize=fuzzer-no-link together with the adapter sources, and
 * llm_fuzz() hands control to libFuzzer through LLVMFuzzerRunDriver.
 *
 * Input layout: byte 0 picks the adapter (registry order) and the entry
 * point (chat answer, error, chat request, embeddings answer, embedding
 * request); the rest is the body.  Adapters must never ERROR (an ERROR
 * escaping one is a bug and aborts the run, which libFuzzer reports as a
 * crash with the input saved) and must not crash or leak: each input runs
 * in a memory context that is reset afterwards.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "catalog/pg_type.h"
#include "fmgr.h"
#include "utils/array.h"
#include "utils/builtins.h"
#include "utils/jsonb.h"
#include "utils/memutils.h"

#include "common/json_util.h"
#include "common/llm_errors.h"
#include "providers/adapter.h"
#include "providers/forced_output.h"
#include "providers/vertex.h"
#include "backend/json_schema.h"

PG_MODULE_MAGIC;

extern int	LLVMFuzzerRunDriver(int *argc, char ***argv,
								int (*cb) (const uint8_t *data, size_t size));

PG_FUNCTION_INFO_V1(llm_fuzz);

static const LlmProvider *const adapters[] = {
	&llm_provider_anthropic, &llm_provider_openai, &llm_provider_azure_openai,
	&llm_provider_gemini,
	&llm_provider_bedrock,
	&llm_provider_ollama,
	&llm_provider_vertex
};

static MemoryContext fuzz_cxt;
static Jsonb *empty;

static void
fuzz_one(const uint8_t *data, size_t size)
{
	const LlmProvider *p = adapters[data[0] % lengthof(adapters)];
	int			mode = (data[0] / lengthof(adapters)) % 5;
	const char *body = (const char *) data + 1;
	size_t		len = size - 1;
	LlmTarget	target;
	LlmCall		call;
	LlmHttpResult res;
	LlmAnswer	answer;
	LlmError	err;

	memset(&target, 0, sizeof(target));
	target.provider = p;
	target.provider_name = "fuzz";
	target.base_url = "http://provider.invalid";
	target.upstream_model = "fuzz-model";
	target.secret = "fuzz-secret";
	/* bedrock signs only with a well-formed AWS credential and a region */
	if (p == &llm_provider_bedrock)
		target.secret = "{\"access_key_id\": \"AKIDFUZZ\", \"secret_access_key\": \"fuzz/secret\", \"session_token\": \"tok\"}";
	target.region = "us-east-1";
	target.provider_options = empty;
	target.route_options = empty;
	memset(&call, 0, sizeof(call));
	call.request = empty;
	memset(&res, 0, sizeof(res));
	res.body = body;
	res.body_len = len;
	res.status = 200;

	switch (mode)
	{
		case 0:					/* a 2xx answer */
			(void) p->parse_response(&call, &target, &res, &answer, &err);
			/* structured output: a forced-tool answer's content, llm_extract's check */
			{
				char	   *msg;
				Jsonb	   *doc;

				provider_init_answer(&answer);
				appendBinaryStringInfo(&answer.content, body, len);
				(void) forced_output_answer(&answer, &err);
				doc = json_schema_parse_answer(body, len, &msg);
				if (doc != NULL && JB_ROOT_IS_OBJECT(doc) && json_schema_check(doc, &msg))
					(void) json_schema_validate(&doc->root, doc, &msg);
			}
			break;
		case 1:					/* an error answer */
			res.status = 400 + (len > 0 ? (uint8_t) body[0] % 200 : 0);
			llm_error_for_status((int) res.status, &err);
			p->parse_error(&res, &err);
			/* the Vertex token endpoint's answer, as a 2xx and as an error */
			if (p == &llm_provider_vertex)
			{
				char	   *tok;
				char	   *why;
				int64		exp;

				(void) vertex_parse_token_answer(200, body, len, "fuzz-jwt", NULL, &tok, &exp, &why);
				(void) vertex_parse_token_answer(res.status, body, len, "fuzz-jwt", "ya29.x", &tok, &exp, &why);
			}
			break;
		case 2:					/* a canonical request (any JSON) */
			{
				char	   *msg;
				Jsonb	   *req = json_parse_safe(body, len, &msg);
				LlmHttpRequest out;

				if (req == NULL || !JB_ROOT_IS_OBJECT(req))
					break;
				call.request = req;
				memset(&out, 0, sizeof(out));
				(void) p->build_request(&call, &target, &out, &err);
				(void) forced_output_request(req, &req, &err);
			}
			break;
		case 3:					/* a 2xx embeddings answer, for 1-4 inputs, any size or 3 */
			if (p->parse_embed_response != NULL)
			{
				LlmEmbedCall ecall;
				LlmEmbedAnswer eanswer;
				char	   *inputs[4] = {"a", "b", "c", "d"};

				memset(&ecall, 0, sizeof(ecall));
				ecall.ninputs = 1 + (len > 0 ? (uint8_t) body[0] % 4 : 0);
				ecall.inputs = inputs;
				ecall.dimensions = (len > 1 && (body[1] & 1)) ? 3 : 0;
				(void) p->parse_embed_response(&ecall, &target, &res, &eanswer, &err);
			}
			break;
		case 4:					/* an embedding request read from any JSON, then built */
			if (p->build_embed_request != NULL)
			{
				char	   *msg;
				Jsonb	   *req = json_parse_safe(body, len, &msg);
				LlmEmbedCall ecall;
				LlmHttpRequest out;

				if (req == NULL || !embed_call_from_request(req, &ecall))
					break;
				/* bedrock's body depends on the model family: reach both */
				if (p == &llm_provider_bedrock)
					target.upstream_model = (len > 0 && (body[0] & 1))
						? "cohere.embed-english-v3" : "amazon.titan-embed-text-v2:0";
				memset(&out, 0, sizeof(out));
				(void) p->build_embed_request(&ecall, &target, &out, &err);
			}
			break;
	}
}

static int
fuzz_callback(const uint8_t *data, size_t size)
{
	MemoryContext old;

	if (size < 1)
		return 0;
	old = MemoryContextSwitchTo(fuzz_cxt);
	PG_TRY();
	{
		fuzz_one(data, size);
	}
	PG_CATCH();
	{
		/* adapters promise never to ERROR: make it a crash libFuzzer saves */
		EmitErrorReport();
		abort();
	}
	PG_END_TRY();
	MemoryContextSwitchTo(old);
	MemoryContextReset(fuzz_cxt);
	return 0;
}

/*
 * llm_fuzz(args text[]): run libFuzzer with these command-line arguments.
 * libFuzzer exits the process when it is done (0) or finds a crash.
 */
Datum
llm_fuzz(PG_FUNCTION_ARGS)
{
	ArrayType  *arr = PG_GETARG_ARRAYTYPE_P(0);
	Datum	   *elems;
	int			n,
				i,
				argc;
	char	  **argv;

	deconstruct_array(arr, TEXTOID, -1, false, TYPALIGN_INT, &elems, NULL, &n);
	argv = palloc0(sizeof(char *) * (n + 2));
	argv[0] = "llm_fuzz";
	for (i = 0; i < n; i++)
		argv[i + 1] = TextDatumGetCString(elems[i]);
	argc = n + 1;

	fuzz_cxt = AllocSetContextCreate(TopMemoryContext, "llm fuzz input", ALLOCSET_DEFAULT_SIZES);
	/* palloc'd in the function's context, which lives until libFuzzer exits */
	empty = DatumGetJsonbP(DirectFunctionCall1(jsonb_in, CStringGetDatum("{}")));

	PG_RETURN_INT32(LLVMFuzzerRunDriver(&argc, &argv, fuzz_callback));
}
