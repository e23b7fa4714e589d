/*-------------------------------------------------------------------------
 *
 * progress.c
 *	  What the current statement's calls have done so far, for the view
 *	  llm.statement_progress and the NOTICEs of llm.progress_notice.
 *
 * runs in: backends.  Each backend writes only its own entry of a small
 * shared array (one per PGPROC, indexed by pgprocno); any backend reads
 * them all for the view.
 *
 * The entry belongs to one statement, named by its start timestamp
 * (GetCurrentStatementStartTimestamp(), the query_start of
 * pg_stat_activity): the statement's first call resets it.  A reader shows
 * an entry only while its backend is still running that statement, so a
 * finished statement's figures simply drop out of the view.
 *
 * Writers bump a change count before and after writing (odd while the
 * entry is being written), like PgBackendStatus: readers copy the entry
 * and retry until they see the same even count on both sides.  Writes are
 * a few integer stores, so readers rarely retry and writers never wait.
 *
 * Counted per call, from the channel's backend half: submitted; then
 * exactly one of answered (the worker's answer), failed (the worker's
 * error, or no verdict in time), cancelled (abandoned: cancel, an early
 * stop, an error elsewhere).  In flight = submitted minus those.  A call
 * counts in the statement that submitted it: a handle of an earlier
 * statement taken now (llm_await) changes nothing.  Tokens and cost come
 * from the answer's usage and gateway.cost_usd; cost is summed in units of
 * 1e-12 USD.  "Queued" is read live from the channel: this backend's calls
 * the worker holds back for a provider's max_concurrency or
 * requests_per_minute.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>
#include <math.h>

#include "access/xact.h"
#include "funcapi.h"
#include "miscadmin.h"
#include "storage/proc.h"
#include "storage/shmem.h"
#include "utils/acl.h"
#include "utils/backend_status.h"
#include "utils/builtins.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "utils/timestamp.h"

#include "backend/progress.h"
#include "llm_gateway.h"

#define ADMIN_ROLE			"llm_admin"

typedef struct LlmProgressEntry
{
	pg_atomic_uint32 changecount;	/* odd while being written */
	int			pid;			/* 0: never used */
	Oid			roleid;			/* current role at the statement's first call */
	TimestampTz stmt_start;		/* the statement's start: which statement */
	TimestampTz first_call;		/* for calls per second */
	int64		submitted;
	int64		answered;
	int64		failed;
	int64		cancelled;
	int64		input_tokens;
	int64		output_tokens;
	int64		cost_pico;		/* USD * 1e12 */
	bool		has_cost;		/* some answer carried a cost */
	double		rows_expected;	/* < 0: no pipeline node */
} LlmProgressEntry;

int			llm_progress_notice_ms = 0;

static LlmProgressEntry *entries = NULL;
static int	nentries = 0;

/* this backend */
static LlmProgressEntry *mine = NULL;
static uint64 stmt_seq = 0;		/* bumped when an entry is reset */
static uint64 *slot_seq = NULL; /* per slot: stmt_seq of the call in it */
static TimestampTz next_notice = 0;

Size
progress_shmem_size(void)
{
	return mul_size(MaxBackends + NUM_AUXILIARY_PROCS, sizeof(LlmProgressEntry));
}

void
progress_shmem_init(void)
{
	bool		found;
	int			i;

	nentries = MaxBackends + NUM_AUXILIARY_PROCS;
	entries = ShmemInitStruct("llm_gateway statement progress", progress_shmem_size(), &found);
	if (!found)
	{
		memset(entries, 0, progress_shmem_size());
		for (i = 0; i < nentries; i++)
			pg_atomic_init_u32(&entries[i].changecount, 0);
	}
}

void
progress_define_gucs(void)
{
	DefineCustomIntVariable("llm.progress_notice",
							"Send a NOTICE with the statement's progress at this interval while its calls run; 0 turns it off.",
							"The figures are those of llm.statement_progress.",
							&llm_progress_notice_ms,
							0, 0, INT_MAX,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);
}

/* Attach to our entry (EXEC_BACKEND: the array's address in this process). */
static LlmProgressEntry *
my_entry(void)
{
	if (mine == NULL)
	{
		if (entries == NULL)
		{
			bool		found;

			nentries = MaxBackends + NUM_AUXILIARY_PROCS;
			LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
			entries = ShmemInitStruct("llm_gateway statement progress", progress_shmem_size(), &found);
			LWLockRelease(AddinShmemInitLock);
			Assert(found);
		}
		if (MyProc == NULL || MyProc->pgprocno >= nentries)
			return NULL;
		mine = &entries[MyProc->pgprocno];
	}
	return mine;
}

static inline void
begin_write(LlmProgressEntry *e)
{
	pg_atomic_fetch_add_u32(&e->changecount, 1);
	pg_write_barrier();
}

static inline void
end_write(LlmProgressEntry *e)
{
	pg_write_barrier();
	pg_atomic_fetch_add_u32(&e->changecount, 1);
}

