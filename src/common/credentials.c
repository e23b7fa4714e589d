/*-------------------------------------------------------------------------
 *
 * credentials.c
 *	  Provider secrets encrypted at rest: the master key and the cipher.
 *
 * runs in: backends (encrypt, for the llm.set_credential family in
 * backend/credentials_sql.c) and the worker (decrypt, for the loader in
 * worker/credential_loader.c).  Decryption never ERRORs.
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
 * Stored form (llm.credentials.ciphertext), format version 2:
 *
 *	   version (1 byte, = 2)
 *	   key id (8 bytes: the first 8 bytes of SHA-256 of the master key)
 *	   provider id (4 bytes: the first 4 bytes of SHA-256 of the provider name)
 *	   origin id (4 bytes: the first 4 bytes of SHA-256 of the origin)
 *	   nonce (12 random bytes)
 *	   ciphertext (as long as the secret)
 *	   tag (16 bytes)
 *
 * AES-256-GCM; the associated data is the first 17 bytes followed by the
 * provider name, a zero byte and the origin of the provider's base_url
 * ("https://api.openai.com:443").  So a ciphertext is bound to its
 * provider, to the origin its key may be sent to, and to its header: an
 * llm_admin who points base_url at a host of theirs (alter_provider, or an
 * UPDATE of llm.providers) gets a provider whose key no longer decrypts,
 * and nothing is sent.  The ids let the worker report distinct causes
 * (another master key, a row copied from another provider, another
 * origin, tampering) without the secret; GCM alone cannot tell a wrong
 * associated data from an altered byte.  Version 1 (no origin) is refused
 * with "set it again".
 *
 * Nothing here puts a secret into a message.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/rand.h>

#include "utils/builtins.h"
#include "utils/guc.h"

#include "common/credentials.h"

#define CRED_VERSION		2
#define CRED_VERSION_NO_ORIGIN 1
#define CRED_KEY_LEN		32
#define CRED_KEYID_LEN		8
#define CRED_PROVID_LEN		4
#define CRED_ORIGID_LEN		4
#define CRED_NONCE_LEN		12
#define CRED_TAG_LEN		16
#define CRED_AAD_HEADER_LEN (1 + CRED_KEYID_LEN + CRED_PROVID_LEN + CRED_ORIGID_LEN)
#define CRED_HEADER_LEN		(CRED_AAD_HEADER_LEN + CRED_NONCE_LEN)

#define MAX_KEY_FILE_BYTES	4096

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

typedef LlmCredError CredError;

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

char *
credential_master_key_id(void)
{
	master_key_require();
	return hex_of(master.id, CRED_KEYID_LEN);
}

/*-------------------------------------------------------------------------
 * Origins
 *-------------------------------------------------------------------------
 */

char *
credential_origin(const char *base_url, const char **why)
{
	CURLU	   *u = curl_url();
	char	   *scheme = NULL;
	char	   *host = NULL;
	char	   *port = NULL;
	char	   *result = NULL;

	*why = NULL;
	if (u == NULL)
	{
		*why = "out of memory";
		return NULL;
	}
	if (base_url == NULL ||
		curl_url_set(u, CURLUPART_URL, base_url, 0) != CURLUE_OK ||
		curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
		curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
		curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK)
		*why = "it is not a URL curl can parse";
	else if (pg_strcasecmp(scheme, "http") != 0 && pg_strcasecmp(scheme, "https") != 0)
		*why = "its scheme is neither http nor https";
	else if (host[0] == '\0')
		*why = "it has no host";
	else
	{
		result = psprintf("%s://%s:%s", scheme, host, port);
		for (char *p = result; *p; p++)
			*p = pg_ascii_tolower((unsigned char) *p);
	}
	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	curl_url_cleanup(u);
	return result;
}

/*-------------------------------------------------------------------------
 * Encryption and decryption
 *-------------------------------------------------------------------------
 */

/* The first n bytes of SHA-256 of len bytes at data. */
static bool
short_hash(const void *data, size_t len, unsigned char *out, int n)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0;

	if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) != 1)
	{
		ERR_clear_error();
		return false;
	}
	memcpy(out, md, n);
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

