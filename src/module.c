/*-------------------------------------------------------------------------
 *
 * llm_gateway.c
 *	  Module entry point: GUCs, shared-memory hooks, worker registration
 *	  and the version function.
 *
 * runs in: postmaster (_PG_init, shared-memory hooks), every backend
 * (the preload check, llm.version()).
 *
 * The library must be in shared_preload_libraries: the worker is
 * registered and the request channel sized at postmaster start.  Loading
 * it any other way fails at once with a message that says so.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <limits.h>

#include "fmgr.h"
#include "miscadmin.h"
#include "postmaster/bgworker.h"
#include "storage/ipc.h"
#include "storage/lwlock.h"
#include "storage/shmem.h"
#include "utils/builtins.h"
#include "utils/varlena.h"
#include "utils/guc.h"
#include "utils/memutils.h"
#include "pgtime.h"

#include "backend/call_result.h"
#include "backend/pipeline.h"
#include "backend/conversation.h"
#include "backend/progress.h"
#include "channel/channel.h"
#include "common/credentials.h"
#include "worker/embed_batch.h"
#include "worker/outbound.h"
#include "worker/health.h"
#include "worker/log_flusher.h"
#include "worker/retention.h"
#include "worker/quota.h"
#include "worker/worker_timing.h"
#include "llm_gateway.h"

PG_MODULE_MAGIC;

/* GUC variables */
char	   *llm_database = NULL;
int			llm_max_inflight = 1024;
int			llm_request_timeout_ms = 120000;
int			llm_max_response_bytes = 16 * 1024 * 1024;
int			llm_max_request_bytes = 16 * 1024 * 1024;
int			llm_shared_memory_mb = 256;
int			llm_log_bodies = LLM_LOG_BODIES_ALL;
char	   *llm_ca_bundle = NULL;
int			llm_max_connections = 256;
char	   *llm_allowed_regions = NULL;
int			llm_max_attempts = 2;
int			llm_retry_base_ms = 250;
int			llm_retry_max_ms = 8000;
int			llm_breaker_failures = 5;
int			llm_breaker_cooldown_ms = 30000;
bool		llm_durable_before_send = true;
int			llm_poll_us = 0;
int			llm_flush_interval_ms = 5;

bool		llm_preloaded = false;

static const struct config_enum_entry log_bodies_options[] = {
	{"none", LLM_LOG_BODIES_NONE, false},
	{"errors", LLM_LOG_BODIES_ERRORS, false},
	{"all", LLM_LOG_BODIES_ALL, false},
	{NULL, 0, false}
};

static shmem_request_hook_type prev_shmem_request_hook = NULL;
static shmem_startup_hook_type prev_shmem_startup_hook = NULL;

void		_PG_init(void);
static void define_gucs(void);
static bool check_allowed_regions(char **newval, void **extra, GucSource source);
static bool check_quota_timezone(char **newval, void **extra, GucSource source);
static void llm_shmem_request(void);
static void llm_shmem_startup(void);
static void register_workers(void);

PG_FUNCTION_INFO_V1(llm_version);

/*
 * Module load.  Outside shared_preload_libraries we refuse to load: the
 * gateway cannot work without its worker and shared memory, and a silent
 * half-loaded library would only fail later with a worse message.
 */
void
_PG_init(void)
{
	if (!process_shared_preload_libraries_in_progress)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("llm_gateway must be loaded via shared_preload_libraries"),
				 errdetail("The gateway needs a background worker and shared memory that are set up at server start."),
				 errhint("Add llm_gateway to shared_preload_libraries in postgresql.conf and restart the server.")));

	define_gucs();
	pipeline_init();
	chat_define_callbacks();

	/* pg_upgrade's server must not start workers or take shared memory */
	if (IsBinaryUpgrade)
		return;

	prev_shmem_request_hook = shmem_request_hook;
	shmem_request_hook = llm_shmem_request;
	prev_shmem_startup_hook = shmem_startup_hook;
	shmem_startup_hook = llm_shmem_startup;

	register_workers();
	llm_preloaded = true;
}

static void
llm_shmem_request(void)
{
	if (prev_shmem_request_hook)
		prev_shmem_request_hook();
	RequestAddinShmemSpace(channel_shmem_size());
	RequestAddinShmemSpace(health_shmem_size());
	RequestAddinShmemSpace(logflush_shmem_size());
	RequestAddinShmemSpace(progress_shmem_size());
	RequestAddinShmemSpace(quota_shmem_size());
	RequestAddinShmemSpace(worker_timing_shmem_size());
	RequestNamedLWLockTranche("llm_gateway", 1);
}

