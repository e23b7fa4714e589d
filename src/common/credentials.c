/*-------------------------------------------------------------------------
 *
 * credentials.c
 *	  Provider secrets encrypted at rest.
 *
 * runs in: backends (the llm.set_credential family encrypts), worker
 * (credentials_load decrypts when the route cache is loaded).
 *
 * The master key is 32 random bytes, written as 64 hexadecimal characters
 * (surrounding whitespace allowed) in the file named by the superuser-only
 * GUC llm.master_key_file; the file must be owned by the server's OS user
 * and not readable by group or others.  Create it with
 *
 *	   openssl rand -hex 32 > master.key && chmod 600 master.key
 *
 * Each process reads the key once and re-reads it when the GUC or the file
 * changes (checked with stat() at each use; the worker reloads its route
 * cache on SIGHUP, which decrypts again).  There is no plaintext fallback:
 * without a usable key, storing a credential fails and a call whose
 * provider has credentials fails before anything is sent.
 *
 * Stored form (llm.credentials.ciphertext), format version 1:
 *
 *	   version (1 byte, = 1)
 *	   key id (8 bytes: the first 8 bytes of SHA-256 of the master key)
 *	   provider id (4 bytes: the first 4 bytes of SHA-256 of the provider name)
 *	   nonce (12 random bytes)
 *	   ciphertext (as long as the secret)
 *	   tag (16 bytes)
 *
 * AES-256-GCM; the associated data is the first 13 bytes (version, key id,
 * provider id) followed by the provider name, so a ciphertext is bound to
 * its provider and its header.  The key id tells a wrong master key apart
 * before decrypting, and the provider id tells a ciphertext copied from
 * another provider apart from a corrupt one; neither reveals the key.
 *
 * Nothing here puts a secret into a message.  The SQL functions also mark
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
#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

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
#include "utils/guc.h"
#include "utils/lsyscache.h"
#include "utils/memutils.h"
#include "utils/syscache.h"

#include "common/credentials.h"
#include "llm_gateway.h"

#define CRED_VERSION		1
#define CRED_KEY_LEN		32
#define CRED_KEYID_LEN		8
#define CRED_PROVID_LEN		4
#define CRED_NONCE_LEN		12
#define CRED_TAG_LEN		16
#define CRED_AAD_HEADER_LEN (1 + CRED_KEYID_LEN + CRED_PROVID_LEN)
#define CRED_HEADER_LEN		(CRED_AAD_HEADER_LEN + CRED_NONCE_LEN)

#define MAX_KEY_FILE_BYTES	4096
#define MAX_SECRET_BYTES	16384

#define ADMIN_ROLE			"llm_admin"

#define HINT_CREATE_KEY \
	"Create a key file as the server's OS user with \"openssl rand -hex 32 > FILE && chmod 600 FILE\", " \
	"set llm.master_key_file = 'FILE' in postgresql.conf, and reload the configuration."
#define HINT_STORE_AGAIN \
	"Store the secret again with llm.set_credential()."

char	   *llm_master_key_file = NULL;

/* The master key of this process, and the file state it was read from. */
static struct
{
	bool		valid;
	char		path[MAXPGPATH];
	struct stat st;
	unsigned char key[CRED_KEY_LEN];
	unsigned char id[CRED_KEYID_LEN];
}			master;

/* A failure as a value: the worker must not ERROR. */
typedef struct CredError
{
	int			sqlerrcode;
	char	   *message;
	char	   *detail;			/* may be NULL */
	char	   *hint;			/* may be NULL */
} CredError;

PG_FUNCTION_INFO_V1(llm_set_credential);
PG_FUNCTION_INFO_V1(llm_set_credential_from_file);
PG_FUNCTION_INFO_V1(llm_drop_credential);
PG_FUNCTION_INFO_V1(llm_set_credential_enabled);
PG_FUNCTION_INFO_V1(llm_master_key_id);

