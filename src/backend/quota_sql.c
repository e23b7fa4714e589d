/*-------------------------------------------------------------------------
 *
 * quota_sql.c
 *	  SQL side of quotas: the trigger that makes the worker reload
 *	  llm.quotas, and llm._quota_state(), the shared figures behind the
 *	  view llm.quota_status.
 *
 * runs in: backends.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "commands/trigger.h"
#include "fmgr.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/inval.h"
#include "utils/numeric.h"
#include "utils/timestamp.h"

#include "worker/quota.h"

PG_FUNCTION_INFO_V1(llm_quotas_changed);
PG_FUNCTION_INFO_V1(llm_quota_state);

/*
 * Statement trigger on llm.quotas: a relcache invalidation of the table,
 * sent at commit; the worker's callback marks its quotas stale and the
 * next call (or nothing, if none comes) reloads them and rebuilds their
 * figures from llm.requests.
 */
Datum
llm_quotas_changed(PG_FUNCTION_ARGS)
{
	TriggerData *trigdata = (TriggerData *) fcinfo->context;

	if (!CALLED_AS_TRIGGER(fcinfo))
		ereport(ERROR,
				(errcode(ERRCODE_E_R_I_E_TRIGGER_PROTOCOL_VIOLATED),
				 errmsg("llm._quotas_changed() must be called as a trigger")));
	CacheInvalidateRelcache(trigdata->tg_relation);
	return PointerGetDatum(NULL);
}

static Datum
amount(int metric, int64 v)
{
	Datum		n = NumericGetDatum(int64_to_numeric(v));

	if (metric == LLM_QM_COST)
		n = DirectFunctionCall2(numeric_div, n, NumericGetDatum(int64_to_numeric(LLM_QUOTA_COST_SCALE)));
	return DirectFunctionCall1(numeric_trim_scale, n);
}

/*
 * Each quota the caller may see: superusers and members of llm_admin all;
 * others the quotas of roles they are a member of and those not scoped to
 * a role.  A window that has passed without a call shows the current one,
 * empty (the calls of the old one belong to it).
 */
Datum
llm_quota_state(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	LlmQuotaState *st = quota_state();
	static LlmQuotaShared copy[LLM_MAX_QUOTAS];
	int			n;
	int			i;
	Oid			admin = get_role_oid("llm_admin", true);
	bool		all = superuser() || (OidIsValid(admin) && has_privs_of_role(GetUserId(), admin));
	TimestampTz now = GetCurrentTimestamp();

	InitMaterializedSRF(fcinfo, 0);
	SpinLockAcquire(&st->mutex);
	n = st->loaded ? st->nquotas : 0;
	memcpy(copy, st->quotas, sizeof(LlmQuotaShared) * n);
	SpinLockRelease(&st->mutex);

	for (i = 0; i < n; i++)
	{
		LlmQuotaShared *q = &copy[i];
		Datum		values[6];
		bool		nulls[6] = {false};

		if (!all && q->scope == LLM_QS_ROLE &&
			!(OidIsValid(q->roleid) && is_member_of_role_nosuper(GetUserId(), q->roleid)))
			continue;
		if (now >= q->window_end)
		{
			/* the window the worker will open (llm.quota_timezone is SIGHUP: the same zone) */
			quota_window(q->window, now, &q->window_start, &q->window_end);
			q->used = q->reserved = 0;
		}
		values[0] = CStringGetTextDatum(q->name);
		values[1] = TimestampTzGetDatum(q->window_start);
		values[2] = TimestampTzGetDatum(q->window_end);
		values[3] = amount(q->metric, q->used);
		values[4] = amount(q->metric, q->reserved);
		values[5] = amount(q->metric, q->limit);
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