/* A consistent copy of entry i. */
static void
read_entry(int i, LlmProgressEntry *out)
{
	LlmProgressEntry *e = &entries[i];

	for (;;)
	{
		uint32		before = pg_atomic_read_u32(&e->changecount);
		uint32		after;

		pg_read_barrier();
		memcpy(out, e, sizeof(*out));
		pg_read_barrier();
		after = pg_atomic_read_u32(&e->changecount);
		if (before == after && (before & 1) == 0)
			return;
		CHECK_FOR_INTERRUPTS();
	}
}

/* Does our entry describe the statement running now? */
static bool
entry_is_current(LlmProgressEntry *e)
{
	return e->pid == MyProcPid && e->stmt_start == GetCurrentStatementStartTimestamp();
}

/* Our entry, reset for the running statement if it describes another. */
static LlmProgressEntry *
current_entry(void)
{
	LlmProgressEntry *e = my_entry();

	if (e == NULL || entry_is_current(e))
		return e;
	begin_write(e);
	e->pid = MyProcPid;
	e->roleid = GetOuterUserId();
	e->stmt_start = GetCurrentStatementStartTimestamp();
	e->first_call = GetCurrentTimestamp();
	e->submitted = e->answered = e->failed = e->cancelled = 0;
	e->input_tokens = e->output_tokens = e->cost_pico = 0;
	e->has_cost = false;
	e->rows_expected = -1;
	end_write(e);
	stmt_seq++;
	next_notice = 0;
	return e;
}

void
progress_pipeline_begin(double rows_expected)
{
	LlmProgressEntry *e = current_entry();

	if (e == NULL)
		return;
	begin_write(e);
	e->rows_expected = rows_expected;
	end_write(e);
}

void
progress_call_submitted(int slot)
{
	LlmProgressEntry *e = current_entry();

	if (e == NULL)
		return;
	if (slot_seq == NULL)
		slot_seq = MemoryContextAllocZero(TopMemoryContext,
										  sizeof(uint64) * channel_get()->nslots);
	slot_seq[slot] = stmt_seq;
	begin_write(e);
	e->submitted++;
	end_write(e);
}

/* Was the call in slot counted by our entry's statement?  Forgets it. */
static bool
claim_counted(int slot)
{
	bool		ours = slot_seq != NULL && mine != NULL && slot_seq[slot] == stmt_seq &&
		mine->pid == MyProcPid;

	if (slot_seq != NULL)
		slot_seq[slot] = 0;
	return ours;
}

/*
 * The call in slot ended with result (NULL: no verdict, it failed; its
 * usage is read by channel_take).  Never raises.
 */
void
progress_call_taken(int slot, const LlmCallResult *result)
{
	if (!claim_counted(slot))
		return;
	begin_write(mine);
	if (result != NULL && result->outcome == LLM_OUTCOME_OK)
	{
		mine->answered++;
		mine->input_tokens += result->usage.input_tokens;
		mine->output_tokens += result->usage.output_tokens;
		if (result->usage.has_cost)
		{
			mine->cost_pico += result->usage.cost_pico;
			mine->has_cost = true;
		}
	}
	else
		mine->failed++;
	end_write(mine);
}

void
progress_call_abandoned(int slot)
{
	if (!claim_counted(slot))
		return;
	begin_write(mine);
	mine->cancelled++;
	end_write(mine);
}

/* The calls of the backend with this pgprocno that the worker holds back for provider limits. */
static int
queued_calls(int procno)
{
	LlmChannel *ch = channel_get();
	int			n = 0;
	int			i;

	for (i = 0; i < ch->nslots; i++)
	{
		LlmSlot    *slot = &ch->slots[i];

		if (slot->backend_procno == procno &&
			pg_atomic_read_u32(&slot->state) == LLM_SLOT_RUNNING &&
			pg_atomic_read_u32(&slot->throttled) != 0)
			n++;
	}
	return n;
}

static double
calls_per_second(const LlmProgressEntry *e, TimestampTz now)
{
	double		secs = (double) (now - e->first_call) / USECS_PER_SEC;
	int64		done = e->answered + e->failed + e->cancelled;

	return secs > 0 ? done / secs : 0;
}

/* "0.0012" from 1e-12 USD units, trailing zeros dropped */
static void
cost_text(int64 pico, char *buf, Size len)
{
	int			n = snprintf(buf, len, INT64_FORMAT ".%012" INT64_MODIFIER "d",
							 pico / LLM_PICO_PER_USD, pico % LLM_PICO_PER_USD);

	while (n > 0 && buf[n - 1] == '0')
		buf[--n] = '\0';
	if (n > 0 && buf[n - 1] == '.')
		buf[--n] = '\0';
}

/*
 * channel_wait calls this on each turn of its loop: when llm.progress_notice
 * is set and the running statement's calls have run that long since the
 * last NOTICE (or its first call), send one.  Returns the milliseconds
 * until the next one is due, so the wait wakes for it; -1 if none is.
 */