void
credentials_define_gucs(void)
{
	DefineCustomStringVariable("llm.master_key_file",
							   "File holding the master key that encrypts llm.credentials.",
							   "64 hexadecimal characters (32 random bytes), mode 0600, owned by the "
							   "server's OS user; a relative path is relative to the data directory.",
							   &llm_master_key_file,
							   "",
							   PGC_SIGHUP,
							   GUC_SUPERUSER_ONLY,
							   NULL, NULL, NULL);
}

/*-------------------------------------------------------------------------
 * The master key
 *-------------------------------------------------------------------------
 */

static void
set_error(CredError *err, int sqlerrcode, char *message, char *detail, char *hint)
{
	err->sqlerrcode = sqlerrcode;
	err->message = message;
	err->detail = detail;
	err->hint = hint;
}

static void
forget_master_key(void)
{
	OPENSSL_cleanse(master.key, sizeof(master.key));
	memset(master.id, 0, sizeof(master.id));
	master.valid = false;
}

/* Did the file change since we read it (replaced, rewritten, chmod, chown)? */
static bool
same_file_state(const struct stat *a, const struct stat *b)
{
	return a->st_dev == b->st_dev && a->st_ino == b->st_ino &&
		a->st_size == b->st_size && a->st_mode == b->st_mode &&
		a->st_uid == b->st_uid &&
		a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec &&
		a->st_ctim.tv_sec == b->st_ctim.tv_sec && a->st_ctim.tv_nsec == b->st_ctim.tv_nsec;
}

static char *
hex_of(const unsigned char *bytes, int n)
{
	char	   *out = palloc(n * 2 + 1);

	hex_encode((const char *) bytes, n, out);
	out[n * 2] = '\0';
	return out;
}

static int
hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

static bool
is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v';
}

/* Parse the key file's text: 64 hex digits, whitespace around them only. */
static bool
parse_key_text(const char *buf, size_t len, unsigned char *key, int *nonspace)
{
	size_t		i;
	int			n;

	*nonspace = 0;
	for (i = 0; i < len; i++)
		if (!is_space(buf[i]))
			(*nonspace)++;
	if (*nonspace != CRED_KEY_LEN * 2)
		return false;

	i = 0;
	while (i < len && is_space(buf[i]))
		i++;
	/* the 64 non-space characters counted above start here */
	for (n = 0; n < CRED_KEY_LEN; n++, i += 2)
	{
		int			hi = i + 1 < len ? hex_digit(buf[i]) : -1;
		int			lo = i + 1 < len ? hex_digit(buf[i + 1]) : -1;

		if (hi < 0 || lo < 0)
			return false;
		key[n] = (unsigned char) ((hi << 4) | lo);
	}
	return true;
}

static char *
os_user_name(void)
{
	struct passwd *pw = getpwuid(geteuid());

	return pw ? pstrdup(pw->pw_name) : psprintf("%u", (unsigned) geteuid());
}

/* Describe an open()/stat() failure of the key file. */
static bool
key_file_error(CredError *err, const char *path, int save_errno)
{
	if (save_errno == ENOENT)
		set_error(err, ERRCODE_UNDEFINED_FILE,
				  psprintf("master key file \"%s\" does not exist", path),
				  pstrdup("llm.master_key_file names it; relative paths are relative to the data directory."),
				  pstrdup(HINT_CREATE_KEY));
	else
		set_error(err, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  psprintf("could not read master key file \"%s\": %s", path, strerror(save_errno)),
				  NULL,
				  psprintf("The file must be readable by the server's OS user (%s).", os_user_name()));
	return false;
}

/*
 * Make sure master holds the key of the current llm.master_key_file.
 * False with err filled when there is no usable key.  Never ERRORs.
 */