/* Feed the associated data: header, provider name, a zero byte, origin. */
static bool
add_aad(EVP_CIPHER_CTX *ctx, bool encrypt, const unsigned char *header,
		const char *provider, const char *origin)
{
	int			len = 0;
	static const unsigned char zero = 0;
	int			(*update) (EVP_CIPHER_CTX *, unsigned char *, int *, const unsigned char *, int) =
		encrypt ? EVP_EncryptUpdate : EVP_DecryptUpdate;

	return update(ctx, NULL, &len, header, CRED_AAD_HEADER_LEN) == 1 &&
		update(ctx, NULL, &len, (const unsigned char *) provider, (int) strlen(provider)) == 1 &&
		update(ctx, NULL, &len, &zero, 1) == 1 &&
		update(ctx, NULL, &len, (const unsigned char *) origin, (int) strlen(origin)) == 1;
}

bytea *
credential_encrypt(const char *provider, const char *base_url, const char *secret)
{
	size_t		slen = strlen(secret);
	const char *why;
	char	   *origin = credential_origin(base_url, &why);
	bytea	   *out;
	unsigned char *p;
	unsigned char *ct;
	EVP_CIPHER_CTX *ctx;
	int			len = 0;
	int			flen = 0;
	bool		ok;

	if (origin == NULL)
		ereport(ERROR,
				(errcode(ERRCODE_INVALID_PARAMETER_VALUE),
				 errmsg("the base_url of provider \"%s\" has no origin to bind its credential to: %s",
						provider, why),
				 errhint("Correct it with llm.alter_provider(), then store the secret."),
				 errhidestmt(true)));
	master_key_require();

	out = (bytea *) palloc(VARHDRSZ + CRED_HEADER_LEN + slen + CRED_TAG_LEN);
	SET_VARSIZE(out, VARHDRSZ + CRED_HEADER_LEN + slen + CRED_TAG_LEN);
	p = (unsigned char *) VARDATA(out);
	p[0] = CRED_VERSION;
	memcpy(p + 1, master.id, CRED_KEYID_LEN);
	if (!short_hash(provider, strlen(provider), p + 1 + CRED_KEYID_LEN, CRED_PROVID_LEN) ||
		!short_hash(origin, strlen(origin), p + 1 + CRED_KEYID_LEN + CRED_PROVID_LEN, CRED_ORIGID_LEN))
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
		add_aad(ctx, true, p, provider, origin) &&
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

char *
credential_key_id_of(bytea *blob)
{
	return hex_of((unsigned char *) VARDATA_ANY(blob) + 1, CRED_KEYID_LEN);
}

char *
credential_decrypt(const char *provider, const char *base_url, bytea *blob,
				   CredError *err)
{
	bytea	   *b = (bytea *) pg_detoast_datum_packed((struct varlena *) blob);
	const unsigned char *p = (const unsigned char *) VARDATA_ANY(b);
	size_t		n = VARSIZE_ANY_EXHDR(b);
	size_t		ctlen;
	unsigned char pid[CRED_PROVID_LEN];
	unsigned char oid[CRED_ORIGID_LEN];
	unsigned char tag[CRED_TAG_LEN];
	const char *why;
	char	   *origin;
	EVP_CIPHER_CTX *ctx;
	char	   *plain;
	int			len = 0;
	int			flen = 0;
	bool		ok;

	if (n >= 1 && p[0] == CRED_VERSION_NO_ORIGIN)
	{
		set_error(err, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  pstrdup("the credential was stored in format version 1, which does not bind it to the provider's origin; it must be set again"),
				  NULL,
				  pstrdup("Store the secret again with llm.set_credential(): this version binds each key to the scheme, host and port of the provider's base_url."));
		return NULL;
	}
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
	if (!short_hash(provider, strlen(provider), pid, CRED_PROVID_LEN))
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
	origin = credential_origin(base_url, &why);
	if (origin == NULL)
	{
		set_error(err, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  psprintf("the provider's base_url has no origin: %s", why),
				  NULL, pstrdup("Correct it with llm.alter_provider()."));
		return NULL;
	}
	if (!short_hash(origin, strlen(origin), oid, CRED_ORIGID_LEN))
	{
		set_error(err, ERRCODE_INTERNAL_ERROR, pstrdup("SHA-256 failed"), NULL, NULL);
		return NULL;
	}
	if (memcmp(p + 1 + CRED_KEYID_LEN + CRED_PROVID_LEN, oid, CRED_ORIGID_LEN) != 0)
	{
		set_error(err, ERRCODE_OBJECT_NOT_IN_PREREQUISITE_STATE,
				  psprintf("the credential was stored for another origin than the provider's base_url now names (%s); it must be set again",
						   origin),
				  pstrdup("A key is bound to the scheme, host and port it was stored for, so that changing base_url cannot send it elsewhere."),
				  pstrdup("If the new base_url is right, store the secret again with llm.set_credential()."));
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
		add_aad(ctx, false, p, provider, origin) &&
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
