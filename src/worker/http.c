/*-------------------------------------------------------------------------
 *
 * http.c
 *	  libcurl multi glue for the worker: transfers, sockets and timers.
 *
 * runs in: worker.
 *
 * One curl multi handle drives every transfer and pools keep-alive
 * connections for all sessions.  curl tells us which sockets to watch
 * (CURLMOPT_SOCKETFUNCTION) and when to call back (CURLMOPT_TIMERFUNCTION);
 * we keep the sockets in a private epoll set whose own fd the worker waits
 * on in its WaitEventSet next to its latch, so one wait covers the latch,
 * postmaster death and every socket, and the set never needs rebuilding.
 *
 * Callbacks never ERROR (no longjmp through curl): the body callback
 * mallocs and stops the transfer with a short count when the answer
 * exceeds llm.max_response_bytes.  All curl memory is freed in
 * http_release(), which every path calls.
 *
 * Hardening (docs/design.md section 13):
 * - every curl_easy_setopt / curl_multi_setopt and epoll_ctl result is
 *	 checked; a failure fails that one call (fail_sqlstate), never the worker;
 * - the outbound policy (worker/outbound.c) judges the URL before the
 *	 transfer starts and the address curl connects to in our
 *	 CURLOPT_OPENSOCKETFUNCTION, which also counts every socket with
 *	 AcquireExternalFD (CURLOPT_CLOSESOCKETFUNCTION releases it), so curl's
 *	 sockets share max_files_per_process with PostgreSQL's own files;
 * - proxies from the environment are ignored unless llm.use_env_proxy;
 * - the header lines that carry the key, ours and the copies in curl's
 *	 slist, are wiped with explicit_bzero at release.
 *
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/epoll.h>
#include <unistd.h>

#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/elog.h"
#include "utils/timestamp.h"

#include "common/llm_errors.h"
#include "worker/http.h"
#include "worker/outbound.h"
#include "llm_gateway.h"

#define MAX_EPOLL_EVENTS 256

static CURLM *multi = NULL;
static int	epoll_fd = -1;
static long curl_timeout = -1;	/* ms from curl_timer_set, -1 = none */
static TimestampTz curl_timer_set = 0;
static int	active_transfers = 0;

/*
 * Easy handles of finished transfers, reset and kept for the next ones:
 * creating a handle per call costs more than the rest of starting it.
 */
#define MAX_IDLE_HANDLES 64
static CURL *idle_handles[MAX_IDLE_HANDLES];
static int	n_idle_handles = 0;

/* finished transfers waiting for the worker, in completion order */
static LlmHttpTransfer **done_queue = NULL;
static int	done_count = 0;
static int	done_cap = 0;
static int	done_next = 0;

/*
 * Transfers whose socket could not be added to the epoll set: curl would
 * never hear of their events, so they are failed after the curl call that
 * reported the socket returns (never from inside the callback).
 */
#define MAX_DOOMED 64
static LlmHttpTransfer *doomed[MAX_DOOMED];
static int	n_doomed = 0;
static int	lost_sockets = 0;	/* epoll failures on sockets of no transfer */

static void push_done(LlmHttpTransfer *t);

/* Record a failure decided here; it becomes the call's error. */
static void
set_failure(LlmHttpTransfer *t, int sqlstate, bool retryable, const char *hint,
			const char *fmt,...) pg_attribute_printf(5, 6);

static void
set_failure(LlmHttpTransfer *t, int sqlstate, bool retryable, const char *hint,
			const char *fmt,...)
{
	va_list		ap;

	t->fail_sqlstate = sqlstate;
	t->fail_retryable = retryable;
	va_start(ap, fmt);
	vsnprintf(t->fail.message, sizeof(t->fail.message), fmt, ap);
	va_end(ap);
	t->fail.detail[0] = '\0';
	strlcpy(t->fail.hint, hint ? hint : "", sizeof(t->fail.hint));
}

static void
doom(CURL *easy, int err)
{
	LlmHttpTransfer *t = NULL;

	if (easy == NULL ||
		curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **) &t) != CURLE_OK || t == NULL)
	{
		lost_sockets++;
		return;
	}
	if (t->fail_sqlstate == 0)
		set_failure(t, ERRCODE_LLM_PROVIDER_CONNECTION, true,
					"The server may be short of memory or file descriptors; retry.",
					"could not watch the connection's socket (epoll_ctl: %s)", strerror(err));
	for (int i = 0; i < n_doomed; i++)
		if (doomed[i] == t)
			return;
	if (n_doomed < MAX_DOOMED)
		doomed[n_doomed++] = t;
}