static bool
master_key_load(CredError *err)
{
	const char *path = llm_master_key_file;
	struct stat st;
	char		buf[MAX_KEY_FILE_BYTES + 1];
	ssize_t		got = 0;
	int			fd;
	int			nonspace;
	bool		parsed;
	unsigned int mdlen = 0;
	unsigned char md[EVP_MAX_MD_SIZE];

	if (path == NULL || path[0] == '\0')
	{
		forget_master_key();
		set_error(err, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  pstrdup("llm.master_key_file is not set"),
				  pstrdup("Credentials are stored encrypted, and there is no master key to encrypt or decrypt them with."),
				  pstrdup(HINT_CREATE_KEY));
		return false;
	}
	if (strlen(path) >= MAXPGPATH)
	{
		forget_master_key();
		set_error(err, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  pstrdup("llm.master_key_file is too long"), NULL,
				  psprintf("Use a path shorter than %d bytes.", MAXPGPATH));
		return false;
	}

	/* cheap check first: the same file, unchanged, keeps the cached key */
	if (stat(path, &st) != 0)
	{
		forget_master_key();
		return key_file_error(err, path, errno);
	}
	if (master.valid && strcmp(master.path, path) == 0 && same_file_state(&st, &master.st))
		return true;
	forget_master_key();

	fd = open(path, O_RDONLY | O_CLOEXEC, 0);
	if (fd < 0)
		return key_file_error(err, path, errno);
	if (fstat(fd, &st) != 0)
	{
		int			save_errno = errno;

		close(fd);
		return key_file_error(err, path, save_errno);
	}
	if (!S_ISREG(st.st_mode))
	{
		close(fd);
		set_error(err, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  psprintf("master key file \"%s\" is not a regular file", path), NULL,
				  pstrdup(HINT_CREATE_KEY));
		return false;
	}
	if (st.st_uid != geteuid())
	{
		char	   *user = os_user_name();

		close(fd);
		set_error(err, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  psprintf("master key file \"%s\" is not owned by the server's OS user", path),
				  psprintf("It is owned by uid %u; the server runs as %s (uid %u).",
						   (unsigned) st.st_uid, user, (unsigned) geteuid()),
				  psprintf("Run \"chown %s %s && chmod 600 %s\".", user, path, path));
		return false;
	}
	if ((st.st_mode & (S_IRWXG | S_IRWXO)) != 0)
	{
		close(fd);
		set_error(err, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  psprintf("master key file \"%s\" is accessible by other users", path),
				  psprintf("Its mode is %04o; only the server's OS user may read the master key.",
						   (unsigned) (st.st_mode & 07777)),
				  psprintf("Run \"chmod 600 %s\".", path));
		return false;
	}
	if (st.st_size > MAX_KEY_FILE_BYTES)
	{
		close(fd);
		set_error(err, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  psprintf("master key file \"%s\" does not hold a 256-bit key", path),
				  psprintf("It is %lld bytes long; it must contain 64 hexadecimal characters.",
						   (long long) st.st_size),
				  pstrdup(HINT_CREATE_KEY));
		return false;
	}
	while (got < MAX_KEY_FILE_BYTES)
	{
		ssize_t		n = read(fd, buf + got, MAX_KEY_FILE_BYTES - got);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
		{
			int			save_errno = errno;

			close(fd);
			OPENSSL_cleanse(buf, sizeof(buf));
			return key_file_error(err, path, save_errno);
		}
		if (n == 0)
			break;
		got += n;
	}
	close(fd);

	parsed = parse_key_text(buf, (size_t) got, master.key, &nonspace);
	OPENSSL_cleanse(buf, sizeof(buf));
	if (!parsed)
	{
		forget_master_key();
		set_error(err, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  psprintf("master key file \"%s\" does not hold a 256-bit key", path),
				  nonspace == CRED_KEY_LEN * 2 ?
				  pstrdup("It must contain exactly 64 hexadecimal characters (32 random bytes), optionally surrounded by whitespace; it has other characters.") :
				  psprintf("It must contain exactly 64 hexadecimal characters (32 random bytes), optionally surrounded by whitespace; it has %d non-space characters.",
						   nonspace),
				  pstrdup(HINT_CREATE_KEY));
		return false;
	}

	if (EVP_Digest(master.key, CRED_KEY_LEN, md, &mdlen, EVP_sha256(), NULL) != 1)
	{
		forget_master_key();
		ERR_clear_error();
		set_error(err, ERRCODE_INTERNAL_ERROR,
				  pstrdup("could not compute the id of the master key"), NULL, NULL);
		return false;
	}
	memcpy(master.id, md, CRED_KEYID_LEN);
	OPENSSL_cleanse(md, sizeof(md));
	strlcpy(master.path, path, sizeof(master.path));
	master.st = st;
	master.valid = true;
	return true;
}