static void
llm_shmem_startup(void)
{
	if (prev_shmem_startup_hook)
		prev_shmem_startup_hook();
	LWLockAcquire(AddinShmemInitLock, LW_EXCLUSIVE);
	channel_shmem_init();
	health_shmem_init();
	logflush_shmem_init();
	progress_shmem_init();
	quota_shmem_init();
	worker_timing_shmem_init();
	LWLockRelease(AddinShmemInitLock);
}

/*
 * A background worker started once recovery is over (the log flusher has
 * no WAL to flush before, the worker no tables to write), restarted after
 * 1 s when it exits with an error (code 1); a crash restarts the whole
 * cluster as usual.
 */
static void
register_one(int flags, const char *function, const char *name)
{
	BackgroundWorker worker;

	memset(&worker, 0, sizeof(worker));
	worker.bgw_flags = flags;
	worker.bgw_start_time = BgWorkerStart_RecoveryFinished;
	worker.bgw_restart_time = 1;
	snprintf(worker.bgw_library_name, BGW_MAXLEN, "llm_gateway");
	snprintf(worker.bgw_function_name, BGW_MAXLEN, "%s", function);
	snprintf(worker.bgw_name, BGW_MAXLEN, "%s", name);
	snprintf(worker.bgw_type, BGW_MAXLEN, "%s", name);
	RegisterBackgroundWorker(&worker);
}

/* The gateway worker and the log flusher, one of each for the cluster. */
static void
register_workers(void)
{
	register_one(BGWORKER_SHMEM_ACCESS | BGWORKER_BACKEND_DATABASE_CONNECTION,
				 "llm_worker_main", "llm_gateway worker");
	register_one(BGWORKER_SHMEM_ACCESS, "llm_flusher_main", "llm_gateway log flusher");
}

/*
 * Every SQL entry point calls this first.  It only fires when the library
 * was loaded some other way after a failed first load (the failed
 * _PG_init leaves the library mapped, so a second call reaches us).
 */
void
llm_check_preloaded(void)
{
	if (!llm_preloaded)
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("llm_gateway must be loaded via shared_preload_libraries"),
				 errhint("Add llm_gateway to shared_preload_libraries in postgresql.conf and restart the server.")));
}

/*
 * llm.version() returns the version of the loaded library.
 */
Datum
llm_version(PG_FUNCTION_ARGS)
{
	llm_check_preloaded();
	PG_RETURN_TEXT_P(cstring_to_text(LLM_GATEWAY_VERSION));
}

/* llm.allowed_regions must be a list of plain region names */
static bool
check_allowed_regions(char **newval, void **extra, GucSource source)
{
	char	   *copy = pstrdup(*newval);
	List	   *names;
	bool		ok = SplitGUCList(copy, ',', &names);

	if (!ok)
		GUC_check_errdetail("List syntax is invalid.");
	list_free(names);
	pfree(copy);
	return ok;
}

