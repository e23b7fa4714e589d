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
 *-------------------------------------------------------------------------
 */
#include "postgres.h"

#include <sys/epoll.h>
#include <unistd.h>

#include "miscadmin.h"
#include "storage/fd.h"
#include "utils/timestamp.h"

#include "worker/http.h"
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

static int
socket_callback(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	struct epoll_event ev;

	memset(&ev, 0, sizeof(ev));
	ev.data.fd = s;
	if (what == CURL_POLL_REMOVE)
	{
		(void) epoll_ctl(epoll_fd, EPOLL_CTL_DEL, s, NULL);
		curl_multi_assign(multi, s, NULL);
		return 0;
	}
	if (what & CURL_POLL_IN)
		ev.events |= EPOLLIN;
	if (what & CURL_POLL_OUT)
		ev.events |= EPOLLOUT;
	if (socketp == NULL)
	{
		if (epoll_ctl(epoll_fd, EPOLL_CTL_ADD, s, &ev) != 0 && errno == EEXIST)
			(void) epoll_ctl(epoll_fd, EPOLL_CTL_MOD, s, &ev);
		/* any non-NULL marker: "this socket is in the epoll set" */
		curl_multi_assign(multi, s, (void *) &epoll_fd);
	}
	else
		(void) epoll_ctl(epoll_fd, EPOLL_CTL_MOD, s, &ev);
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

	curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, socket_callback);
	curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, timer_callback);
	curl_multi_setopt(multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long) llm_max_connections);
	curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, (long) llm_max_connections);
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

/*
 * Start one POST.  The request's url, headers and body must stay valid
 * until http_release(); curl does not copy the body.
 */
void
http_start(LlmHttpTransfer *t, LlmHttpRequest *req, long timeout_ms, void *owner)
{
	ListCell   *lc;
	CURL	   *e;

	memset(t, 0, sizeof(*t));
	t->owner = owner;
	e = n_idle_handles > 0 ? idle_handles[--n_idle_handles] : curl_easy_init();
	if (e == NULL)
	{
		t->done = true;
		t->result = CURLE_OUT_OF_MEMORY;
		strlcpy(t->errbuf, "could not create a curl handle", sizeof(t->errbuf));
		return;
	}
	t->easy = e;
	foreach(lc, req->headers)
	{
		struct curl_slist *nl = curl_slist_append(t->headers, (const char *) lfirst(lc));

		if (nl == NULL)
			break;
		t->headers = nl;
	}
	/* curl would otherwise send "Expect: 100-continue" for large bodies */
	t->headers = curl_slist_append(t->headers, "Expect:");

	curl_easy_setopt(e, CURLOPT_URL, req->url);
	curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(e, CURLOPT_SSL_VERIFYHOST, 2L);
	if (llm_ca_bundle && llm_ca_bundle[0] != '\0')
		curl_easy_setopt(e, CURLOPT_CAINFO, llm_ca_bundle);
	curl_easy_setopt(e, CURLOPT_HTTPHEADER, t->headers);
	curl_easy_setopt(e, CURLOPT_POST, 1L);
	curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t) req->body.len);
	curl_easy_setopt(e, CURLOPT_POSTFIELDS, req->body.data);
	curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_callback);
	curl_easy_setopt(e, CURLOPT_WRITEDATA, t);
	curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t->errbuf);
	curl_easy_setopt(e, CURLOPT_PRIVATE, t);
	curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, Max(timeout_ms, 1L));
	curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, Min(Max(timeout_ms, 1L), 30000L));
	curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(e, CURLOPT_USERAGENT, "llm_gateway/" LLM_GATEWAY_VERSION);

	if (curl_multi_add_handle(multi, e) != CURLM_OK)
	{
		t->done = true;
		t->result = CURLE_FAILED_INIT;
		strlcpy(t->errbuf, "could not start the transfer", sizeof(t->errbuf));
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
			curl_multi_socket_action(multi, events[i].data.fd, flags, &running);
		}
	}
	if (curl_timeout >= 0 && http_timeout_ms() == 0)
	{
		curl_timeout = -1;
		curl_multi_socket_action(multi, CURL_SOCKET_TIMEOUT, 0, &running);
	}
	collect_finished();
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

/* Free everything curl and the body buffer hold for t.  Idempotent. */
void
http_release(LlmHttpTransfer *t)
{
	http_abort(t);
	if (t->easy && n_idle_handles < MAX_IDLE_HANDLES)
	{
		curl_easy_reset(t->easy);
		idle_handles[n_idle_handles++] = t->easy;
	}
	else if (t->easy)
		curl_easy_cleanup(t->easy);
	t->easy = NULL;
	if (t->headers)
		curl_slist_free_all(t->headers);
	t->headers = NULL;
	if (t->buf)
		free(t->buf);
	t->buf = NULL;
	t->len = t->cap = 0;
}