static void
report_error(const CredError *err)
{
	ereport(ERROR,
			(errcode(err->sqlerrcode),
			 errmsg_internal("%s", err->message),
			 err->detail ? errdetail_internal("%s", err->detail) : 0,
			 err->hint ? errhint("%s", err->hint) : 0,
			 errhidestmt(true)));
}

/* Backend: the master key, or ERROR. */
static void
master_key_require(void)
{
	CredError	err;

	if (!master_key_load(&err))
		report_error(&err);
}

/*-------------------------------------------------------------------------
 * Encryption and decryption
 *-------------------------------------------------------------------------
 */

static bool
provider_id(const char *provider, unsigned char *out)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;

	if (EVP_Digest(provider, strlen(provider), md, &mdlen, EVP_sha256(), NULL) != 1)
	{
		ERR_clear_error();
		return false;
	}
	memcpy(out, md, CRED_PROVID_LEN);
	return true;
}

static const char *
openssl_reason(void)
{
	unsigned long e = ERR_get_error();
	const char *r = e ? ERR_reason_error_string(e) : NULL;

	ERR_clear_error();
	return r ? r : "no detail";
}

bytea *
credential_encrypt(const char *provider, const char *secret)
{
	size_t		slen = strlen(secret);
	size_t		plen = strlen(provider);
	bytea	   *out;
	unsigned char *p;
	unsigned char *ct;
	EVP_CIPHER_CTX *ctx;
	int			len = 0;
	int			flen = 0;
	bool		ok;

	master_key_require();

	out = (bytea *) palloc(VARHDRSZ + CRED_HEADER_LEN + slen + CRED_TAG_LEN);
	SET_VARSIZE(out, VARHDRSZ + CRED_HEADER_LEN + slen + CRED_TAG_LEN);
	p = (unsigned char *) VARDATA(out);
	p[0] = CRED_VERSION;
	memcpy(p + 1, master.id, CRED_KEYID_LEN);
	if (!provider_id(provider, p + 1 + CRED_KEYID_LEN))
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not encrypt the credential of provider \"%s\"", provider),
				 errdetail("SHA-256 failed."),
				 errhidestmt(true)));
	if (RAND_bytes(p + CRED_AAD_HEADER_LEN, CRED_NONCE_LEN) != 1)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not generate a random nonce for the credential of provider \"%s\"", provider),
				 errdetail("OpenSSL: %s.", openssl_reason()),
				 errhidestmt(true)));
	ct = p + CRED_HEADER_LEN;

	ERR_clear_error();
	ctx = EVP_CIPHER_CTX_new();
	ok = ctx != NULL &&
		EVP_EncryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, CRED_NONCE_LEN, NULL) == 1 &&
		EVP_EncryptInit_ex(ctx, NULL, NULL, master.key, p + CRED_AAD_HEADER_LEN) == 1 &&
		EVP_EncryptUpdate(ctx, NULL, &len, p, CRED_AAD_HEADER_LEN) == 1 &&
		EVP_EncryptUpdate(ctx, NULL, &len, (const unsigned char *) provider, (int) plen) == 1 &&
		EVP_EncryptUpdate(ctx, ct, &len, (const unsigned char *) secret, (int) slen) == 1 &&
		EVP_EncryptFinal_ex(ctx, ct + len, &flen) == 1 &&
		(size_t) (len + flen) == slen &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, CRED_TAG_LEN, ct + slen) == 1;
	/* EVP_CIPHER_CTX_free wipes the expanded key */
	EVP_CIPHER_CTX_free(ctx);
	if (!ok)
	{
		OPENSSL_cleanse(ct, slen);
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("could not encrypt the credential of provider \"%s\"", provider),
				 errdetail("OpenSSL: %s.", openssl_reason()),
				 errhidestmt(true)));
	}
	return out;
}

