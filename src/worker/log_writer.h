/*-------------------------------------------------------------------------
 *
 * log_writer.h
 *	  Writing rows of llm.requests through the executor (the apply
 *	  worker's simple insert/update path), inside a log transaction.
 *
 * runs in: worker.
 *
 *-------------------------------------------------------------------------
 */
#ifndef LLM_LOG_WRITER_H
#define LLM_LOG_WRITER_H

struct LlmWorkItem;

typedef struct LogWriter LogWriter;

/* llm.requests, or InvalidOid when the extension is not installed */
extern Oid	logwriter_relid(void);

extern LogWriter *logwriter_open(Oid relid);
extern void logwriter_close(LogWriter *w);
extern void logwriter_insert(LogWriter *w, struct LlmWorkItem *item);
extern bool logwriter_complete(LogWriter *w, struct LlmWorkItem *item);
extern void logwriter_mark_unknown(LogWriter *w);

#endif							/* LLM_LOG_WRITER_H */