/* Fail the doomed transfers; outside any curl callback. */
static void
fail_doomed(void)
{
	while (n_doomed > 0)
	{
		LlmHttpTransfer *t = doomed[--n_doomed];

		if (t->easy != NULL && !t->done)
		{
			curl_multi_remove_handle(multi, t->easy);
			active_transfers--;
			t->done = true;
			t->result = CURLE_COULDNT_CONNECT;
			push_done(t);
		}
	}
}

static int
socket_callback(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	struct epoll_event ev;

	memset(&ev, 0, sizeof(ev));
	ev.data.fd = s;
	if (what == CURL_POLL_REMOVE)
	{
		/* ENOENT/EBADF: never added, or already closed, which removed it */
		(void) epoll_ctl(epoll_fd, EPOLL_CTL_DEL, s, NULL);
		(void) curl_multi_assign(multi, s, NULL);
		return 0;
	}
	if (what & CURL_POLL_IN)
		ev.events |= EPOLLIN;
	if (what & CURL_POLL_OUT)
		ev.events |= EPOLLOUT;
	if (socketp == NULL)
	{
		int			rc = epoll_ctl(epoll_fd, EPOLL_CTL_ADD, s, &ev);

		if (rc != 0 && errno == EEXIST)
			rc = epoll_ctl(epoll_fd, EPOLL_CTL_MOD, s, &ev);
		if (rc != 0)
		{
			doom(easy, errno);
			return 0;
		}
		/* any non-NULL marker: "this socket is in the epoll set" */
		(void) curl_multi_assign(multi, s, (void *) &epoll_fd);
	}
	else if (epoll_ctl(epoll_fd, EPOLL_CTL_MOD, s, &ev) != 0)
		doom(easy, errno);
	return 0;
}

static int
timer_callback(CURLM *m, long timeout_ms, void *userp)
{
	curl_timeout = timeout_ms;
	curl_timer_set = GetCurrentTimestamp();
	return 0;
}

static size_t
write_callback(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	LlmHttpTransfer *t = userdata;
	size_t		n = size * nmemb;

	if (t->len + n > (size_t) llm_max_response_bytes)
	{
		t->too_large = true;
		return 0;				/* CURLE_WRITE_ERROR */
	}
	if (t->len + n + 1 > t->cap)
	{
		size_t		newcap = Max(t->cap * 2, t->len + n + 1);
		char	   *nb;

		newcap = Max(newcap, 4096);
		nb = realloc(t->buf, newcap);
		if (nb == NULL)
			return 0;
		t->buf = nb;
		t->cap = newcap;
	}
	memcpy(t->buf + t->len, ptr, n);
	t->len += n;
	t->buf[t->len] = '\0';
	return n;
}

/*
 * curl's CURLOPT_OPENSOCKETFUNCTION: judge the address by the outbound
 * policy, and count the socket as an external file descriptor.  Runs
 * inside curl: no ERROR, no palloc.
 */
static curl_socket_t
open_socket(void *clientp, curlsocktype purpose, struct curl_sockaddr *address)
{
	LlmHttpTransfer *t = clientp;
	int			s;

	if (purpose != CURLSOCKTYPE_IPCXN)
		return CURL_SOCKET_BAD;
	if (!outbound_check_address(&t->dest, &address->addr, &t->fail))
	{
		t->fail_sqlstate = ERRCODE_INSUFFICIENT_PRIVILEGE;
		t->fail_retryable = false;
		return CURL_SOCKET_BAD;
	}
	if (!AcquireExternalFD())
	{
		set_failure(t, ERRCODE_INSUFFICIENT_RESOURCES, true,
					"Raise max_files_per_process, or lower llm.max_connections.",
					"no file descriptor is available for a connection to host \"%s\"",
					t->dest.host);
		return CURL_SOCKET_BAD;
	}
	s = socket(address->family, address->socktype | SOCK_CLOEXEC, address->protocol);
	if (s < 0)
	{
		int			save_errno = errno;

		ReleaseExternalFD();
		errno = save_errno;
		return CURL_SOCKET_BAD;
	}
	return s;
}

/*
 * CURLOPT_CLOSESOCKETFUNCTION: curl keeps it with the connection, which may
 * outlive the transfer that opened it (keep-alive pool), so clientp is not
 * used.  Every socket curl closes this way was opened by open_socket.
 */
static int
close_socket(void *clientp, curl_socket_t s)
{
	int			rc = close(s);

	ReleaseExternalFD();
	return rc;
}

