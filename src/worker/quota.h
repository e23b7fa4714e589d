/*-------------------------------------------------------------------------
 *
 * quota.h
 *	  Quotas (llm.quotas): admission of a call at its worst case, settling
 *	  with its real usage, the per-quota state in shared memory that
 *	  llm.quota_status reads.
 *
 * runs in: worker (admit, settle, rebuild), backends (llm._quota_state()).
 *
 * Units: every figure is an int64.  Requests and tokens count themselves;
 * cost is in units of 1e-10 USD (LLM_QUOTA_COST_SCALE per USD), the
 * precision of llm.requests.cost_usd, so sums are exact.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_QUOTA_H
#define LLM_QUOTA_H

#include "datatype/timestamp.h"
#include "storage/spin.h"

#define LLM_MAX_QUOTAS			128
#define LLM_QUOTA_NAME_LEN		64
#define LLM_QUOTA_COST_SCALE	INT64CONST(10000000000)
/* output tokens reserved for a call that neither it nor its route bounds */
#define LLM_QUOTA_DEFAULT_OUTPUT 4096

typedef enum LlmQuotaMetric
{
	LLM_QM_REQUESTS,
	LLM_QM_INPUT,
	LLM_QM_OUTPUT,
	LLM_QM_TOTAL,
	LLM_QM_COST,
	LLM_QM_COUNT
} LlmQuotaMetric;

typedef enum LlmQuotaScope
{
	LLM_QS_ROLE,
	LLM_QS_ALIAS,
	LLM_QS_TAG,
	LLM_QS_ALL
} LlmQuotaScope;

typedef enum LlmQuotaWindow
{
	LLM_QW_MINUTE,
	LLM_QW_HOUR,
	LLM_QW_DAY,
	LLM_QW_MONTH
} LlmQuotaWindow;

/* One quota's state, as the worker publishes it. */
typedef struct LlmQuotaShared
{
	char		name[LLM_QUOTA_NAME_LEN];
	int			scope;			/* LlmQuotaScope */
	Oid			roleid;			/* LLM_QS_ROLE: the role, InvalidOid if dropped */
	int			metric;			/* LlmQuotaMetric */
	int			window;			/* LlmQuotaWindow */
	int64		limit;
	TimestampTz window_start;
	TimestampTz window_end;
	int64		used;			/* settled usage in the window */
	int64		reserved;		/* worst case of the calls in flight */
} LlmQuotaShared;

typedef struct LlmQuotaState
{
	slock_t		mutex;			/* readers copy under it; only the worker writes */
	bool		loaded;			/* the worker has loaded llm.quotas */
	int			nquotas;
	LlmQuotaShared quotas[LLM_MAX_QUOTAS];
} LlmQuotaState;

/* llm.quota_timezone (module.c) */
extern char *llm_quota_timezone;

extern Size quota_shmem_size(void);
extern void quota_shmem_init(void);
extern LlmQuotaState *quota_state(void);

/* the calendar window of `window` holding `at`, in llm.quota_timezone */
extern void quota_window(int window, TimestampTz at, TimestampTz *start, TimestampTz *end);
extern const char *quota_metric_name(int metric);

struct LlmWorkItem;

/* worker */
extern void quota_worker_start(void);
extern void quota_admit(struct LlmWorkItem *item);
extern void quota_settle(struct LlmWorkItem *item);
extern void quota_forget(struct LlmWorkItem *item);
extern const char *quota_warning(struct LlmWorkItem *item);

#endif							/* LLM_QUOTA_H */