/* Decryption with the reason and a hint as values; NULL on failure. */
static char *
decrypt_internal(const char *provider, bytea *blob, CredError *err)
{
	bytea	   *b = (bytea *) pg_detoast_datum_packed((struct varlena *) blob);
	const unsigned char *p = (const unsigned char *) VARDATA_ANY(b);
	size_t		n = VARSIZE_ANY_EXHDR(b);
	size_t		ctlen;
	unsigned char pid[CRED_PROVID_LEN];
	unsigned char tag[CRED_TAG_LEN];
	EVP_CIPHER_CTX *ctx;
	char	   *plain;
	int			len = 0;
	int			flen = 0;
	bool		ok;

	if (n < CRED_HEADER_LEN + 1 + CRED_TAG_LEN)
	{
		set_error(err, ERRCODE_DATA_CORRUPTED,
				  psprintf("the stored ciphertext is truncated (%zu bytes)", n),
				  NULL, pstrdup(HINT_STORE_AGAIN));
		return NULL;
	}
	if (p[0] != CRED_VERSION)
	{
		set_error(err, ERRCODE_DATA_CORRUPTED,
				  psprintf("the stored ciphertext has unknown format version %d", p[0]),
				  NULL, pstrdup(HINT_STORE_AGAIN));
		return NULL;
	}
	if (!master_key_load(err))
		return NULL;
	if (memcmp(p + 1, master.id, CRED_KEYID_LEN) != 0)
	{
		set_error(err, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  psprintf("the master key does not match (the credential was encrypted under key id %s, llm.master_key_file holds key id %s)",
						   hex_of(p + 1, CRED_KEYID_LEN), hex_of(master.id, CRED_KEYID_LEN)),
				  NULL,
				  pstrdup("Restore the master key file the credential was encrypted with, or store the secret again with llm.set_credential() under the current key."));
		return NULL;
	}
	if (!provider_id(provider, pid))
	{
		set_error(err, ERRCODE_INTERNAL_ERROR, pstrdup("SHA-256 failed"), NULL, NULL);
		return NULL;
	}
	if (memcmp(p + 1 + CRED_KEYID_LEN, pid, CRED_PROVID_LEN) != 0)
	{
		set_error(err, ERRCODE_DATA_CORRUPTED,
				  pstrdup("the ciphertext was encrypted for another provider (copied from another row of llm.credentials?)"),
				  NULL, pstrdup(HINT_STORE_AGAIN));
		return NULL;
	}

	ctlen = n - CRED_HEADER_LEN - CRED_TAG_LEN;
	memcpy(tag, p + n - CRED_TAG_LEN, CRED_TAG_LEN);
	plain = palloc(ctlen + 1);

	ERR_clear_error();
	ctx = EVP_CIPHER_CTX_new();
	ok = ctx != NULL &&
		EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), NULL, NULL, NULL) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_IVLEN, CRED_NONCE_LEN, NULL) == 1 &&
		EVP_DecryptInit_ex(ctx, NULL, NULL, master.key, p + CRED_AAD_HEADER_LEN) == 1 &&
		EVP_DecryptUpdate(ctx, NULL, &len, p, CRED_AAD_HEADER_LEN) == 1 &&
		EVP_DecryptUpdate(ctx, NULL, &len, (const unsigned char *) provider, (int) strlen(provider)) == 1 &&
		EVP_DecryptUpdate(ctx, (unsigned char *) plain, &len, p + CRED_HEADER_LEN, (int) ctlen) == 1 &&
		EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, CRED_TAG_LEN, tag) == 1 &&
		EVP_DecryptFinal_ex(ctx, (unsigned char *) plain + len, &flen) == 1 &&
		(size_t) (len + flen) == ctlen;
	EVP_CIPHER_CTX_free(ctx);
	ERR_clear_error();
	if (!ok || memchr(plain, '\0', ctlen) != NULL)
	{
		/* a failed tag check leaves unauthenticated bytes: wipe them */
		OPENSSL_cleanse(plain, ctlen + 1);
		pfree(plain);
		set_error(err, ERRCODE_DATA_CORRUPTED,
				  pstrdup("the ciphertext failed authentication (it was altered or is corrupt)"),
				  NULL, pstrdup(HINT_STORE_AGAIN));
		return NULL;
	}
	plain[ctlen] = '\0';
	if ((Pointer) b != (Pointer) blob)
		pfree(b);
	return plain;
}

