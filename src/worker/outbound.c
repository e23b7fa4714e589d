/*-------------------------------------------------------------------------
 *
 * outbound.c
 *	  Outbound policy: which hosts and addresses the worker may send to.
 *
 * runs in: worker (http.c calls the checks before and while connecting);
 * the GUCs are defined in every process.
 *
 * An llm_admin may point a provider's base_url anywhere, and the worker
 * runs with the server's network position (cloud metadata endpoints,
 * services on loopback, the internal network).  So the worker itself,
 * independent of what llm.providers says, enforces:
 *
 *	 llm.allowed_hosts	comma list of host patterns ("api.openai.com",
 *						"*.openai.azure.com", optionally "host:port",
 *						"[::1]:8080"); empty = any host.
 *	 https				plain http only to loopback addresses (127.0.0.0/8,
 *						::1), unless llm.allow_http = on.
 *	 link-local			169.254.0.0/16, fe80::/10, fd00:ec2::254 (and the
 *						IPv4-mapped / NAT64 forms) only when allowed_hosts
 *						names the host without a wildcard.
 *
 * The URL is checked before the transfer starts (outbound_check_url), and
 * the address curl actually connects to is checked again in its
 * CURLOPT_OPENSOCKETFUNCTION (outbound_check_address), so a name that
 * resolves to loopback or link-local is judged by its address.  The
 * settings are PGC_SIGHUP: only postgresql.conf or ALTER SYSTEM (a
 * superuser) set them.
 *
 * Everything here avoids palloc and ERROR: the address check runs inside a
 * curl callback.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <arpa/inet.h>
#include <netinet/in.h>

#include <curl/curl.h>

#include "utils/guc.h"

#include "worker/outbound.h"

char	   *llm_allowed_hosts = NULL;
bool		llm_allow_http = false;
bool		llm_use_env_proxy = false;

typedef enum AddrClass
{
	ADDR_OTHER,
	ADDR_LOOPBACK,
	ADDR_LINK_LOCAL				/* link-local or cloud metadata */
} AddrClass;

#define HINT_ALLOWED_HOSTS \
	"A superuser can add the host to llm.allowed_hosts (postgresql.conf or ALTER SYSTEM) and reload."

/*-------------------------------------------------------------------------
 * Host patterns
 *-------------------------------------------------------------------------
 */

typedef struct HostPattern
{
	char		host[256];		/* lower case; IPv6 in brackets */
	int			port;			/* 0 = any */
} HostPattern;

/*
 * Parse one pattern (len bytes at p, already trimmed).  False when it is
 * not a valid pattern.
 */
static bool
parse_pattern(const char *p, size_t len, HostPattern *out)
{
	const char *port = NULL;
	size_t		hlen;
	int			colons = 0;

	memset(out, 0, sizeof(*out));
	if (len == 0 || len >= sizeof(out->host) - 2)
		return false;
	for (size_t i = 0; i < len; i++)
		colons += p[i] == ':';

	if (p[0] == '[')
	{
		const char *close = memchr(p, ']', len);

		if (close == NULL)
			return false;
		hlen = close - p + 1;
		if (hlen < len)
		{
			if (close[1] != ':')
				return false;
			port = close + 2;
		}
		memcpy(out->host, p, hlen);
	}
	else if (colons > 1)
	{
		/* a bare IPv6 address: compare it the way curl writes it */
		hlen = len;
		out->host[0] = '[';
		memcpy(out->host + 1, p, len);
		out->host[len + 1] = ']';
	}
	else
	{
		const char *colon = memchr(p, ':', len);

		hlen = colon ? (size_t) (colon - p) : len;
		if (colon)
			port = colon + 1;
		memcpy(out->host, p, hlen);
	}
	if (port != NULL)
	{
		size_t		plen = len - (port - p);
		long		v = 0;

		if (plen == 0 || plen > 5)
			return false;
		for (size_t i = 0; i < plen; i++)
		{
			if (port[i] < '0' || port[i] > '9')
				return false;
			v = v * 10 + (port[i] - '0');
		}
		if (v < 1 || v > 65535)
			return false;
		out->port = (int) v;
	}
	for (char *c = out->host; *c; c++)
	{
		*c = pg_ascii_tolower((unsigned char) *c);
		if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') ||
			  strchr(".-_*[]:%", *c) != NULL))
			return false;
		/* a wildcard only as the whole first label: "*.example.com" or "*" */
		if (*c == '*' && !(c == out->host && (c[1] == '.' || c[1] == '\0')))
			return false;
	}
	return out->host[0] != '\0';
}

/*
 * Call fn for each pattern of list; stops and returns false at a pattern
 * that does not parse (its text in *bad, *badlen).
 */
