/*-------------------------------------------------------------------------
 *
 * channel.h
 *	  The shared-memory channel between calling backends and the worker.
 *
 * runs in: backends (channel_backend.c: submit, poll/wait, take, abandon;
 * channel_call for one call start to end) and the
 * worker (channel_worker.c: attach, take, start, finish, detach); the
 * shared part (channel_shmem.c) sizes and creates it.  This is the only
 * module both sides include.
 *
 * A *slot* is one call in flight.  Its state moves by compare-and-swap:
 *
 *	 FREE -> SUBMITTED (backend) -> RUNNING (worker) -> DONE (worker)
 *		  -> FREE (backend)
 *
 * and a backend that gives up (cancel, timeout, exit, an ERROR while it
 * waits) moves SUBMITTED or RUNNING to ABANDONED.
 *
 * Invariants:
 * - The worker moves RUNNING to DONE only after the call's llm.requests
 *	 row is complete and committed (or known to be unwritable), so the
 *	 caller's next statement sees the finished row.
 * - Exactly one side frees a slot and its payloads, whoever wins the
 *	 race: the backend frees a DONE slot; the worker frees an ABANDONED
 *	 one (when it takes it, finishes it, or exits).  The loser frees
 *	 nothing.
 * - release_slot() puts the slot back on the free list *before* freeing
 *	 its payloads, so an ERROR while freeing (a segment that cannot be
 *	 mapped) can lose a payload's memory but never the slot.
 * - The worker reads the backend's procno *before* its CAS to DONE:
 *	 after the CAS the backend may free the slot and another claim it.
 *	 Setting the latch of a process that has meanwhile moved on is a
 *	 harmless spurious wake-up.
 * - Wake-ups cannot be lost: each side changes the state (or the rings)
 *	 first and sets the other's latch after; each waiter resets its latch
 *	 and then re-reads the state before sleeping.  Backends waiting for a
 *	 slot sleep on a condition variable, which release_slot broadcasts
 *	 after the slot is on the free list.
 *
 * Payloads (the canonical request, the answer) live in a DSA area placed
 * in the channel's fixed shared memory and limited by llm.shared_memory_mb.
 * Growing it can fail (NULL) or raise an ERROR (dsm_create: too many
 * segments, /dev/shm full); both are caught: the caller gets 53200 and
 * the slot goes back to the free list.  The submit and cancel queues are
 * rings of slot numbers under one spinlock; a cancel entry carries the
 * slot's generation so a stale entry for a recycled slot is ignored.
 *
 * The worker also publishes why it cannot serve (it cannot connect to
 * llm.database), so callers fail at once rather than at their deadline.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_CHANNEL_H
#define LLM_CHANNEL_H

#include "port/atomics.h"
#include "storage/condition_variable.h"
#include "storage/latch.h"
#include "storage/spin.h"
#include "utils/dsa.h"
#include "utils/timestamp.h"

#define LLM_SLOT_FREE		0
#define LLM_SLOT_SUBMITTED	1
#define LLM_SLOT_RUNNING	2
#define LLM_SLOT_DONE		3
#define LLM_SLOT_ABANDONED	4

/*
 * The worker and waiting backends poll (llm.poll_us) only while at most
 * this many calls are in flight: then each call's hand-offs are what its
 * latency is made of.  With more, the worker's turns come often and serve
 * many calls each, and polling would only take CPU from the backends and
 * the provider.
 */
#define LLM_POLL_MAX_IN_FLIGHT 4

/* Why a slot is DONE without a response. */
typedef enum LlmSlotFailure
{
	LLM_FAILURE_NONE = 0,
	LLM_FAILURE_WORKER_EXITED,	/* the worker that held the call exited */
	LLM_FAILURE_NO_MEMORY		/* no shared memory left for the answer */
} LlmSlotFailure;

/* What the worker last said about its ability to serve. */
typedef enum LlmWorkerProblem
{
	LLM_WORKER_OK = 0,
	LLM_WORKER_CANNOT_CONNECT,	/* connecting to llm.database failed */
	LLM_WORKER_NO_EXTENSION		/* llm.database lacks the extension (at start) */
} LlmWorkerProblem;

#define LLM_PROBLEM_TEXT_LEN 256

/* The request as the backend hands it over (one DSA chunk). */
typedef struct LlmRequestMsg
{
	Oid			userid;			/* calling role */
	int32		timeout_ms;		/* whole-call deadline */
	TimestampTz submitted_at;
	uint32		alias_len;		/* bytes of data[] that follow, in order: */
	uint32		role_len;		/* alias\0 role\0 tags\0 regions\0 (tags: JSON */
	uint32		tags_len;		/* text; regions: llm.allowed_regions of the caller) */
	uint32		regions_len;
	uint32		request_len;	/* then the canonical request, a Jsonb varlena */
	char		data[FLEXIBLE_ARRAY_MEMBER];
} LlmRequestMsg;

/* How a call ended, as the backend sees it. */
typedef enum LlmOutcome
{
	LLM_OUTCOME_OK,				/* text is the answer (JSON) */
	LLM_OUTCOME_ERROR			/* text is message\0detail\0hint\0 */
} LlmOutcome;

typedef struct LlmResponseMsg
{
	int32		outcome;		/* LlmOutcome */
	int			sqlerrcode;
	uint32		len;			/* bytes in text[] */
	char		text[FLEXIBLE_ARRAY_MEMBER];
} LlmResponseMsg;

typedef struct LlmSlot
{
	pg_atomic_uint32 state;
	uint32		generation;		/* bumped each time a backend claims it */
	int			backend_procno; /* requester, for its latch */
	uint32		worker_incarnation; /* worker that took it; 0 = not taken */
	int32		failure;		/* LlmSlotFailure when DONE without a response */
	pg_atomic_uint32 throttled; /* 1 while the worker holds it back for provider limits */
	dsa_pointer request;		/* LlmRequestMsg */
	dsa_pointer response;		/* LlmResponseMsg, set before DONE */
} LlmSlot;