char *
credential_decrypt(const char *provider, bytea *blob, char **errmsg)
{
	CredError	err;
	char	   *plain = decrypt_internal(provider, blob, &err);

	if (plain == NULL)
		*errmsg = err.message;
	return plain;
}

/*-------------------------------------------------------------------------
 * Worker side: the credentials of every provider
 *-------------------------------------------------------------------------
 */

/* Memory-context reset callback: wipe the plaintexts before they are freed. */
static void
wipe_secrets(void *arg)
{
	List	   *all = (List *) arg;
	ListCell   *lc;

	foreach(lc, all)
	{
		LlmProviderCredentials *pc = lfirst(lc);
		int			i;

		for (i = 0; i < pc->ncredentials; i++)
			OPENSSL_cleanse(pc->credentials[i].secret, strlen(pc->credentials[i].secret));
	}
}

static void
close_provider(LlmProviderCredentials *pc, List *usable)
{
	ListCell   *lc;
	int			i = 0;

	pc->ncredentials = list_length(usable);
	pc->credentials = palloc0(sizeof(LlmCredential) * Max(pc->ncredentials, 1));
	foreach(lc, usable)
		pc->credentials[i++] = *(LlmCredential *) lfirst(lc);
	if (pc->ncredentials > 0)
	{
		pc->error = NULL;
		pc->hint = NULL;
	}
}

List *
credentials_load(MemoryContext cxt)
{
	List	   *all = NIL;
	List	   *usable = NIL;
	LlmProviderCredentials *pc = NULL;
	MemoryContext old;
	MemoryContextCallback *cb;
	uint64		i;
	int			ret;

	ret = SPI_execute("SELECT provider, label, ciphertext FROM llm.credentials "
					  " WHERE enabled ORDER BY provider, label",
					  true, 0);
	if (ret != SPI_OK_SELECT)
		elog(ERROR, "could not read llm.credentials: %s", SPI_result_code_string(ret));

	old = MemoryContextSwitchTo(cxt);
	for (i = 0; i < SPI_processed; i++)
	{
		HeapTuple	tup = SPI_tuptable->vals[i];
		TupleDesc	desc = SPI_tuptable->tupdesc;
		bool		isnull;
		char	   *provider = TextDatumGetCString(SPI_getbinval(tup, desc, 1, &isnull));
		char	   *label = TextDatumGetCString(SPI_getbinval(tup, desc, 2, &isnull));
		Datum		blob = SPI_getbinval(tup, desc, 3, &isnull);
		CredError	err;
		char	   *plain;

		if (pc == NULL || strcmp(pc->provider, provider) != 0)
		{
			if (pc != NULL)
				close_provider(pc, usable);
			pc = palloc0(sizeof(LlmProviderCredentials));
			pc->provider = provider;
			all = lappend(all, pc);
			usable = NIL;
		}

		plain = decrypt_internal(provider, DatumGetByteaPP(blob), &err);
		if (plain != NULL)
		{
			LlmCredential *c = palloc(sizeof(LlmCredential));

			c->label = label;
			c->secret = plain;
			usable = lappend(usable, c);
			continue;
		}
		/* keep the first reason, for the case that none is usable */
		if (pc->error == NULL)
		{
			pc->error = err.message;
			pc->hint = err.hint;
		}
		ereport(WARNING,
				(errcode(err.sqlerrcode),
				 errmsg("credential \"%s\" of provider \"%s\" cannot be used: %s",
						label, provider, err.message),
				 err.detail ? errdetail_internal("%s", err.detail) : 0,
				 err.hint ? errhint("%s", err.hint) : 0));
	}
	if (pc != NULL)
		close_provider(pc, usable);

	cb = palloc0(sizeof(MemoryContextCallback));
	cb->func = wipe_secrets;
	cb->arg = all;
	MemoryContextRegisterResetCallback(cxt, cb);
	MemoryContextSwitchTo(old);
	return all;
}

