--
-- conversations: llm.new_conversation, llm_chat, llm.fork_conversation,
-- sharing and row security, as SQL sees them (llm_chat's history, trimming
-- and summaries are tested in test/t/036).
--
\getenv mock_port MOCK_PORT
SELECT last_value AS seq_last, is_called AS seq_called FROM llm.routes_id_seq \gset
SELECT llm.add_provider('conv_mock', 'anthropic', 'http://127.0.0.1:' || :'mock_port', 'local');
SELECT llm.set_credential('conv_mock', 'test-key-conv');
SELECT llm.add_route('conv', 'conv_mock', 'claude-conv') > 0 AS added;
SELECT llm.add_route('conv_sum', 'conv_mock', 'claude-conv-sum') > 0 AS added;

--
-- llm.new_conversation: errors
--
SELECT expect_error($$SELECT llm.new_conversation(NULL)$$);
SELECT expect_error($$SELECT llm.new_conversation('no_such_alias')$$);
SELECT expect_error($$SELECT llm.new_conversation('conv', NULL, '[1]')$$);
SELECT expect_error($$SELECT llm.new_conversation('conv', NULL, '"x"')$$);
SELECT expect_error($$SELECT llm.new_conversation('conv', NULL, '{"system": "Be brief."}')$$);
SELECT expect_error($$SELECT llm.new_conversation('conv', NULL, '{"context": "drop_oldest"}')$$);
SELECT expect_error($$SELECT llm.new_conversation('conv', NULL, '{"context": {"budget": 10}}')$$);
SELECT expect_error($$SELECT llm.new_conversation('conv', NULL, '{"context": {"strategy": "forget"}}')$$);
SELECT expect_error($$SELECT llm.new_conversation('conv', NULL, '{"context": {"strategy": 1}}')$$);
SELECT expect_error($$SELECT llm.new_conversation('conv', NULL, '{"context": {"budget_tokens": 0}}')$$);
SELECT expect_error($$SELECT llm.new_conversation('conv', NULL, '{"context": {"budget_tokens": -1}}')$$);
SELECT expect_error($$SELECT llm.new_conversation('conv', NULL, '{"context": {"budget_tokens": 1.5}}')$$);
SELECT expect_error($$SELECT llm.new_conversation('conv', NULL, '{"context": {"budget_tokens": "x"}}')$$);
SELECT expect_error($$SELECT llm.new_conversation('conv', NULL, '{"context": {"summary_model": "conv_sum"}}')$$);
SELECT expect_error($$SELECT llm.new_conversation('conv', NULL, '{"context": {"strategy": "summarize", "summary_model": "no_such_alias"}}')$$);
SELECT expect_error($$SELECT llm.new_conversation('conv', NULL, '{"title": 5}')$$);
SELECT expect_error($$SELECT llm.new_conversation('conv', NULL, '{"max_tokens": -1}')$$);
SELECT expect_error($$SELECT llm.new_conversation('conv', NULL, '{"no_such_option": 1}')$$);
-- llm_messages refuses the same options the same way
SELECT expect_error($$SELECT llm_messages('conv', '[{"role": "user", "content": "-"}]', '{"max_tokens": -1}')$$);
SELECT expect_error($$SELECT llm_messages('conv', '[{"role": "user", "content": "-"}]', '{"no_such_option": 1}')$$);
-- nothing was stored
SELECT count(*) AS conversations FROM llm.conversations;

--
-- llm.new_conversation: the stored row
--
SELECT llm.new_conversation('conv', 'Be brief.',
       '{"max_tokens": 100, "title": "first", "context": {"strategy": "summarize", "budget_tokens": 5000, "summary_model": "conv_sum"}}') AS c1 \gset
SELECT :c1 > 0 AS has_id;
SELECT owner_role = current_user AS owned_by_caller, alias, system, options, context_policy, title,
       metadata, forked_from, forked_at_seq, updated_at = created_at AS untouched
  FROM llm.conversations WHERE id = :c1;
