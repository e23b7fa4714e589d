/*-------------------------------------------------------------------------
 *
 * credentials_sql.c
 *	  The SQL functions that manage provider credentials:
 *	  llm.set_credential, llm.set_credential_from_file, llm.drop_credential,
 *	  llm.set_credential_enabled, llm.master_key_id.
 *
 * runs in: backends.
 *
 * They encrypt with common/credentials.c, binding each ciphertext to its
 * provider and to the origin of the provider's base_url at that moment.
 *
 * Nothing here puts a secret into a message.  The functions also mark
 * their errors errhidestmt(), so a failed llm.set_credential('p', 'key')
 * (unknown provider, no master key, ...) does not copy its statement, with
 * the key, into the server log.  Errors raised before the function runs
 * (no EXECUTE privilege, a typo in the name) do log the statement under
 * log_min_error_statement, as log_statement logs every statement: hence
 * llm.set_credential_from_file().
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <ctype.h>

#include <openssl/crypto.h>

#include "access/htup_details.h"
#include "catalog/namespace.h"
#include "catalog/pg_authid.h"
#include "catalog/pg_class.h"
#include "catalog/pg_type.h"
#include "executor/spi.h"
#include "fmgr.h"
#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/acl.h"
#include "utils/builtins.h"
#include "utils/lsyscache.h"
#include "utils/syscache.h"

#include "common/credentials.h"
#include "backend/run_as.h"
#include "llm_gateway.h"

#define MAX_SECRET_BYTES	CRED_MAX_SECRET_BYTES
#define ADMIN_ROLE			"llm_admin"

PG_FUNCTION_INFO_V1(llm_set_credential);
PG_FUNCTION_INFO_V1(llm_set_credential_from_file);
PG_FUNCTION_INFO_V1(llm_drop_credential);
PG_FUNCTION_INFO_V1(llm_set_credential_enabled);
PG_FUNCTION_INFO_V1(llm_master_key_id);

/*-------------------------------------------------------------------------
 * SQL functions (backends)
 *
 * They are not SECURITY DEFINER: inside such a function current_user is
 * the owner, so the caller could not be checked.  Instead each checks the
 * caller (superuser, or privileges of llm_admin), then runs its own
 * statements as the owner of llm.credentials, whose rows nobody else may
 * read or write.
 *-------------------------------------------------------------------------
 */

static void
check_admin(const char *function)
{
	Oid			admin;

	if (superuser())
		return;
	admin = get_role_oid(ADMIN_ROLE, true);
	if (OidIsValid(admin) && has_privs_of_role(GetUserId(), admin))
		return;
	ereport(ERROR,
			(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
			 errmsg("permission denied for function %s", function),
			 errdetail("Only superusers and members of %s manage credentials.", ADMIN_ROLE),
			 errhint("An administrator can run GRANT %s TO the role.", ADMIN_ROLE),
			 errhidestmt(true)));
}

static Oid
credentials_owner(void)
{
	Oid			nsp = get_namespace_oid("llm", true);
	Oid			rel = OidIsValid(nsp) ? get_relname_relid("credentials", nsp) : InvalidOid;
	HeapTuple	tup;
	Oid			owner;

	if (!OidIsValid(rel))
		ereport(ERROR,
				(errcode(ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE),
				 errmsg("table llm.credentials does not exist"),
				 errhint("Install the extension with CREATE EXTENSION llm_gateway."),
				 errhidestmt(true)));
	tup = SearchSysCache1(RELOID, ObjectIdGetDatum(rel));
	if (!HeapTupleIsValid(tup))
		elog(ERROR, "cache lookup failed for relation %u", rel);
	owner = ((Form_pg_class) GETSTRUCT(tup))->relowner;
	ReleaseSysCache(tup);
	return owner;
}

/*
 * Run one statement as the owner of llm.credentials.  Any error (a foreign
 * key, a check constraint) is re-thrown without the caller's statement,
 * which may hold a secret.  Returns SPI_processed.  SPI is connected.
 */
static uint64
exec_as_owner(const char *sql, int nargs, Oid *types, Datum *values,
			  const char *nulls, int expect)
{
	LlmRunAs	ra;
	MemoryContext cxt = CurrentMemoryContext;
	int			ret = 0;
	uint64		processed = 0;

	run_as_begin(credentials_owner(), &ra);
	PG_TRY();
	{
		ret = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);
		processed = SPI_processed;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		run_as_end(&ra);
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		edata->hide_stmt = true;
		ReThrowError(edata);
	}
	PG_END_TRY();
	run_as_end(&ra);
	if (ret != expect)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
	return processed;
}

/* The provider's base_url, or NULL when there is no such provider. */
static char *
provider_base_url_of(const char *provider)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];

	values[0] = CStringGetTextDatum(provider);
	if (exec_as_owner("SELECT base_url FROM llm.providers WHERE name = $1",
					  1, types, values, NULL, SPI_OK_SELECT) == 0)
		return NULL;
	return SPI_getvalue(SPI_tuptable->vals[0], SPI_tuptable->tupdesc, 1);
}

