/*-------------------------------------------------------------------------
 *
 * log_visibility.c
 *	  A session reads its own calls' finished log rows.
 *
 * runs in: backends.
 *
 * A call returns as soon as its answer is in, while the worker is still
 * completing the call's llm.requests row (a short transaction; see the
 * DETACHED state in channel.h).  So that a session never reads its own
 * last call as "pending", a statement that reads or writes llm.requests
 * (directly, or through a view or an inlined function) first waits for
 * that row.  Other statements, and the next call, do not wait.
 *
 * The statement's snapshot was taken before ExecutorStart, so it may
 * predate the row's commit: under READ COMMITTED, where every statement
 * takes a new snapshot anyway, the first such statement gets one taken
 * after the row is known complete.  Under REPEATABLE READ and SERIALIZABLE the transaction's
 * snapshot stands, and rows committed after it stay invisible, as they
 * always are there.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "access/xact.h"
#include "catalog/namespace.h"
#include "executor/executor.h"
#include "nodes/parsenodes.h"
#include "nodes/plannodes.h"
#include "utils/lsyscache.h"
#include "utils/snapmgr.h"

#include "channel/channel.h"
#include "backend/log_visibility.h"

static ExecutorStart_hook_type prev_executor_start = NULL;

static bool
reads_request_log(QueryDesc *queryDesc)
{
	Oid			nsp = get_namespace_oid("llm", true);
	Oid			relid = OidIsValid(nsp) ? get_relname_relid("requests", nsp) : InvalidOid;
	ListCell   *lc;

	if (!OidIsValid(relid) || queryDesc->plannedstmt == NULL)
		return false;
	foreach(lc, queryDesc->plannedstmt->rtable)
	{
		RangeTblEntry *rte = lfirst_node(RangeTblEntry, lc);

		if (rte->rtekind == RTE_RELATION && rte->relid == relid)
			return true;
	}
	return false;
}

static void
logvis_executor_start(QueryDesc *queryDesc, int eflags)
{
	/* the common case costs one test: no call of ours is being logged */
	if (channel_call_detached())
	{
		if (reads_request_log(queryDesc))
		{
			/*
			 * The snapshot may have been taken just before the row's commit,
			 * even if that commit is over by now: take a new one either way.
			 */
			channel_wait_logged();
			if (!IsolationUsesXactSnapshot() && queryDesc->snapshot != InvalidSnapshot)
			{
				UnregisterSnapshot(queryDesc->snapshot);
				queryDesc->snapshot = RegisterSnapshot(GetTransactionSnapshot());
			}
		}
		else
			(void) channel_call_unlogged();
	}

	if (prev_executor_start)
		prev_executor_start(queryDesc, eflags);
	else
		standard_ExecutorStart(queryDesc, eflags);
}

void
logvis_install_hook(void)
{
	prev_executor_start = ExecutorStart_hook;
	ExecutorStart_hook = logvis_executor_start;
}