-- "metadata" among the options is the call option llm_messages sends to the
-- provider, kept in options (the conversation's own metadata is set by UPDATE)
SELECT llm.new_conversation('conv', NULL, '{"metadata": {"user_id": "u-1"}}') AS cm \gset
SELECT options, metadata FROM llm.conversations WHERE id = :cm;
DELETE FROM llm.conversations WHERE id = :cm;
-- NULL options and system: defaults
SELECT llm.new_conversation('conv', NULL, NULL) AS c0 \gset
SELECT :c0 > :c1 AS later_id, alias, system, options, context_policy, title
  FROM llm.conversations WHERE id = :c0;
DELETE FROM llm.conversations WHERE id = :c0;

--
-- llm_chat: argument errors
--
SELECT expect_error($$SELECT llm_chat(NULL::bigint, 'hi')$$);
SELECT expect_error(format($$SELECT llm_chat(%s, NULL::text)$$, :c1));
SELECT expect_error(format($$SELECT llm_chat(%s, NULL::jsonb)$$, :c1));
SELECT expect_error($$SELECT llm_chat(-5, 'hi')$$);
SELECT expect_error(format($$SELECT llm_chat(%s, '5'::jsonb)$$, :c1));
SELECT expect_error(format($$SELECT llm_chat(%s, '{"role": "assistant", "content": "I said"}'::jsonb)$$, :c1));
SELECT expect_error(format($$SELECT llm_chat(%s, '{"content": "no role"}'::jsonb)$$, :c1));
SELECT expect_error(format($$SELECT llm_chat(%s, '"hi"'::jsonb, '{"system": "other"}')$$, :c1));
SELECT expect_error(format($$SELECT llm_chat(%s, '"hi"'::jsonb, '[]')$$, :c1));
-- none of them wrote a turn
SELECT count(*) AS turns FROM llm.conversation_turns;

--
-- llm_chat: the text form and the jsonb form, and the turns they wrote
--
SELECT llm_chat(:c1, 'first question');
SELECT a->'content' AS content, a->>'stop_reason' AS stop_reason, a->>'model' AS model
  FROM llm_chat(:c1, '{"role": "user", "content": [{"type": "text", "text": "second question"}]}'::jsonb) AS a;
SELECT seq, role, content, bytes = octet_length(content::text) AS bytes_ok, starts_exchange,
       context_first_seq, context_summary_seq, stop_reason,
       (request_id IS NOT NULL) AS has_request, (role = 'user') = (input_tokens IS NULL) AS tokens_ok
  FROM llm.conversation_turns WHERE conversation = :c1 ORDER BY seq;
-- the user turn and its answer share the request
SELECT count(DISTINCT request_id) AS requests FROM llm.conversation_turns WHERE conversation = :c1;

-- what was sent for an assistant turn; NULL for a user turn
SELECT jsonb_pretty(llm.conversation_context(:c1, 4));
SELECT llm.conversation_context(:c1, 3) IS NULL AS user_turn_null,
       llm.conversation_context(:c1, 99) IS NULL AS missing_null;

-- a system prompt cannot be slipped in through the stored options either
-- (llm.new_conversation and llm_chat refuse option "system"): whether the
-- UPDATE, the call, or the sending refuses it, no answer is made with it
SELECT llm.new_conversation('conv') AS ch \gset
SELECT expect_error(format($$UPDATE llm.conversations SET options = '{"system": "hidden"}' WHERE id = %s$$, :ch)) IS NOT NULL
   AND expect_error(format($$SELECT llm_chat(%s, 'hidden?')$$, :ch)) IS NOT NULL AS tried;
SELECT count(*) AS answered_with_hidden_system FROM llm.conversation_turns
 WHERE conversation = :ch AND content::text LIKE '%[system: hidden]%';
DELETE FROM llm.conversations WHERE id = :ch;

--
-- llm.fork_conversation
--
SELECT expect_error(format($$SELECT llm.fork_conversation(%s, 3)$$, :c1));
SELECT expect_error(format($$SELECT llm.fork_conversation(%s, 7)$$, :c1));
SELECT expect_error(format($$SELECT llm.fork_conversation(%s, NULL)$$, :c1));
SELECT expect_error($$SELECT llm.fork_conversation(-5, 0)$$);
SELECT llm.fork_conversation(:c1, 2) AS f2 \gset
SELECT llm.fork_conversation(:c1, 0) AS f0 \gset
SELECT id = :f2 AS is_f2, forked_from = :c1 AS from_c1, forked_at_seq, alias, system, options,
       context_policy, title
  FROM llm.conversations WHERE id IN (:f2, :f0) ORDER BY id;
-- the fork stores no turns of its own, it reads its parent's in place
SELECT count(*) AS own_turns FROM llm.conversation_turns WHERE conversation IN (:f2, :f0);
SELECT conversation = :c1 AS stored_in_parent, seq, role, content
  FROM llm.conversation_history(:f2);
SELECT count(*) AS history FROM llm.conversation_history(:f0);
SELECT conversation = :f2 AS conv_f2, ancestor = :c1 AS anc_c1, through_seq
  FROM llm.conversation_lineage WHERE conversation IN (:f2, :f0);
-- continuing the fork appends after the fork point and sends the inherited turns
SELECT llm_chat(:f2, 'fork question');
SELECT seq, role, content, context_first_seq FROM llm.conversation_turns WHERE conversation = :f2 ORDER BY seq;
SELECT jsonb_pretty(llm.conversation_context(:f2, 4));
-- a fork of the fork shares the turns of both
SELECT llm.fork_conversation(:f2, 4) AS ff \gset
SELECT ancestor = :c1 AS anc_c1, ancestor = :f2 AS anc_f2, through_seq
  FROM llm.conversation_lineage WHERE conversation = :ff ORDER BY through_seq;
SELECT string_agg(seq || ':' || role, ' ' ORDER BY seq) AS history FROM llm.conversation_history(:ff);
-- deleting a conversation that a fork shares turns with copies them into the fork first
DELETE FROM llm.conversations WHERE id = :f2;
SELECT forked_from IS NULL AS parent_gone, forked_at_seq FROM llm.conversations WHERE id = :ff;
SELECT string_agg(seq || ':' || role, ' ' ORDER BY seq) AS copied FROM llm.conversation_turns WHERE conversation = :ff;
SELECT ancestor = :c1 AS anc_c1, through_seq FROM llm.conversation_lineage WHERE conversation = :ff;
SELECT string_agg(seq || ':' || role, ' ' ORDER BY seq) AS history FROM llm.conversation_history(:ff);
SELECT llm_chat(:ff, 'after its parent is gone');
SELECT string_agg(seq || ':' || role, ' ' ORDER BY seq) AS history FROM llm.conversation_history(:ff);
DELETE FROM llm.conversations WHERE id = :ff;
DELETE FROM llm.conversations WHERE id = :f0;
SELECT count(*) AS lineage_left FROM llm.conversation_lineage;

--
-- roles and row security
--
CREATE ROLE conv_alice;
CREATE ROLE conv_bob;
CREATE ROLE conv_carol;
CREATE ROLE conv_group;
CREATE ROLE conv_admin;
GRANT llm_user TO conv_alice, conv_bob, conv_carol;
GRANT conv_group TO conv_carol;
GRANT llm_admin TO conv_admin;

SET ROLE conv_alice;
SELECT llm.new_conversation('conv', 'Alice speaks.', '{"title": "alice"}') AS ca \gset
SELECT llm_chat(:ca, 'alice one');
-- alice does not see the superuser's conversation
SELECT count(*) AS visible, bool_and(owner_role = 'conv_alice') AS all_hers FROM llm.conversations;
SELECT expect_error(format($$SELECT llm_chat(%s, 'not mine')$$, :c1));
RESET ROLE;

SET ROLE conv_bob;
SELECT count(*) AS conversations, (SELECT count(*) FROM llm.conversation_turns) AS turns
  FROM llm.conversations;
SELECT count(*) AS history FROM llm.conversation_history(:ca);
SELECT expect_error(format($$SELECT llm_chat(%s, 'bob here')$$, :ca));
SELECT expect_error(format($$SELECT llm.fork_conversation(%s, 2)$$, :ca));
SELECT expect_error(format($$SELECT llm.share_conversation(%s, 'conv_bob')$$, :ca));
-- the tables are written only by the gateway's functions
SELECT expect_error(format($$INSERT INTO llm.conversation_turns (conversation, seq, role, content, bytes) VALUES (%s, 3, 'user', '"x"', 3)$$, :ca));
SELECT expect_error($$INSERT INTO llm.conversations (owner_role, alias) VALUES ('conv_alice', 'conv')$$);
SELECT expect_error(format($$INSERT INTO llm.conversation_shares (conversation, role_name, owner_role, shared_by) VALUES (%s, 'conv_bob', 'conv_alice', 'conv_alice')$$, :ca));
SELECT expect_error(format($$INSERT INTO llm.conversation_lineage VALUES (%s, %s, 2)$$, :ca, :ca));
-- bob's UPDATE and DELETE of alice's conversation find no row
WITH u AS (UPDATE llm.conversations SET title = 'bob was here' WHERE id = :ca RETURNING 1)
SELECT count(*) AS updated FROM u;
WITH d AS (DELETE FROM llm.conversations WHERE id = :ca RETURNING 1)
SELECT count(*) AS deleted FROM d;
RESET ROLE;

-- shared to read
SET ROLE conv_alice;
SELECT llm.share_conversation(:ca, 'conv_bob', false);
SELECT expect_error(format($$SELECT llm.share_conversation(%s, 'conv_alice')$$, :ca));
SELECT expect_error(format($$SELECT llm.share_conversation(%s, 'no_such_role')$$, :ca));
SELECT expect_error(format($$SELECT llm.share_conversation(%s, NULL)$$, :ca));
-- can_continue NULL is refused, not taken as true
SELECT expect_error(format($$SELECT llm.share_conversation(%s, 'conv_bob', NULL)$$, :ca));
SELECT count(*) AS shares FROM llm.conversation_shares WHERE conversation = :ca;
RESET ROLE;
SET ROLE conv_bob;
SELECT title, owner_role FROM llm.conversations WHERE id = :ca;
SELECT seq, role, content FROM llm.conversation_turns WHERE conversation = :ca ORDER BY seq;
SELECT role_name, can_continue, owner_role, shared_by FROM llm.conversation_shares;
SELECT expect_error(format($$SELECT llm_chat(%s, 'bob here')$$, :ca));
SELECT expect_error(format($$SELECT llm.share_conversation(%s, 'conv_carol')$$, :ca));
SELECT expect_error(format($$SELECT llm.unshare_conversation(%s, 'conv_bob')$$, :ca));
-- bob forks it: his own conversation, that reads alice's turns
SELECT llm.fork_conversation(:ca, 2) AS fb \gset
SELECT owner_role, forked_at_seq, title FROM llm.conversations WHERE id = :fb;
SELECT seq, role, content FROM llm.conversation_history(:fb);
SELECT llm_chat(:fb, 'bob continues');
SELECT string_agg(seq || ':' || role, ' ' ORDER BY seq) AS history FROM llm.conversation_history(:fb);
RESET ROLE;
-- alice does not see bob's fork, nor its turns
SET ROLE conv_alice;
SELECT count(*) AS bobs_fork FROM llm.conversations WHERE id = :fb;
SELECT count(*) AS bobs_turns FROM llm.conversation_turns WHERE conversation = :fb;
-- shared to continue
SELECT llm.share_conversation(:ca, 'conv_bob');
RESET ROLE;
SET ROLE conv_bob;
SELECT role_name, can_continue FROM llm.conversation_shares WHERE conversation = :ca;
SELECT llm_chat(:ca, 'bob continues alice');
SELECT seq, role, content FROM llm.conversation_turns WHERE conversation = :ca ORDER BY seq;
RESET ROLE;
-- unshared
SET ROLE conv_alice;
SELECT llm.unshare_conversation(:ca, 'conv_bob') AS unshared;
SELECT llm.unshare_conversation(:ca, 'conv_bob') AS unshared_again;
RESET ROLE;
SET ROLE conv_bob;
-- bob no longer sees it; the turns his fork shares (1 and 2) stay visible to him
SELECT count(*) AS visible FROM llm.conversations WHERE id = :ca;
SELECT count(*) AS turns FROM llm.conversation_turns WHERE conversation = :ca;
SELECT expect_error(format($$SELECT llm_chat(%s, 'bob again')$$, :ca));
-- his fork still reads the turns it shares, and no others
SELECT string_agg(seq || ':' || role, ' ' ORDER BY seq) AS history FROM llm.conversation_history(:fb);
RESET ROLE;

-- shared with a group: its members see it
SET ROLE conv_alice;
SELECT llm.share_conversation(:ca, 'conv_group', false);
RESET ROLE;
SET ROLE conv_carol;
SELECT title FROM llm.conversations WHERE id = :ca;
SELECT count(*) AS turns FROM llm.conversation_turns WHERE conversation = :ca;
SELECT expect_error(format($$SELECT llm_chat(%s, 'carol here')$$, :ca));
RESET ROLE;
SET ROLE conv_bob;
SELECT count(*) AS visible_to_bob FROM llm.conversations WHERE id = :ca;
RESET ROLE;

-- llm_admin sees everything, and may share
SET ROLE conv_admin;
SELECT owner_role, title FROM llm.conversations WHERE id IN (:c1, :ca, :fb) ORDER BY id;
SELECT count(*) AS turns FROM llm.conversation_turns WHERE conversation IN (:c1, :ca, :fb);
SELECT llm.unshare_conversation(:ca, 'conv_group') AS unshared_by_admin;
RESET ROLE;

-- alice changes her conversation's settings, not its owner
SET ROLE conv_alice;
UPDATE llm.conversations SET title = 'renamed', metadata = '{"k": 1}' WHERE id = :ca;
SELECT title, metadata, updated_at > created_at AS touched FROM llm.conversations WHERE id = :ca;
SELECT expect_error(format($$UPDATE llm.conversations SET owner_role = 'conv_bob' WHERE id = %s$$, :ca));
SELECT expect_error(format($$UPDATE llm.conversation_turns SET content = '"edited"' WHERE conversation = %s$$, :ca));
RESET ROLE;
-- the trigger stops even those who may write every column
SELECT expect_error(format($$UPDATE llm.conversations SET owner_role = 'conv_bob' WHERE id = %s$$, :ca));
SELECT expect_error(format($$UPDATE llm.conversations SET forked_from = NULL, forked_at_seq = NULL WHERE id = %s$$, :fb));

-- alice deletes hers although bob forked it: bob's fork keeps its history
SET ROLE conv_alice;
DELETE FROM llm.conversations WHERE id = :ca;
RESET ROLE;
SET ROLE conv_bob;
SELECT string_agg(seq || ':' || role, ' ' ORDER BY seq) AS bobs_fork FROM llm.conversation_history(:fb);
DELETE FROM llm.conversations WHERE id = :fb;
RESET ROLE;
SELECT count(*) AS turns_left FROM llm.conversation_turns WHERE conversation IN (:ca, :fb);
SELECT count(*) AS shares_left FROM llm.conversation_shares WHERE conversation = :ca;

--
-- pg_dump keeps the conversation tables (test/t/011_dump_restore.pl restores them)
--
SELECT c::regclass AS dumped
  FROM pg_extension e, unnest(e.extconfig) AS c
 WHERE e.extname = 'llm_gateway' AND c::regclass::text LIKE 'llm.conversation%'
 ORDER BY c::regclass::text;

--
-- no budget known (no context_window on the alias's routes, none in the
-- policy): a history is sent whole up to 16,000 tokens, and a longer one
-- is an error, not trimmed
--
SELECT llm.new_conversation('conv') AS nb \gset
SELECT expect_error(format($$SELECT llm_chat(%s, repeat('many words ', 6000))$$, :nb));
INSERT INTO llm.conversation_turns (conversation, seq, role, content, bytes, starts_exchange)
SELECT :nb, s, CASE WHEN s % 2 = 1 THEN 'user' ELSE 'assistant' END, to_jsonb(repeat('older words ', 1000)),
       octet_length(to_jsonb(repeat('older words ', 1000))::text), s % 2 = 1
  FROM generate_series(1, 6) s;
SELECT expect_error(format($$SELECT llm_chat(%s, 'one more')$$, :nb));
SELECT count(*) AS turns_unchanged FROM llm.conversation_turns WHERE conversation = :nb;
-- with a budget in the policy the same history is trimmed instead
UPDATE llm.conversations SET context_policy = '{"budget_tokens": 9000}' WHERE id = :nb;
SELECT llm_chat(:nb, 'one more');
SELECT seq, context_first_seq FROM llm.conversation_turns WHERE conversation = :nb ORDER BY seq DESC LIMIT 1;
DELETE FROM llm.conversations WHERE id = :nb;

--
-- llm.estimate: an llm_chat site counts the conversation's history and uses its alias
--
SELECT function, alias, calls, input_tokens_per_call
  FROM llm.estimate(format($$SELECT llm_chat(%s, 'one more question')$$, :c1));
SELECT (SELECT input_tokens_per_call FROM llm.estimate(format($$SELECT llm_chat(%s, 'one more question')$$, :c1)))
     = ceil((octet_length('"one more question"')
             + coalesce((SELECT octet_length(system) FROM llm.conversations WHERE id = :c1), 0)
             + (SELECT sum(bytes) FROM llm.conversation_history(:c1) WHERE role <> 'summary')) / 4.0) AS counts_history;
-- many conversations: the alias is not a constant; the jsonb form is llm_chat too
SELECT function, alias, calls > 0 AS some FROM llm.estimate($$SELECT llm_chat(id, 'next') FROM llm.conversations$$);
SELECT function FROM llm.estimate($$SELECT llm_chat(id, '"next"'::jsonb) FROM llm.conversations$$);

-- clean up
DELETE FROM llm.conversations WHERE id = :c1;
DROP ROLE conv_alice, conv_bob, conv_carol, conv_group, conv_admin;
SELECT llm.drop_provider('conv_mock');
SELECT setval('llm.routes_id_seq', :seq_last, :'seq_called') > 0 AS restored;