static bool
each_pattern(const char *list, bool (*fn) (const HostPattern *, void *), void *arg,
			 const char **bad, size_t *badlen)
{
	const char *p = list ? list : "";

	while (*p)
	{
		const char *end = strchr(p, ',');
		const char *s = p;
		const char *e = end ? end : p + strlen(p);
		HostPattern pat;

		while (s < e && (*s == ' ' || *s == '\t'))
			s++;
		while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
			e--;
		if (e > s)
		{
			if (!parse_pattern(s, e - s, &pat))
			{
				*bad = s;
				*badlen = e - s;
				return false;
			}
			if (fn && !fn(&pat, arg))
				return true;	/* fn asked to stop */
		}
		if (end == NULL)
			break;
		p = end + 1;
	}
	return true;
}

typedef struct MatchState
{
	const char *host;
	int			port;
	bool		matched;
	bool		explicit_host;
} MatchState;

static bool
match_one(const HostPattern *pat, void *arg)
{
	MatchState *m = arg;
	size_t		hl = strlen(m->host);

	if (pat->port != 0 && pat->port != m->port)
		return true;
	if (strcmp(pat->host, m->host) == 0)
	{
		m->matched = true;
		m->explicit_host = true;
		return false;
	}
	if (strcmp(pat->host, "*") == 0)
		m->matched = true;
	else if (pat->host[0] == '*')
	{
		size_t		sl = strlen(pat->host + 1); /* ".example.com" */

		if (hl > sl && strcmp(m->host + hl - sl, pat->host + 1) == 0)
			m->matched = true;
	}
	return true;				/* go on: an explicit match may follow */
}

static bool
check_allowed_hosts(char **newval, void **extra, GucSource source)
{
	const char *bad = NULL;
	size_t		badlen = 0;

	if (!each_pattern(*newval, NULL, NULL, &bad, &badlen))
	{
		GUC_check_errdetail("\"%.*s\" is not a host pattern.", (int) Min(badlen, 200), bad);
		GUC_check_errhint("Give host names, \"*.domain\" wildcards or IP addresses, each optionally with \":port\" (IPv6 in brackets), separated by commas.");
		return false;
	}
	return true;
}

void
outbound_define_gucs(void)
{
	DefineCustomStringVariable("llm.allowed_hosts",
							   "Hosts the gateway may send provider requests to.",
							   "Comma list of host patterns: \"api.openai.com\", \"*.openai.azure.com\", "
							   "optionally with \":port\"; empty allows any host.",
							   &llm_allowed_hosts,
							   "",
							   PGC_SIGHUP,
							   0,
							   check_allowed_hosts, NULL, NULL);
	DefineCustomBoolVariable("llm.allow_http",
							 "Allows plain http to providers on non-loopback addresses.",
							 "Off: providers are reached over https, except on loopback addresses.",
							 &llm_allow_http,
							 false,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);
	DefineCustomBoolVariable("llm.use_env_proxy",
							 "Lets the worker use the proxy named by the server's environment.",
							 "Off: http_proxy, https_proxy, ALL_PROXY and NO_PROXY are ignored.",
							 &llm_use_env_proxy,
							 false,
							 PGC_SIGHUP,
							 0,
							 NULL, NULL, NULL);
}

/*-------------------------------------------------------------------------
 * Addresses
 *-------------------------------------------------------------------------
 */

static AddrClass
classify_v4(const unsigned char *a)
{
	if (a[0] == 127 || a[0] == 0)
		return ADDR_LOOPBACK;	/* 0.0.0.0/8 reaches this host too */
	if (a[0] == 169 && a[1] == 254)
		return ADDR_LINK_LOCAL;
	return ADDR_OTHER;
}

static AddrClass
classify_v6(const unsigned char *a)
{
	static const unsigned char loopback[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
	static const unsigned char ec2[16] = {0xfd, 0, 0x0e, 0xc2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02, 0x54};
	static const unsigned char mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	static const unsigned char nat64[12] = {0, 0x64, 0xff, 0x9b, 0, 0, 0, 0, 0, 0, 0, 0};
	static const unsigned char zero[16] = {0};

	if (memcmp(a, loopback, 16) == 0 || memcmp(a, zero, 16) == 0)
		return ADDR_LOOPBACK;
	if (a[0] == 0xfe && (a[1] & 0xc0) == 0x80)
		return ADDR_LINK_LOCAL;
	if (memcmp(a, ec2, 16) == 0)
		return ADDR_LINK_LOCAL;
	/* IPv4-mapped, NAT64 and (deprecated) IPv4-compatible forms */
	if (memcmp(a, mapped, 12) == 0 || memcmp(a, nat64, 12) == 0 ||
		(memcmp(a, zero, 12) == 0))
		return classify_v4(a + 12);
	return ADDR_OTHER;
}

static AddrClass
classify(const struct sockaddr *sa, char *text, size_t textlen)
{
	text[0] = '\0';
	if (sa->sa_family == AF_INET)
	{
		const struct sockaddr_in *in = (const struct sockaddr_in *) sa;

		inet_ntop(AF_INET, &in->sin_addr, text, textlen);
		return classify_v4((const unsigned char *) &in->sin_addr);
	}
	if (sa->sa_family == AF_INET6)
	{
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *) sa;

		inet_ntop(AF_INET6, &in6->sin6_addr, text, textlen);
		return classify_v6((const unsigned char *) &in6->sin6_addr);
	}
	return ADDR_OTHER;			/* unix sockets are not reachable through a URL */
}