/*
 * Which resolver libcurl uses: without CURL_VERSION_ASYNCHDNS a name lookup
 * blocks the whole worker (every call in flight) for as long as DNS takes.
 */
static void
check_resolver(void)
{
	const char *resolver;
	curl_version_info_data *vi = curl_version_info(CURLVERSION_NOW);

	if (!(vi->features & CURL_VERSION_ASYNCHDNS))
	{
		resolver = "blocking";
		ereport(WARNING,
				(errmsg("llm_gateway: libcurl %s resolves host names synchronously", vi->version),
				 errdetail("A slow DNS answer stalls every call in flight while the worker waits for it."),
				 errhint("Install a libcurl built with the threaded resolver or c-ares.")));
		return;
	}
	resolver = vi->ares ? "c-ares" : "threaded";
	ereport(LOG,
			(errmsg("llm_gateway worker: libcurl %s, %s DNS resolver%s%s", vi->version, resolver,
					vi->ares ? " " : "", vi->ares ? vi->ares : "")));
}

static void
multi_setopt_or_die(CURLMoption opt, const char *name, CURLMcode rc)
{
	if (rc != CURLM_OK)
		ereport(ERROR,
				(errcode(ERRCODE_INTERNAL_ERROR),
				 errmsg("libcurl refused multi option %s: %s", name, curl_multi_strerror(rc))));
}

void
http_init(void)
{
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		elog(ERROR, "could not initialise libcurl");
	multi = curl_multi_init();
	if (multi == NULL)
		elog(ERROR, "could not create a curl multi handle");
	epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	if (epoll_fd < 0)
		ereport(ERROR,
				(errcode_for_socket_access(),
				 errmsg("could not create epoll set: %m")));
	ReserveExternalFD();

	/* without these two the worker cannot drive curl at all: fail its start */
	multi_setopt_or_die(CURLMOPT_SOCKETFUNCTION, "CURLMOPT_SOCKETFUNCTION",
						curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, socket_callback));
	multi_setopt_or_die(CURLMOPT_TIMERFUNCTION, "CURLMOPT_TIMERFUNCTION",
						curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_callback));
	/* connection caps: without them curl still works, with its defaults */
	{
		CURLMcode	rc1 = curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long) llm_max_connections);
		CURLMcode	rc2 = curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long) llm_max_connections);

		if (rc1 != CURLM_OK || rc2 != CURLM_OK)
			ereport(WARNING,
					(errmsg("libcurl refused the connection limit llm.max_connections = %d: %s",
							llm_max_connections, curl_multi_strerror(rc1 != CURLM_OK ? rc1 : rc2))));
	}
	check_resolver();
}

int
http_socket_fd(void)
{
	return epoll_fd;
}

/* Does a socket have an event, or curl's timer expire, now?  Never waits. */
bool
http_ready(void)
{
	struct epoll_event ev;

	if (curl_timeout >= 0 && http_timeout_ms() == 0)
		return true;
	return epoll_wait(epoll_fd, &ev, 1, 0) > 0;
}

/* ms until curl wants to be called back; -1 when it has no timer */
long
http_timeout_ms(void)
{
	long		elapsed;

	if (curl_timeout < 0)
		return -1;
	elapsed = TimestampDifferenceMilliseconds(curl_timer_set, GetCurrentTimestamp());
	return Max(curl_timeout - elapsed, 0);
}

int
http_active(void)
{
	return active_transfers;
}