LlmProviderCredentials *
credentials_find(List *all, const char *provider)
{
	ListCell   *lc;

	foreach(lc, all)
	{
		LlmProviderCredentials *pc = lfirst(lc);

		if (strcmp(pc->provider, provider) == 0)
			return pc;
	}
	return NULL;
}

const char *
credentials_next_secret(LlmProviderCredentials *pc)
{
	if (pc == NULL || pc->ncredentials == 0)
		return NULL;
	return pc->credentials[pc->next++ % pc->ncredentials].secret;
}

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
	Oid			owner = credentials_owner();
	Oid			save_userid;
	int			save_sec;
	MemoryContext cxt = CurrentMemoryContext;
	int			ret = 0;
	uint64		processed = 0;

	GetUserIdAndSecContext(&save_userid, &save_sec);
	SetUserIdAndSecContext(owner, save_sec | SECURITY_LOCAL_USERID_CHANGE |
						   SECURITY_RESTRICTED_OPERATION);
	PG_TRY();
	{
		ret = SPI_execute_with_args(sql, nargs, types, values, nulls, false, 0);
		processed = SPI_processed;
	}
	PG_CATCH();
	{
		ErrorData  *edata;

		SetUserIdAndSecContext(save_userid, save_sec);
		MemoryContextSwitchTo(cxt);
		edata = CopyErrorData();
		FlushErrorState();
		edata->hide_stmt = true;
		ReThrowError(edata);
	}
	PG_END_TRY();
	SetUserIdAndSecContext(save_userid, save_sec);
	if (ret != expect)
		elog(ERROR, "SPI_execute_with_args failed: %s", SPI_result_code_string(ret));
	return processed;
}

static bool
provider_exists(const char *provider)
{
	Oid			types[1] = {TEXTOID};
	Datum		values[1];

	values[0] = CStringGetTextDatum(provider);
	return exec_as_owner("SELECT 1 FROM llm.providers WHERE name = $1",
						 1, types, values, NULL, SPI_OK_SELECT) > 0;
}

static void
require_provider(const char *provider)
{
	if (!provider_exists(provider))
		ereport(ERROR,
				(errcode(ERRCODE_UNDEFINED_OBJECT),
				 errmsg("provider \"%s\" does not exist", provider),
				 errhint("Register it with llm.add_provider() first; see llm.providers."),
				 errhidestmt(true)));
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

	require_provider(provider);
	blob = credential_encrypt(provider, secret);
	values[0] = CStringGetTextDatum(provider);
	values[1] = CStringGetTextDatum(label);
	values[2] = PointerGetDatum(blob);
	values[3] = CStringGetTextDatum(hex_of((unsigned char *) VARDATA(blob) + 1, CRED_KEYID_LEN));
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
	master_key_require();
	PG_RETURN_TEXT_P(cstring_to_text(hex_of(master.id, CRED_KEYID_LEN)));
}
