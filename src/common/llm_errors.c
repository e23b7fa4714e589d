/*-------------------------------------------------------------------------
 *
 * llm_errors.c
 *	  What an HTTP status means, whatever the provider.
 *
 * runs in: worker (attempt.c) and backends (the diagnostic adapter
 * functions).
 *
 * attempt.c calls llm_error_for_status() on every non-2xx answer and then
 * lets the adapter's parse_error refine the result from the body: the
 * provider's message, its error type, and the cases where the protocol
 * says more than the status (a 429 that means "out of quota").
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "utils/resowner.h"

#include "common/llm_errors.h"

/*
 * Fill *err from an HTTP status alone.  Overwrites every field of *err.
 *
 * Retryable: 408, 409, 429, 5xx and Anthropic's 529; the SDKs of both
 * major providers retry exactly these (409 is a transient conflict the
 * provider resolves itself).  401 and 403 condemn the key, not the
 * request, so another target may still succeed.  Every other 4xx is the
 * request's own fault and would fail the same way anywhere.  A status
 * outside 400-599 (a redirect we do not follow, or no status at all) says
 * nothing about the request, so it is treated like a server error.
 */
void
llm_error_for_status(int status, LlmError *err)
{
	memset(err, 0, sizeof(*err));
	err->http_status = status;
	err->retry_after_s = -1;
	err->message = psprintf("provider returned HTTP %d", status);

	switch (status)
	{
		case 401:
		case 403:
			err->sqlerrcode = ERRCODE_LLM_PROVIDER_AUTH;
			err->fail_class = LLM_FAIL_CREDENTIAL;
			err->hint = pstrdup("Check the provider's credential; llm.set_credential() replaces it.");
			break;
		case 402:
			err->sqlerrcode = ERRCODE_LLM_PROVIDER_QUOTA;
			err->fail_class = LLM_FAIL_FATAL;
			break;
		case 408:
			err->sqlerrcode = ERRCODE_LLM_PROVIDER_TIMEOUT;
			err->fail_class = LLM_FAIL_RETRYABLE;
			break;
		case 409:
			err->sqlerrcode = ERRCODE_LLM_PROVIDER_SERVER_ERROR;
			err->fail_class = LLM_FAIL_RETRYABLE;
			break;
		case 429:
			err->sqlerrcode = ERRCODE_LLM_PROVIDER_RATE_LIMITED;
			err->fail_class = LLM_FAIL_RETRYABLE;
			break;
		case 503:
		case 529:
			err->sqlerrcode = ERRCODE_LLM_PROVIDER_OVERLOADED;
			err->fail_class = LLM_FAIL_RETRYABLE;
			break;
		default:
			if (status >= 400 && status < 500)
			{
				/* 400, 404, 413, 422 and any 4xx nobody documents */
				err->sqlerrcode = ERRCODE_LLM_PROVIDER_INVALID_REQUEST;
				err->fail_class = LLM_FAIL_FATAL;
			}
			else
			{
				/* 500, 502, 504, other 5xx, and statuses outside 4xx/5xx */
				err->sqlerrcode = ERRCODE_LLM_PROVIDER_SERVER_ERROR;
				err->fail_class = LLM_FAIL_RETRYABLE;
			}
			break;
	}
}

/* The name of a failure class, as logs and the diagnostic functions show it. */
const char *
llm_fail_class_name(LlmFailClass fail_class)
{
	switch (fail_class)
	{
		case LLM_FAIL_NONE:
			return "none";
		case LLM_FAIL_RETRYABLE:
			return "retryable";
		case LLM_FAIL_CREDENTIAL:
			return "credential";
		case LLM_FAIL_FATAL:
			return "fatal";
	}
	return "unknown";
}

/*
 * In the PG_CATCH of a BeginInternalSubTransaction() block: copy the error
 * (into cxt), roll the subtransaction back, and return to cxt and owner,
 * the memory context and resource owner from before the subtransaction.
 * The caller decides whether to rethrow the copy.
 */
ErrorData *
llm_subxact_caught(MemoryContext cxt, ResourceOwner owner)
{
	ErrorData  *edata;

	MemoryContextSwitchTo(cxt);
	edata = CopyErrorData();
	FlushErrorState();
	RollbackAndReleaseCurrentSubTransaction();
	MemoryContextSwitchTo(cxt);
	CurrentResourceOwner = owner;
	return edata;
}

/*
 * Errors that say "not now" to the worker's log transactions (a lock held
 * elsewhere, the lock or statement timeout, a deadlock, a serialization
 * failure): the same batch may well succeed next turn.
 */
bool
llm_error_is_transient(int sqlerrcode)
{
	return sqlerrcode == ERRCODE_LOCK_NOT_AVAILABLE ||
		sqlerrcode == ERRCODE_QUERY_CANCELED ||
		sqlerrcode == ERRCODE_T_R_DEADLOCK_DETECTED ||
		sqlerrcode == ERRCODE_T_R_SERIALIZATION_FAILURE;
}