/* The provider's base_url; ERROR when there is no such provider. */
static char *
require_provider(const char *provider)
{
	char	   *base_url = provider_base_url_of(provider);

	if (base_url == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("provider \"%s\" does not exist", provider),
				 errhint("Register it with llm.add_provider() first; see llm.providers."),
				 errhidestmt(true)));
	return base_url;
}

static char *
required_text_arg(FunctionCallInfo fcinfo, int n, const char *name)
{
	if (PG_ARGISNULL(n))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("%s must not be NULL", name),
				 errhidestmt(true)));
	return text_to_cstring(PG_GETARG_TEXT_PP(n));
}

/* Labels name a key of a provider (rotation, load spreading). */
static void
check_label(const char *label)
{
	const char *c;
	size_t		len = strlen(label);

	for (c = label; *c; c++)
		if (!(isalnum((unsigned char) *c) || *c == '_' || *c == '-' || *c == '.' || *c == ':'))
			break;
	if (len == 0 || len > 63 || *c != '\0')
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("credential label \"%s\" is not valid", label),
				 errdetail("A label has 1 to 63 characters among letters, digits, \"_\", \"-\", \".\" and \":\"."),
				 errhint("Use labels such as 'default', 'primary' or '2025-01'."),
				 errhidestmt(true)));
}

/* Never echo the secret: describe what is wrong with it. */
static void
check_secret(const char *secret, size_t len, const char *source)
{
	size_t		i;

	if (len == 0)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s must not be empty", source),
				 errhint("Pass the provider's API key."),
				 errhidestmt(true)));
	if (len > MAX_SECRET_BYTES)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("%s is longer than %d bytes", source, MAX_SECRET_BYTES),
				 errhint("Pass only the provider's API key."),
				 errhidestmt(true)));
	/* it goes into an HTTP header: a CR or LF would inject another */
	for (i = 0; i < len; i++)
		if ((unsigned char) secret[i] < 0x20 || secret[i] == 0x7f)
			ereport(ERROR,
					(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
					 errmsg("%s contains a control character at byte %zu", source, i + 1),
					 errdetail("The secret is sent in an HTTP header, where control characters are not allowed."),
					 errhint("Pass only the provider's API key, without line breaks."),
					 errhidestmt(true)));
}

static void
store_credential(const char *provider, const char *label, const char *secret)
{
	bytea	   *blob;
	Oid			types[4] = {TEXTOID, TEXTOID, BYTEAOID, TEXTOID};
	Datum		values[4];

	/* bound to the origin base_url has now: changing it needs the key again */
	blob = credential_encrypt(provider, require_provider(provider), secret);
	values[0] = CStringGetTextDatum(provider);
	values[1] = CStringGetTextDatum(label);
	values[2] = PointerGetDatum(blob);
	values[3] = CStringGetTextDatum(credential_key_id_of(blob));
	exec_as_owner("INSERT INTO llm.credentials AS c (provider, label, ciphertext, key_id) "
				  "VALUES ($1, $2, $3, $4) "
				  "ON CONFLICT (provider, label) DO UPDATE "
				  "   SET ciphertext = EXCLUDED.ciphertext, key_id = EXCLUDED.key_id, "
				  "       updated_at = now()",
				  4, types, values, NULL, SPI_OK_INSERT);
}

/*
 * llm.set_credential(provider text, secret text, label text DEFAULT 'default')
 *
 * Encrypts secret and stores it as the provider's credential named label,
 * replacing the one of that label (key rotation).  Not STRICT, so a NULL
 * is an error rather than a silent no-op.
 */
Datum
llm_set_credential(PG_FUNCTION_ARGS)
{
	char	   *provider;
	char	   *label;
	text	   *secret_t;
	char	   *secret;
	size_t		len;

	llm_check_preloaded();
	check_admin("set_credential");
	provider = required_text_arg(fcinfo, 0, "provider");
	label = required_text_arg(fcinfo, 2, "label");
	check_label(label);
	if (PG_ARGISNULL(1))
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("secret must not be empty"),
				 errhint("Pass the provider's API key."),
				 errhidestmt(true)));
	secret_t = PG_GETARG_TEXT_PP(1);
	len = VARSIZE_ANY_EXHDR(secret_t);
	secret = text_to_cstring(secret_t);
	check_secret(secret, len, "secret");

	SPI_connect();
	store_credential(provider, label, secret);
	SPI_finish();

	OPENSSL_cleanse(secret, len);
	PG_RETURN_VOID();
}

/*
 * llm.set_credential_from_file(provider text, path text, label text DEFAULT 'default')
 *
 * The same, with the secret read from a server-side file, so it never
 * appears in SQL text, pg_stat_activity or a statement log.  Reading server
 * files takes what pg_read_file() takes: superuser or pg_read_server_files.
 * Trailing line breaks are removed.
 */