long
progress_notice_tick(void)
{
	LlmProgressEntry *e = mine;
	TimestampTz now;
	int64		interval;

	if (llm_progress_notice_ms <= 0 || e == NULL || !entry_is_current(e) || e->submitted == 0)
		return -1;
	interval = (int64) llm_progress_notice_ms * 1000;
	now = GetCurrentTimestamp();
	if (next_notice == 0)
		next_notice = e->first_call + interval;
	if (now >= next_notice)
	{
		char		cost[64];
		char		rows[64] = "";

		if (e->has_cost)
			cost_text(e->cost_pico, cost, sizeof(cost));
		else
			strlcpy(cost, "unknown", sizeof(cost));
		if (e->rows_expected >= 0)
			snprintf(rows, sizeof(rows), ", %.0f rows expected", e->rows_expected);
		ereport(NOTICE,
				(errmsg("llm_gateway statement progress: " INT64_FORMAT " calls submitted, "
						INT64_FORMAT " answered, " INT64_FORMAT " failed, " INT64_FORMAT
						" cancelled, " INT64_FORMAT " in flight, %d queued for provider limits; "
						INT64_FORMAT " input tokens, " INT64_FORMAT " output tokens, cost %s USD; "
						"%.1f calls/s%s",
						e->submitted, e->answered, e->failed, e->cancelled,
						e->submitted - e->answered - e->failed - e->cancelled,
						queued_calls(MyProc->pgprocno),
						e->input_tokens, e->output_tokens, cost,
						calls_per_second(e, now), rows)));
		next_notice = now + interval;
	}
	return (long) ((next_notice - now + 999) / 1000);
}

/* Is the backend with this pid running, right now, the statement that started at stmt_start? */
static bool
statement_running(int pid, TimestampTz stmt_start)
{
	int			n = pgstat_fetch_stat_numbackends();
	int			i;

	for (i = 1; i <= n; i++)
	{
		LocalPgBackendStatus *local = pgstat_fetch_stat_local_beentry(i);
		PgBackendStatus *be = local ? &local->backendStatus : NULL;

		if (be == NULL || be->st_procpid != pid)
			continue;
		return be->st_state == STATE_RUNNING && be->st_activity_start_timestamp == stmt_start;
	}
	return false;
}

PG_FUNCTION_INFO_V1(llm_statement_progress);

/*
 * llm._statement_progress(): one row per backend whose running statement
 * has made calls.  A role sees the statements of roles whose privileges
 * it has; superusers and members of llm_admin see all.
 */
Datum
llm_statement_progress(PG_FUNCTION_ARGS)
{
	ReturnSetInfo *rsinfo = (ReturnSetInfo *) fcinfo->resultinfo;
	Oid			admin;
	bool		see_all;
	TimestampTz now = GetCurrentTimestamp();
	int			i;

	llm_check_preloaded();
	InitMaterializedSRF(fcinfo, 0);
	my_entry();					/* attaches the array */
	admin = get_role_oid(ADMIN_ROLE, true);
	see_all = superuser() || (OidIsValid(admin) && has_privs_of_role(GetUserId(), admin));

	for (i = 0; i < nentries; i++)
	{
		LlmProgressEntry e;
		Datum		values[14];
		bool		nulls[14];
		char		cost[64];
		char	   *rolname;

		if (entries[i].pid == 0)
			continue;
		read_entry(i, &e);
		if (e.pid == 0 || e.submitted == 0)
			continue;
		if (!see_all && !has_privs_of_role(GetUserId(), e.roleid))
			continue;
		if (!statement_running(e.pid, e.stmt_start))
			continue;

		memset(nulls, 0, sizeof(nulls));
		values[0] = Int32GetDatum(e.pid);
		rolname = GetUserNameFromId(e.roleid, true);
		if (rolname)
			values[1] = CStringGetTextDatum(rolname);
		else
			nulls[1] = true;
		values[2] = TimestampTzGetDatum(e.stmt_start);
		values[3] = Int64GetDatum(e.submitted);
		values[4] = Int64GetDatum(e.answered);
		values[5] = Int64GetDatum(e.failed);
		values[6] = Int64GetDatum(e.cancelled);
		values[7] = Int64GetDatum(e.submitted - e.answered - e.failed - e.cancelled);
		values[8] = Int64GetDatum(queued_calls(i));
		values[9] = Int64GetDatum(e.input_tokens);
		values[10] = Int64GetDatum(e.output_tokens);
		if (e.has_cost)
		{
			cost_text(e.cost_pico, cost, sizeof(cost));
			values[11] = DirectFunctionCall3(numeric_in, CStringGetDatum(cost),
											 ObjectIdGetDatum(InvalidOid), Int32GetDatum(-1));
		}
		else
			nulls[11] = true;
		values[12] = Float8GetDatum(calls_per_second(&e, now));
		if (e.rows_expected >= 0)
			values[13] = Float8GetDatum(e.rows_expected);
		else
			nulls[13] = true;
		tuplestore_putvalues(rsinfo->setResult, rsinfo->setDesc, values, nulls);
	}
	return (Datum) 0;
}