static bool
judge(const LlmOutboundTarget *t, AddrClass cls, const char *addr,
	  LlmOutboundRefusal *r)
{
	if (cls == ADDR_LINK_LOCAL && !t->explicit_host)
	{
		snprintf(r->message, sizeof(r->message),
				 "host \"%s\" is a link-local or cloud metadata address (%s), which the gateway does not send to",
				 t->host, addr);
		snprintf(r->detail, sizeof(r->detail),
				 "169.254.0.0/16, fe80::/10 and fd00:ec2::254 are refused unless llm.allowed_hosts names the host explicitly.");
		snprintf(r->hint, sizeof(r->hint), "%s", HINT_ALLOWED_HOSTS);
		return false;
	}
	if (!t->https && cls != ADDR_LOOPBACK && !llm_allow_http)
	{
		snprintf(r->message, sizeof(r->message),
				 "host \"%s\" (%s) must be reached over https: plain http is allowed only to loopback addresses",
				 t->host, addr);
		snprintf(r->detail, sizeof(r->detail),
				 "The request and the provider's key would cross the network unencrypted.");
		snprintf(r->hint, sizeof(r->hint),
				 "Use an https base_url, or a superuser can set llm.allow_http = on.");
		return false;
	}
	return true;
}

bool
outbound_check_address(const LlmOutboundTarget *t, const struct sockaddr *addr,
					   LlmOutboundRefusal *r)
{
	char		text[INET6_ADDRSTRLEN + 1];

	return judge(t, classify(addr, text, sizeof(text)), text, r);
}

/*-------------------------------------------------------------------------
 * URLs
 *-------------------------------------------------------------------------
 */

bool
outbound_check_url(const char *url, LlmOutboundTarget *t, LlmOutboundRefusal *r)
{
	CURLU	   *u = curl_url();
	char	   *scheme = NULL;
	char	   *host = NULL;
	char	   *port = NULL;
	bool		ok = false;

	memset(t, 0, sizeof(*t));
	memset(r, 0, sizeof(*r));
	if (u == NULL ||
		curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
		curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
		curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK ||
		curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) != CURLUE_OK ||
		strlen(host) >= sizeof(t->host))
	{
		snprintf(r->message, sizeof(r->message), "the provider URL cannot be parsed");
		snprintf(r->hint, sizeof(r->hint), "Correct the provider's base_url with llm.alter_provider().");
		goto done;
	}
	strlcpy(t->host, host, sizeof(t->host));
	for (char *c = t->host; *c; c++)
		*c = pg_ascii_tolower((unsigned char) *c);
	t->https = pg_strcasecmp(scheme, "https") == 0;
	if (!t->https && pg_strcasecmp(scheme, "http") != 0)
	{
		snprintf(r->message, sizeof(r->message), "URL scheme \"%s\" is not allowed for providers", scheme);
		snprintf(r->hint, sizeof(r->hint), "Use an https base_url.");
		goto done;
	}

	if (llm_allowed_hosts != NULL && llm_allowed_hosts[0] != '\0')
	{
		MatchState m = {t->host, atoi(port), false, false};
		const char *bad;
		size_t		badlen;

		(void) each_pattern(llm_allowed_hosts, match_one, &m, &bad, &badlen);
		if (!m.matched)
		{
			snprintf(r->message, sizeof(r->message),
					 "host \"%s\" (port %s) is not allowed by llm.allowed_hosts", t->host, port);
			snprintf(r->detail, sizeof(r->detail), "llm.allowed_hosts is \"%.300s\".", llm_allowed_hosts);
			snprintf(r->hint, sizeof(r->hint), "%s", HINT_ALLOWED_HOSTS);
			goto done;
		}
		t->explicit_host = m.explicit_host;
	}

	/* an IP literal is judged now; names when curl has resolved them */
	{
		char		lit[sizeof(t->host)];
		size_t		l = strlen(t->host);
		struct sockaddr_in in4;
		struct sockaddr_in6 in6;

		memset(&in4, 0, sizeof(in4));
		memset(&in6, 0, sizeof(in6));
		if (t->host[0] == '[' && l > 2)
		{
			char	   *zone;

			memcpy(lit, t->host + 1, l - 2);
			lit[l - 2] = '\0';
			if ((zone = strchr(lit, '%')) != NULL)
				*zone = '\0';
			in6.sin6_family = AF_INET6;
			if (inet_pton(AF_INET6, lit, &in6.sin6_addr) == 1 &&
				!outbound_check_address(t, (struct sockaddr *) &in6, r))
				goto done;
		}
		else
		{
			in4.sin_family = AF_INET;
			if (inet_pton(AF_INET, t->host, &in4.sin_addr) == 1 &&
				!outbound_check_address(t, (struct sockaddr *) &in4, r))
				goto done;
		}
	}
	ok = true;

done:
	curl_free(scheme);
	curl_free(host);
	curl_free(port);
	curl_url_cleanup(u);
	return ok;
}