Datum
llm_set_credential_from_file(PG_FUNCTION_ARGS)
{
	char	   *provider;
	char	   *path;
	char	   *label;
	FILE	   *f;
	char	   *buf;
	size_t		len;

	llm_check_preloaded();
	check_admin("set_credential_from_file");
	if (!superuser() && !has_privs_of_role(GetUserId(), ROLE_PG_READ_SERVER_FILES))
		ereport(ERROR,
				(errcode(ERRCODE_INSUFFICIENT_PRIVILEGE),
				 errmsg("permission denied to read a secret from a server file"),
				 errdetail("Only superusers and roles with privileges of pg_read_server_files may read server files."),
				 errhint("Use llm.set_credential() with a psql variable, or GRANT pg_read_server_files to the role.")));
	provider = required_text_arg(fcinfo, 0, "provider");
	path = required_text_arg(fcinfo, 1, "path");
	label = required_text_arg(fcinfo, 2, "label");
	check_label(label);

	SPI_connect();
	require_provider(provider);

	f = AllocateFile(path, PG_BINARY_R);
	if (f == NULL)
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not open secret file \"%s\": %m", path),
				 errhint("The file is read by the server (relative paths are relative to the data directory), as the server's OS user.")));
	buf = palloc(MAX_SECRET_BYTES + 2);
	len = fread(buf, 1, MAX_SECRET_BYTES + 2, f);
	if (ferror(f))
	{
		OPENSSL_cleanse(buf, MAX_SECRET_BYTES + 2);
		ereport(ERROR,
				(errcode_for_file_access(),
				 errmsg("could not read secret file \"%s\": %m", path)));
	}
	FreeFile(f);

	/* "echo key > file" and editors add a final newline */
	while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'))
		len--;
	if (len > MAX_SECRET_BYTES)
		len = MAX_SECRET_BYTES + 1;
	buf[len] = '\0';
	check_secret(buf, len, psprintf("the secret in file \"%s\"", path));

	store_credential(provider, label, buf);
	SPI_finish();

	OPENSSL_cleanse(buf, MAX_SECRET_BYTES + 2);
	PG_RETURN_VOID();
}

/*
 * llm.drop_credential(provider text, label text DEFAULT NULL) returns int
 *
 * Removes the provider's credential of that label, or all of them (NULL).
 */
Datum
llm_drop_credential(PG_FUNCTION_ARGS)
{
	char	   *provider;
	Oid			types[2] = {TEXTOID, TEXTOID};
	Datum		values[2];
	char		nulls[2] = {' ', ' '};
	uint64		n;

	llm_check_preloaded();
	check_admin("drop_credential");
	provider = required_text_arg(fcinfo, 0, "provider");
	values[0] = CStringGetTextDatum(provider);
	if (PG_ARGISNULL(1))
	{
		values[1] = (Datum) 0;
		nulls[1] = 'n';
	}
	else
		values[1] = PG_GETARG_DATUM(1);

	SPI_connect();
	require_provider(provider);
	n = exec_as_owner("DELETE FROM llm.credentials "
					  " WHERE provider = $1 AND ($2::text IS NULL OR label = $2)",
					  2, types, values, nulls, SPI_OK_DELETE);
	SPI_finish();
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 PG_ARGISNULL(1) ?
				 errmsg("provider \"%s\" has no credentials", provider) :
				 errmsg("provider \"%s\" has no credential labelled \"%s\"",
						provider, text_to_cstring(PG_GETARG_TEXT_PP(1))),
				 errhint("See llm.credentials_info.")));
	PG_RETURN_INT32((int32) n);
}

/*
 * llm.set_credential_enabled(provider text, label text, enabled bool)
 *
 * Takes a credential out of use (or back) without forgetting it.
 */
Datum
llm_set_credential_enabled(PG_FUNCTION_ARGS)
{
	char	   *provider;
	char	   *label;
	Oid			types[3] = {TEXTOID, TEXTOID, BOOLOID};
	Datum		values[3];
	uint64		n;

	llm_check_preloaded();
	check_admin("set_credential_enabled");
	provider = required_text_arg(fcinfo, 0, "provider");
	label = required_text_arg(fcinfo, 1, "label");
	if (PG_ARGISNULL(2))
		ereport(ERROR,
				(errcode(ERRCODE_NULL_VALUE_NOT_ALLOWED),
				 errmsg("enabled must not be NULL")));
	values[0] = CStringGetTextDatum(provider);
	values[1] = CStringGetTextDatum(label);
	values[2] = PG_GETARG_DATUM(2);

	SPI_connect();
	require_provider(provider);
	n = exec_as_owner("UPDATE llm.credentials SET enabled = $3, updated_at = now() "
					  " WHERE provider = $1 AND label = $2",
					  3, types, values, NULL, SPI_OK_UPDATE);
	SPI_finish();
	if (n == 0)
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("provider \"%s\" has no credential labelled \"%s\"", provider, label),
				 errhint("See llm.credentials_info.")));
	PG_RETURN_VOID();
}

/*
 * llm.master_key_id() returns text
 *
 * The id (hex) of the current master key, as recorded in
 * llm.credentials.key_id: rows with another id need set_credential again.
 */
Datum
llm_master_key_id(PG_FUNCTION_ARGS)
{
	llm_check_preloaded();
	check_admin("master_key_id");
	PG_RETURN_TEXT_P(cstring_to_text(credential_master_key_id()));
}