/* curl_easy_setopt, or record the failure and return false. */
#define SETOPT(t, opt, val) \
	(setopt_ok((t), curl_easy_setopt((t)->easy, (opt), (val)), #opt))

static bool
setopt_ok(LlmHttpTransfer *t, CURLcode rc, const char *name)
{
	if (rc == CURLE_OK)
		return true;
	set_failure(t, ERRCODE_LLM_PROVIDER_CONNECTION, false,
				"The libcurl the server uses lacks a feature the gateway needs, or memory ran out.",
				"could not set up the transfer: libcurl refused %s (%s)", name, curl_easy_strerror(rc));
	return false;
}

/* The transfer ends before it started; the caller sees t->done. */
static void
fail_unstarted(LlmHttpTransfer *t)
{
	t->done = true;
	t->result = CURLE_FAILED_INIT;
	strlcpy(t->errbuf, t->fail.message, sizeof(t->errbuf));
}

/*
 * Start one POST.  The request's url, headers and body must stay valid
 * until http_release(); curl does not copy the body.  A URL the outbound
 * policy refuses, or an option curl refuses, ends the transfer at once
 * (t->done, with t->fail_sqlstate), before anything is sent.
 */
/* Add one header line to the transfer's list; false (call failed) when curl cannot. */
static bool
append_header(LlmHttpTransfer *t, const char *line)
{
	struct curl_slist *nl = curl_slist_append(t->headers, line);

	if (nl == NULL)
	{
		set_failure(t, ERRCODE_LLM_PROVIDER_CONNECTION, true, NULL,
					"out of memory for the request's headers");
		fail_unstarted(t);
		return false;
	}
	t->headers = nl;
	return true;
}

void
http_start(LlmHttpTransfer *t, LlmHttpRequest *req, long timeout_ms, void *owner)
{
	ListCell   *lc;
	CURL	   *e;
	long		total = Max(timeout_ms, 1L);

	memset(t, 0, sizeof(*t));
	t->owner = owner;
	t->req_headers = req->headers;

	if (!outbound_check_url(req->url, &t->dest, &t->fail))
	{
		t->fail_sqlstate = ERRCODE_INSUFFICIENT_PRIVILEGE;
		fail_unstarted(t);
		return;
	}

	e = n_idle_handles > 0 ? idle_handles[--n_idle_handles] : curl_easy_init();
	if (e == NULL)
	{
		set_failure(t, ERRCODE_LLM_PROVIDER_CONNECTION, true, NULL,
					"could not create a curl handle");
		fail_unstarted(t);
		return;
	}
	t->easy = e;
	foreach(lc, req->headers)
		if (!append_header(t, (const char *) lfirst(lc)))
			return;
	/* curl would otherwise send "Expect: 100-continue" for large bodies */
	if (!append_header(t, "Expect:"))
		return;

	/* the error buffer first, so that curl can describe later failures */
	if (!SETOPT(t, CURLOPT_ERRORBUFFER, t->errbuf) ||
		!SETOPT(t, CURLOPT_PRIVATE, t) ||
		!SETOPT(t, CURLOPT_URL, req->url) ||
		!SETOPT(t, CURLOPT_NOSIGNAL, 1L) ||
		!SETOPT(t, CURLOPT_PROTOCOLS_STR, "http,https") ||
		!SETOPT(t, CURLOPT_REDIR_PROTOCOLS_STR, "http,https") ||
		!SETOPT(t, CURLOPT_FOLLOWLOCATION, 0L) ||
		!SETOPT(t, CURLOPT_SSL_VERIFYPEER, 1L) ||
		!SETOPT(t, CURLOPT_SSL_VERIFYHOST, 2L) ||
		(llm_ca_bundle && llm_ca_bundle[0] != '\0' &&
		 !SETOPT(t, CURLOPT_CAINFO, llm_ca_bundle)) ||
	/* "" disables every proxy, the environment's included */
		(!llm_use_env_proxy && !SETOPT(t, CURLOPT_PROXY, "")) ||
		!SETOPT(t, CURLOPT_OPENSOCKETFUNCTION, open_socket) ||
		!SETOPT(t, CURLOPT_OPENSOCKETDATA, t) ||
		!SETOPT(t, CURLOPT_CLOSESOCKETFUNCTION, close_socket) ||
		!SETOPT(t, CURLOPT_CLOSESOCKETDATA, NULL) ||
		!SETOPT(t, CURLOPT_HTTPHEADER, t->headers) ||
		!SETOPT(t, CURLOPT_POST, 1L) ||
		!SETOPT(t, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->body.len) ||
		!SETOPT(t, CURLOPT_POSTFIELDS, req->body.data) ||
		!SETOPT(t, CURLOPT_WRITEFUNCTION, write_callback) ||
		!SETOPT(t, CURLOPT_WRITEDATA, t) ||
		!SETOPT(t, CURLOPT_TIMEOUT_MS, total) ||
		!SETOPT(t, CURLOPT_CONNECTTIMEOUT_MS, Min(total, 30000L)) ||
		!SETOPT(t, CURLOPT_TCP_KEEPALIVE, 1L) ||
		!SETOPT(t, CURLOPT_TCP_NODELAY, 1L) ||
		!SETOPT(t, CURLOPT_USERAGENT, "llm_gateway/" LLM_GATEWAY_VERSION))
	{
		fail_unstarted(t);
		return;
	}

	if (curl_multi_add_handle(multi, e) != CURLM_OK)
	{
		set_failure(t, ERRCODE_LLM_PROVIDER_CONNECTION, true, NULL,
					"could not start the transfer");
		fail_unstarted(t);
		return;
	}
	active_transfers++;
}

/* Stop a transfer at once; curl closes its connection. */
void
http_abort(LlmHttpTransfer *t)
{
	if (t->easy != NULL && !t->done)
	{
		curl_multi_remove_handle(multi, t->easy);
		active_transfers--;
		t->done = true;
		t->result = CURLE_ABORTED_BY_CALLBACK;
	}
}

static void
push_done(LlmHttpTransfer *t)
{
	if (done_count == done_cap)
	{
		int			newcap = Max(done_cap * 2, 64);
		LlmHttpTransfer **nq = realloc(done_queue, sizeof(*nq) * newcap);

		if (nq == NULL)
			elog(ERROR, "out of memory for the finished-transfer queue");
		done_queue = nq;
		done_cap = newcap;
	}
	done_queue[done_count++] = t;
}

static void
collect_finished(void)
{
	CURLMsg    *msg;
	int			left;

	while ((msg = curl_multi_info_read(multi, &left)) != NULL)
	{
		LlmHttpTransfer *t;

		if (msg->msg != CURLMSG_DONE)
			continue;
		curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **) &t);
		t->result = msg->data.result;
		curl_easy_getinfo(t->easy, CURLINFO_RESPONSE_CODE, &t->status);
		{
			curl_off_t	us = 0;

			curl_easy_getinfo(t->easy, CURLINFO_TOTAL_TIME_T, &us);
			t->total_ms = us / 1000.0;
		}
		curl_multi_remove_handle(multi, t->easy);
		active_transfers--;
		t->done = true;
		push_done(t);
	}
}