/*
 * Fair sharing of the slots: a backend waiting for one is counted at the
 * level of the calls it already holds (0: none, then by powers of two),
 * and a free slot goes to a backend only if the free slots outnumber the
 * waiters at lower levels.  So a single call never starves behind
 * sessions that hold many (pipelines, llm_submit fan-outs).
 */
#define LLM_FAIR_LEVELS 16

static inline int
llm_fair_level(int held)
{
	int			level = 0;

	while (held > 0 && level < LLM_FAIR_LEVELS - 1)
	{
		held >>= 1;
		level++;
	}
	return level;
}

/* A cancel notice: which slot, and which use of it. */
typedef struct LlmCancelEntry
{
	int			slot;
	uint32		generation;
} LlmCancelEntry;

/*
 * Counters for llm.gateway_status().  submitted is counted before a slot
 * is published, completed and abandoned after the CAS that ends it, so
 * submitted >= completed + abandoned at every instant.
 */
typedef struct LlmChannelStats
{
	pg_atomic_uint64 submitted;
	pg_atomic_uint64 completed;
	pg_atomic_uint64 abandoned;
	pg_atomic_uint64 waited_for_slot;
} LlmChannelStats;

typedef struct LlmChannel
{
	slock_t		mutex;			/* protects the rings, free list, worker fields */
	int			nslots;

	/* the worker, if one is attached */
	pid_t		worker_pid;
	Latch	   *worker_latch;
	uint32		worker_incarnation;

	/* why the last worker could not serve (under mutex) */
	int			worker_problem; /* LlmWorkerProblem */
	char		worker_problem_text[LLM_PROBLEM_TEXT_LEN];

	ConditionVariable slot_freed;	/* backends waiting for a free slot */

	int			free_head;		/* free list threaded through free_next[] */
	int			nfree;			/* slots on the free list */
	/* backends sleeping for a slot, by llm_fair_level() of the calls they hold */
	int			waiting_by_level[LLM_FAIR_LEVELS];
	int			submit_head;	/* ring of submitted slots */
	int			submit_count;
	int			cancel_head;	/* ring of cancel notices */
	int			cancel_count;

	int			lwlock_tranche;
	LlmChannelStats stats;

	/* offsets of the variable parts from the start of this struct */
	Size		free_next_off;
	Size		submit_ring_off;
	Size		cancel_ring_off;
	Size		dsa_off;
	Size		dsa_size;

	LlmSlot		slots[FLEXIBLE_ARRAY_MEMBER];
} LlmChannel;

/* shared memory set-up (module.c hooks); channel_shmem.c */
extern Size channel_shmem_size(void);
extern void channel_shmem_init(void);
extern void channel_define_gucs(void);

/* both sides */
extern LlmChannel *channel_get(void);
extern dsa_area *channel_dsa(void);
extern int64 channel_calls_in_flight(void);

/* backend side: channel_backend.c */
/* What an answered call used (zero for a failed one); cost in 1e-12 USD. */
#define LLM_PICO_PER_USD INT64CONST(1000000000000)

typedef struct LlmCallUsage
{
	int64		input_tokens;
	int64		output_tokens;
	int64		cost_pico;
	bool		has_cost;		/* the answer carried a cost */
} LlmCallUsage;

typedef struct LlmCallResult
{
	LlmOutcome	outcome;
	int			sqlerrcode;
	char	   *text;			/* palloc'd copy; answer JSON or error parts */
	uint32		len;
	LlmCallUsage usage;			/* read from the answer by channel_take */
} LlmCallResult;

extern LlmWorkerProblem channel_worker_problem(char *text, Size len);
extern void channel_check_serving(void);

/*
 * A call a backend holds open: its slot, and which use of that slot.  A
 * session may hold up to llm.max_handles_per_session (within
 * llm.max_inflight) at once; its exit abandons every one still open.
 */
typedef struct LlmHandle
{
	int			slot;
	uint32		generation;
} LlmHandle;

extern int	llm_max_handles_per_session;

extern LlmHandle channel_submit(const LlmRequestMsg *hdr, const char *data, Size data_len,
								int timeout_ms);
extern bool channel_try_submit(const LlmRequestMsg *hdr, const char *data, Size data_len,
							   int timeout_ms, LlmHandle *h);
extern int	channel_session_calls(void);
extern bool channel_handle_open(LlmHandle h);
extern bool channel_poll(LlmHandle h);
extern int	channel_wait(const LlmHandle *handles, int n, int timeout_ms);
extern void channel_take(LlmHandle h, LlmCallResult *result);
extern bool channel_abandon(LlmHandle h);
extern void channel_call(const LlmRequestMsg *hdr, const char *data, Size data_len,
						 int timeout_ms, LlmCallResult *result);

/* worker side: channel_worker.c */
extern void channel_worker_connecting(void);
extern void channel_worker_connected(void);
extern void channel_worker_log_unavailable(const char *reason);
extern void channel_worker_attach(void);
extern void channel_worker_detach(void);
extern int	channel_take_submitted(int *slots, int max);
extern int	channel_take_cancels(LlmCancelEntry *out, int max);
extern bool channel_start(int slot);
extern LlmRequestMsg *channel_request(int slot);
extern void channel_finish(int slot, LlmOutcome outcome, int sqlerrcode,
						   const char *text, Size len);
extern void channel_release_abandoned(int slot);
extern uint32 channel_slot_generation(int slot);
extern void channel_slot_throttled(int slot, bool throttled);

#endif							/* LLM_CHANNEL_H */