static void
define_gucs(void)
{
	channel_define_gucs();		/* llm.debug_fail_shm_alloc (tests) */
	call_result_define_gucs();	/* llm.on_error */
	embed_batch_define_gucs();	/* llm.embed_batch_wait_ms */
	progress_define_gucs();		/* llm.progress_notice */

	DefineCustomStringVariable("llm.database",
							   "Database the gateway worker connects to; calls are served only from it.",
							   NULL,
							   &llm_database,
							   "postgres",
							   PGC_POSTMASTER,
							   0,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("llm.max_inflight",
							"Maximum number of calls in flight at once; further callers wait.",
							NULL,
							&llm_max_inflight,
							1024, 1, 65536,
							PGC_POSTMASTER,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("llm.shared_memory_mb",
							"Upper bound of shared memory for request and answer payloads.",
							NULL,
							&llm_shared_memory_mb,
							256, 8, 65536,
							PGC_POSTMASTER,
							GUC_UNIT_MB,
							NULL, NULL, NULL);

	DefineCustomIntVariable("llm.request_timeout_ms",
							"Default deadline of one call, retries included.",
							"A call's timeout_ms option overrides it.",
							&llm_request_timeout_ms,
							120000, 1, INT_MAX,
							PGC_USERSET,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("llm.max_request_bytes",
							"Largest request body a call may send.",
							NULL,
							&llm_max_request_bytes,
							16 * 1024 * 1024, 1024, (int) (MaxAllocSize / 2),
							PGC_SUSET,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomIntVariable("llm.max_response_bytes",
							"Largest provider answer the worker accepts.",
							NULL,
							&llm_max_response_bytes,
							16 * 1024 * 1024, 1024, (int) (MaxAllocSize / 2),
							PGC_SIGHUP,
							GUC_UNIT_BYTE,
							NULL, NULL, NULL);

	DefineCustomEnumVariable("llm.log_bodies",
							 "Which request and response bodies the worker keeps in llm.requests.",
							 NULL,
							 &llm_log_bodies,
							 LLM_LOG_BODIES_ALL,
							 log_bodies_options,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomStringVariable("llm.ca_bundle",
							   "CA certificate bundle file for TLS verification of providers.",
							   "Empty means the system default bundle.",
							   &llm_ca_bundle,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);

	DefineCustomIntVariable("llm.max_connections",
							"Maximum number of open connections the worker keeps to providers.",
							NULL,
							&llm_max_connections,
							256, 1, 65536,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	/*
	 * The data-residency policy: only a superuser (or a role granted SET on
	 * it, or ALTER ROLE/DATABASE ... SET by one) may change it, so a user
	 * cannot widen it inside a session.
	 */
	DefineCustomStringVariable("llm.allowed_regions",
							   "Provider regions calls may be sent to (comma-separated); empty allows every region.",
							   "Targets whose provider region is not listed, or has no region, are never used.",
							   &llm_allowed_regions,
							   "",
							   PGC_SUSET,
							   GUC_LIST_INPUT,
							   check_allowed_regions, NULL, NULL);

	DefineCustomIntVariable("llm.max_attempts",
							"Attempts per target before a call falls over to the next target.",
							"A route's max_attempts option overrides it.",
							&llm_max_attempts,
							2, 1, 100,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("llm.retry_base_ms",
							"First retry delay; doubles with each retry, with full jitter.",
							NULL,
							&llm_retry_base_ms,
							250, 1, 600000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("llm.retry_max_ms",
							"Longest wait before a retry, retry-after included; a longer retry-after falls over instead.",
							NULL,
							&llm_retry_max_ms,
							8000, 1, 3600000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("llm.breaker_failures",
							"Consecutive failed calls after which a target is skipped for a cool-down.",
							NULL,
							&llm_breaker_failures,
							5, 1, 1000000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomIntVariable("llm.breaker_cooldown_ms",
							"How long an open circuit skips its target before one probe is let through.",
							NULL,
							&llm_breaker_cooldown_ms,
							30000, 1, INT_MAX,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomBoolVariable("llm.durable_before_send",
							 "Flush each turn's pending log rows to disk (and a synchronous standby) before any of its calls is sent.",
							 "One flush covers every call the worker takes in a turn, whatever synchronous_commit "
							 "the database or a role sets.  Off: the rows are committed before the calls are sent "
							 "but flushed by the log flusher while the requests travel; a crash in those few "
							 "milliseconds can lose the row of a call the provider received.",
							 &llm_durable_before_send,
							 true,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);

	DefineCustomIntVariable("llm.flush_interval_ms",
							"The log flusher flushes at most this often; one flush covers every pending row committed since the last.",
							"Under a stream of calls a flush costs the machine more than a call's own work; "
							"0 flushes after every turn that sent calls.  Used only with llm.durable_before_send = off.",
							&llm_flush_interval_ms,
							5, 0, 1000,
							PGC_SIGHUP,
							GUC_UNIT_MS,
							NULL, NULL, NULL);

	DefineCustomIntVariable("llm.poll_us",
							"How long the worker and a waiting backend poll, instead of sleeping, while few calls are in flight.",
							"The worker polls that long after each turn; a backend polls for an answer when its "
							"recent answers came within that time.  Polling saves a process wake-up per hand-off "
							"at the cost of CPU time; 0 turns it off.",
							&llm_poll_us,
							0, 0, 100000,
							PGC_SIGHUP,
							0,
							NULL, NULL, NULL);

	DefineCustomStringVariable("llm.quota_timezone",
							   "Time zone of the quotas' calendar windows (the day, the month).",
							   NULL,
							   &llm_quota_timezone,
							   "UTC",
							   PGC_SIGHUP,
							   0,
							   check_quota_timezone, NULL, NULL);

	credentials_define_gucs();
	outbound_define_gucs();
	retention_define_gucs();

	MarkGUCPrefixReserved("llm");
}

/* llm.quota_timezone must name a time zone PostgreSQL knows */
static bool
check_quota_timezone(char **newval, void **extra, GucSource source)
{
	if (*newval == NULL || pg_tzset(*newval) == NULL)
	{
		GUC_check_errdetail("Time zone \"%s\" is not recognized.", *newval ? *newval : "");
		return false;
	}
	return true;
}