/*
 * Let curl make progress: on ready sockets, on its timer, and (always) on
 * transfers just added.  Finished transfers go to the done queue.
 */
void
http_drive(bool sockets_ready)
{
	int			running;

	if (sockets_ready)
	{
		struct epoll_event events[MAX_EPOLL_EVENTS];
		int			n,
					i;

		n = epoll_wait(epoll_fd, events, MAX_EPOLL_EVENTS, 0);
		for (i = 0; i < n; i++)
		{
			int			flags = 0;

			if (events[i].events & EPOLLIN)
				flags |= CURL_CSELECT_IN;
			if (events[i].events & EPOLLOUT)
				flags |= CURL_CSELECT_OUT;
			if (events[i].events & (EPOLLERR | EPOLLHUP))
				flags |= CURL_CSELECT_ERR;
			(void) curl_multi_socket_action(multi, events[i].data.fd, flags, &running);
		}
	}
	if (curl_timeout >= 0 && http_timeout_ms() == 0)
	{
		curl_timeout = -1;
		(void) curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
	}
	collect_finished();
	fail_doomed();
}

LlmHttpTransfer *
http_next_done(void)
{
	if (done_next < done_count)
		return done_queue[done_next++];
	done_next = done_count = 0;
	return NULL;
}

/* First response header of that name (case-insensitive), or NULL. */
const char *
http_response_header(void *transfer, const char *name)
{
	LlmHttpTransfer *t = transfer;
	struct curl_header *h;

	if (t->easy == NULL ||
		curl_easy_header(t->easy, name, 0, CURLH_HEADER, -1, &h) != CURLHE_OK)
		return NULL;
	return pstrdup(h->value);
}

/* Overwrite a string we own that may hold a key. */
static void
wipe_string(char *s)
{
	if (s != NULL)
		explicit_bzero(s, strlen(s));
}

/*
 * Free everything curl and the body buffer hold for t, and wipe the header
 * lines (one carries the key): curl's slist copies and the request's own.
 * Idempotent.
 */
void
http_release(LlmHttpTransfer *t)
{
	ListCell   *lc;

	http_abort(t);
	for (int i = 0; i < n_doomed; i++)
		if (doomed[i] == t)
			doomed[i] = doomed[--n_doomed];
	if (t->easy && n_idle_handles < MAX_IDLE_HANDLES)
	{
		curl_easy_reset(t->easy);
		idle_handles[n_idle_handles++] = t->easy;
	}
	else if (t->easy)
		curl_easy_cleanup(t->easy);
	t->easy = NULL;
	for (struct curl_slist *h = t->headers; h != NULL; h = h->next)
		wipe_string(h->data);
	if (t->headers)
		curl_slist_free_all(t->headers);
	t->headers = NULL;
	foreach(lc, t->req_headers)
		wipe_string((char *) lfirst(lc));
	t->req_headers = NIL;
	if (t->buf)
		free(t->buf);
	t->buf = NULL;
	t->len = t->cap = 0;
}
