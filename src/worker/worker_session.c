/*-------------------------------------------------------------------------
 *
 * worker_session.c
 *	  The gateway worker's database session: settings nobody else chooses,
 *	  and the unprivileged role its transactions run as.
 *
 * runs in: worker.
 *
 * The worker is privileged code serving every role of the cluster, so
 * nothing a non-superuser controls may change what its SQL means or how
 * long it waits:
 *
 *	- InitPostgres applies ALTER DATABASE ... SET and ALTER ROLE ... SET of
 *	  the database it serves, which that database's owner controls.  Right
 *	  after connecting, worker_session_init() sets every setting that could
 *	  redirect name resolution (search_path) or stall or break the worker
 *	  (statement_timeout, lock_timeout, read-only transactions, ...) at
 *	  PGC_S_OVERRIDE, above any database, role or session source, for the
 *	  life of the process (a SIGHUP reload does not lower it).
 *	- A background worker must connect as a role that exists before
 *	  CREATE EXTENSION, so it connects as the bootstrap superuser; but
 *	  each of its transactions runs as llm_gateway_worker (created by the
 *	  install script, NOLOGIN, only the privileges the worker needs) in a
 *	  security-restricted operation.  A trigger an administrator adds to
 *	  llm.requests, or any function some future change might resolve by
 *	  mistake, then runs without superuser rights.  AbortTransaction
 *	  restores the user of transaction start, so worker_session_enter()
 *	  is called at the start of every transaction, not once.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include "miscadmin.h"
#include "utils/acl.h"
#include "utils/guc.h"

#include "worker/worker_session.h"

/*
 * name, value: what the worker's session uses whatever the database or
 * role says.  statement_timeout bounds any one statement of the log or the
 * route cache; lock_timeout makes a lock held by someone else a retry next
 * turn rather than a stall of every call (the log batches may set a
 * shorter one locally).
 */
static const char *const fixed_settings[][2] = {
	{"search_path", "pg_catalog, pg_temp"},
	{"role", "none"},			/* ALTER DATABASE ... SET role = <owner's role> */
	{"statement_timeout", "30s"},
	{"lock_timeout", "1s"},
	{"idle_in_transaction_session_timeout", "0"},
	{"default_transaction_read_only", "off"},
	{"default_transaction_isolation", "read committed"},
	{"default_transaction_deferrable", "off"},
	{"session_replication_role", "origin"},
	{"row_security", "on"},
	{"check_function_bodies", "on"},
	{"default_table_access_method", "heap"},
	{"DateStyle", "ISO, YMD"},
	{"IntervalStyle", "postgres"},
	{"TimeZone", "UTC"},
	{"extra_float_digits", "1"},
	{"bytea_output", "hex"},
	{"standard_conforming_strings", "on"},
	{"client_min_messages", "warning"},
};

void
worker_session_init(void)
{
	int			i;

	for (i = 0; i < lengthof(fixed_settings); i++)
		(void) set_config_option(fixed_settings[i][0], fixed_settings[i][1],
								 PGC_SUSET, PGC_S_OVERRIDE, GUC_ACTION_SET,
								 true, ERROR, false);
}

/*
 * Inside a transaction: run the rest of it as llm_gateway_worker.  False
 * when the role does not exist (the extension was never installed in this
 * cluster): the caller must then not touch the extension's tables.
 */
bool
worker_session_enter(void)
{
	Oid			role = get_role_oid(LLM_WORKER_ROLE, true);

	if (!OidIsValid(role))
		return false;
	SetUserIdAndSecContext(role, SECURITY_RESTRICTED_OPERATION);
	return true;
}
