# Conversations: llm_chat sends the exact history, appends turns in the
# caller's transaction only on success, trims to the budget without
# splitting tool pairs, summarises, serialises calls on one conversation,
# pipelines many, forks, replays on another kind, and row security.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use LlmGatewayTest;
use JSON::PP;

sub encode_json_text { return JSON::PP->new->canonical->encode($_[0]); }
sub decode_json_text { return JSON::PP->new->decode($_[0]); }

my $mock = start_mock();
my $node = gateway_node('conversations', $mock, 'anthropic');
# a secret of one letter would be scrubbed out of provider messages ("to[redacted]ens")
$node->safe_psql('postgres', q{SELECT llm.set_credential('mock', 'fake-key-conversations')});

sub psql_err
{
	my ($sql, %o) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\n$sql", on_error_stop => 0, %o);
	return ($out, $err);
}

# the bodies the mock received, oldest first
sub bodies
{
	my ($path) = @_;
	my $r = $mock->get('/_mock/requests' . ($path ? "?path=$path" : ''));
	return [ map { $_->{body} } @{ $r->{requests} } ];
}

# --- a conversation, three turns, the exact history sent each time
my $c = $node->safe_psql('postgres', q{SELECT llm.new_conversation('m', 'Be brief.')});
is($c, '1', 'new_conversation returns the id');
$mock->reset;
is($node->safe_psql('postgres', qq{SELECT llm_chat($c, 'hello there')}),
	'mock reply to: hello there [system: Be brief.]', 'first turn answered');
is($node->safe_psql('postgres', qq{SELECT llm_chat($c, 'and again')}),
	'mock reply to: and again [system: Be brief.]', 'second turn answered');
my $b = bodies();
is(scalar(@$b), 2, 'two provider requests');
is_deeply($b->[1]{messages}, [
	{ role => 'user', content => 'hello there' },
	{ role => 'assistant', content => [ { type => 'text', text => 'mock reply to: hello there [system: Be brief.]' } ] },
	{ role => 'user', content => 'and again' } ], 'second call sent the whole history');
is($b->[1]{system}, 'Be brief.', 'system prompt sent');
is($node->safe_psql('postgres', qq{SELECT string_agg(seq || ':' || role || ':' || coalesce(tokens::text, '-'), ' ' ORDER BY seq) FROM llm.conversation_turns WHERE conversation = $c}),
	'1:user:5 2:assistant:8 3:user:4 4:assistant:8', 'four turns stored with their tokens');


sub turns_of
{
	my ($conv) = @_;
	return $node->safe_psql('postgres',
		qq{SELECT count(*) FROM llm.conversation_turns WHERE conversation = $conv});
}

# --- a failed call appends nothing, and its attempt is in the log
my ($out, $err) = psql_err(qq{SELECT llm_chat($c, 'boom [[mock:status=400]]')});
like($err, qr/ERROR:  LL004/, 'a failed call raises the provider error');
is(turns_of($c), 4, 'nothing appended when the call fails');
is($node->safe_psql('postgres', q{SELECT status FROM llm.requests WHERE request_body::text LIKE '%boom [[%'}),
	'error', 'the failed attempt is in llm.requests');
is($node->safe_psql('postgres',
	qq{SELECT llm_chat($c, '"quiet [[mock:status=400]]"'::jsonb, '{"on_error": "null"}')->'error'->>'type'}),
	'invalid_request_error', 'on_error null: the jsonb form returns the error object');
is($node->safe_psql('postgres', qq{SELECT llm_chat($c, 'quiet2 [[mock:status=400]]') IS NULL FROM (SELECT set_config('llm.on_error', 'null', false)) s}),
	't', 'and the text form NULL');
is(turns_of($c), 4, 'and nothing appended');

# --- ROLLBACK removes the turns, the audit row stays
$node->safe_psql('postgres', qq{BEGIN; SELECT llm_chat($c, 'rolled back'); ROLLBACK;});
is(turns_of($c), 4, 'ROLLBACK removes the turns');
is($node->safe_psql('postgres', q{SELECT status FROM llm.requests WHERE request_body::text LIKE '%rolled back%'}),
	'ok', 'the audit row of the rolled-back call stays');
$mock->reset;
$node->safe_psql('postgres', qq{SELECT llm_chat($c, 'after rollback')});
$b = bodies();
is(scalar(@{ $b->[0]{messages} }), 5, 'the next call sends 4 stored turns and its message');
unlike(encode_json_text($b->[0]), qr/rolled back/, 'not the rolled-back turn');

# --- an empty answer is kept without its empty text block, and left out
# of later histories with its question (providers refuse an empty
# assistant message inside a history)
my $e = $node->safe_psql('postgres', q{SELECT llm.new_conversation('m')});
is($node->safe_psql('postgres', qq{SELECT llm_chat($e, '"say nothing"'::jsonb, '{"stop_sequences": ["mock"]}')->'content'}),
	'[{"text": "", "type": "text"}]', 'the provider answered with an empty text');
is($node->safe_psql('postgres', qq{SELECT string_agg(role || ' ' || content::text, ', ' ORDER BY seq) FROM llm.conversation_turns WHERE conversation = $e}),
	'user "say nothing", assistant []', 'stored as an empty answer');
$mock->reset;
is($node->safe_psql('postgres', qq{SELECT llm_chat($e, 'say something')}), 'mock reply to: say something', 'the next call works');
is_deeply(bodies()->[0]{messages}, [ { role => 'user', content => 'say something' } ], 'without the empty exchange');

# --- tools, trimming at the budget, and a mock that rejects longer input
# with Anthropic's real 400: alias "small" declares a window of 80 tokens
# and keeps 20 for output, so histories are fitted to 120; the mock refuses
# anything over 120 (its tokens are words; it does not count the tool
# definitions, which real providers do, and the gateway too).
$node->safe_psql('postgres', q{
	SELECT llm.add_route('small', 'mock', 'anthropic-mock', options => '{"context_window": 140, "default_max_tokens": 20}')});
my $t = $node->safe_psql('postgres', q{
	SELECT llm.new_conversation('small', 'Use tools.', '{"tools": [{"name": "lookup", "description": "look things up",
	   "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}]}')});
$mock->reset;
$mock->post('/_mock/config', { directives => 'context=120' });
my @said;
for my $i (1 .. 3)
{
	push @said, $node->safe_psql('postgres', qq{SELECT llm_chat($t, 'tell me about topic $i please, in some detail with examples')});
}
my $call = $node->safe_psql('postgres', qq{SELECT llm_chat($t, '"look up cats [[mock:tool]]"'::jsonb)});
like($call, qr/"stop_reason": "tool_use"/, 'the model calls a tool');
my ($tool_id) = $call =~ /"id": "(toolu_mock_\d+)"/;
ok($tool_id, "tool_use id $tool_id");
is($node->safe_psql('postgres',
	qq{SELECT llm_chat($t, '[{"type": "tool_result", "tool_use_id": "$tool_id", "content": "cats are mammals"}]'::jsonb)->'content'->0->>'text'}),
	'tool result was: cats are mammals', 'the tool_result continues it');
for my $i (6 .. 12)
{
	push @said, $node->safe_psql('postgres', qq{SELECT llm_chat($t, 'tell me about topic $i please, in some detail with examples')});
}
is(scalar(grep { /^mock reply to: tell me about topic \d+ please, in some detail with examples \[system: Use tools.\]$/ } @said), 10,
	'every call of the conversation was answered: the mock never saw more than 120 tokens');
is($mock->get('/_mock/stats')->{by_status}{400} // 0, 0, 'no context-length 400');
$b = bodies();
is(scalar(@$b), 12, 'twelve requests');
my $trimmed = 0;
for my $k (0 .. $#$b)
{
	my $m = $b->[$k]{messages};
	is($m->[0]{role}, 'user', "request $k starts with a user turn");
	unlike(encode_json_text($m->[0]), qr/tool_result/, "request $k does not start with a tool_result");
	for my $j (1 .. $#$m)
	{
		next unless encode_json_text($m->[$j]) =~ /"tool_use_id":"(\w+)"/;
		like(encode_json_text($m->[ $j - 1 ]), qr/"id":"$1"/, "request $k: its tool_result follows its tool_use");
	}
	$trimmed++ if $m->[0]{content} ne 'tell me about topic 1 please, in some detail with examples';
}
cmp_ok($trimmed, '>=', 5, "the history was trimmed ($trimmed of 12 requests)");

# what each call sent is recoverable: llm.conversation_context rebuilds it exactly
my $ctx = $node->safe_psql('postgres', qq{
	SELECT json_agg(llm.conversation_context($t, seq) ORDER BY seq) FROM llm.conversation_turns
	 WHERE conversation = $t AND role = 'assistant'});
my $ctxs = decode_json_text($ctx);
for my $k (0 .. $#$b)
{
	is_deeply($ctxs->[$k]{messages}, $b->[$k]{messages}, "request $k: conversation_context is what was sent");
}
is(turns_of($t), 24, 'every turn is kept, whatever was sent');
cmp_ok($node->safe_psql('postgres', qq{SELECT max(context_first_seq) FROM llm.conversation_turns WHERE conversation = $t}),
	'>', 1, 'context_first_seq records the trimming');

# the estimate tracks the provider's count: the last request's estimate,
# corrected, against the tokens the mock counted
my ($est, $real) = split /\|/, $node->safe_psql('postgres', qq{
	SELECT context_est_tokens, input_tokens FROM llm.conversation_turns
	 WHERE conversation = $t AND role = 'assistant' ORDER BY seq DESC LIMIT 1});
note $node->safe_psql('postgres', qq{SELECT string_agg(seq || ':' || context_first_seq || ':' || context_est_tokens || ':' || input_tokens, ' ' ORDER BY seq) FROM llm.conversation_turns WHERE conversation = $t AND role = 'assistant'});
cmp_ok($real, '<=', 120, "the last request was $real tokens (budget 120)");
cmp_ok($real, '>=', 80, 'and the budget was used, not wasted');

# --- the context-length error path: a route that claims a larger window
$node->safe_psql('postgres', q{
	SELECT llm.add_route('liar', 'mock', 'anthropic-mock', options => '{"context_window": 100000}')});
my $l = $node->safe_psql('postgres', q{SELECT llm.new_conversation('liar')});
my $failed;
for my $i (1 .. 10)
{
	($out, $err) = psql_err(qq{SELECT llm_chat($l, 'a longer message number $i for the liar')});
	if ($err) { $failed = $i; last; }
}
ok($failed, "the provider refused the history at turn $failed");
like($err, qr/ERROR:  LL017: provider "mock" returned HTTP 400: prompt is too long: \d+ tokens > 120 maximum/, 'LL017 with the provider\'s message');
is(turns_of($l), 2 * ($failed - 1), 'the refused turn is not appended');
is($node->safe_psql('postgres', q{SELECT error_code FROM llm.requests ORDER BY id DESC LIMIT 1}), 'LL017',
	'the log row says LL017');
$mock->post('/_mock/config', { directives => '' });

# --- summarize: alias "sum" fits histories to 80 tokens (and its mock
# refuses more); the summaries are made by alias "summarizer", a second
# mock that answers "mock reply to: <prompt>" cut to summary_max_tokens
# words, and stored as turns of their own
my $mock2 = start_mock();
my $url2 = $mock2->url;
$node->safe_psql('postgres', qq{
	SELECT llm.add_provider('mock2', 'anthropic', '$url2');
	SELECT llm.set_credential('mock2', 'fake-key-conversations-two');
	SELECT llm.add_route('summarizer', 'mock2', 'anthropic-mock');
	SELECT llm.add_route('sum', 'mock', 'anthropic-mock', options => '{"context_window": 100, "default_max_tokens": 20}')});
my $s = $node->safe_psql('postgres', q{
	SELECT llm.new_conversation('sum', NULL, '{"context": {"strategy": "summarize", "summary_model": "summarizer", "summary_max_tokens": 12}}')});
$mock->reset;
$mock->post('/_mock/config', { directives => 'context=80' });
my $first_summary_at;
for my $i (1 .. 12)
{
	$node->safe_psql('postgres', qq{SELECT llm_chat($s, 'fact number $i is that the sky has colour $i')});
	my $n = $node->safe_psql('postgres', qq{SELECT count(*) FROM llm.conversation_turns WHERE conversation = $s AND role = 'summary'});
	$first_summary_at //= $i if $n > 0;
}
ok($first_summary_at, "a summary was made when the history outgrew the budget (turn $first_summary_at)");
my @sums = split /\n/, $node->safe_psql('postgres', qq{
	SELECT seq || '|' || summary_through || '|' || (content #>> '{}') FROM llm.conversation_turns
	 WHERE conversation = $s AND role = 'summary' ORDER BY seq});
cmp_ok(scalar(@sums), '<', 12 - $first_summary_at, scalar(@sums) . ' summaries for ' . (13 - $first_summary_at) . ' calls after the first: not one per call');
my ($sseq, $through, $stext) = split /\|/, $sums[0], 3;
is($stext, 'mock reply to: Summarize the conversation below so that the summary can',
	'the summary is the summary model\'s answer (cut to summary_max_tokens words)');
my $sb = bodies();
my @summary_requests = map { $_->{body} } @{ $mock2->get('/_mock/requests')->{requests} };
is(scalar(@summary_requests), scalar(@sums), 'one summary request per summary');
like($summary_requests[0]{messages}[0]{content}, qr/\nUser: fact number 1 is that the sky has colour 1\nAssistant: mock reply to: fact number 1/,
	'the summary request carries the dropped turns as a transcript');
is($summary_requests[0]{max_tokens}, 12, 'with summary_max_tokens');
like($summary_requests[1]{messages}[0]{content} // '', qr/Summary of what came before:\nmock reply to: Summarize/,
	'a later summary starts from the previous one') if @sums > 1;
# the call after the first summary: the summary in the system prompt, then
# the turns after summary_through
my ($after) = $node->safe_psql('postgres', qq{
	SELECT min(seq) FROM llm.conversation_turns WHERE conversation = $s AND role = 'assistant' AND context_summary_seq = $sseq});
my $sctx = decode_json_text($node->safe_psql('postgres', qq{SELECT llm.conversation_context($s, $after)}));
is($sctx->{summary}, $stext, 'conversation_context names the summary sent');
my ($sent) = grep { defined $_->{system} && $_->{system} =~ /\Q$stext\E/ } @$sb;
is($sent->{system}, "Summary of the earlier part of this conversation (those turns are not repeated below):\n$stext",
	'the summary went in the system prompt');
is_deeply($sent->{messages}, $sctx->{messages}, 'then the turns after it, as recorded');
like($sent->{messages}[0]{content}, qr/^fact number \d+/, 'starting with a user turn');
is($mock->get('/_mock/stats')->{by_status}{400} // 0, 0, 'the provider never saw more than 80 tokens');
$mock->post('/_mock/config', { directives => '' });

# --- long conversations: a call reads the newest turns, about what it can send
sub fill_turns
{
	my ($conv, $n) = @_;
	$node->safe_psql('postgres', qq{
		INSERT INTO llm.conversation_turns (conversation, seq, role, content, bytes, starts_exchange)
		SELECT $conv, s, CASE WHEN s % 2 = 1 THEN 'user' ELSE 'assistant' END, j, octet_length(j::text), s % 2 = 1
		  FROM generate_series(1, $n) s,
		       LATERAL (SELECT CASE WHEN s % 2 = 1 THEN to_jsonb('old question ' || s)
		                       ELSE jsonb_build_array(jsonb_build_object('type', 'text', 'text', 'old answer ' || s)) END) v(j)});
	return;
}
my $long = $node->safe_psql('postgres', q{SELECT llm.new_conversation('m', NULL, '{"context": {"budget_tokens": 100}}')});
my $whole = $node->safe_psql('postgres', q{SELECT llm.new_conversation('m')});
my $longsum = $node->safe_psql('postgres', q{SELECT llm.new_conversation('m', NULL, '{"context": {"strategy": "summarize", "budget_tokens": 300, "summary_model": "summarizer", "summary_max_tokens": 12}}')});
fill_turns($_, 600) for ($long, $whole, $longsum);
$mock->reset;
$mock2->reset;
is($node->safe_psql('postgres', qq{SELECT llm_chat($long, 'newest question')}), 'mock reply to: newest question', 'a 600-turn conversation continues');
my $m = bodies()->[0]{messages};
cmp_ok(scalar(@$m), '<', 20, scalar(@$m) . ' messages sent within 100 tokens');
is($m->[0]{content}, 'old question ' . (601 - (scalar(@$m) - 1)), 'the newest turns, from a user turn');
is($m->[-2]{content}[0]{text}, 'old answer 600', 'up to the last one');
is($node->safe_psql('postgres', qq{SELECT context_first_seq FROM llm.conversation_turns WHERE conversation = $long AND seq = 602}),
	601 - (scalar(@$m) - 1), 'recorded');
is($node->safe_psql('postgres', qq{SELECT llm_chat($whole, 'all of it')}), 'mock reply to: all of it', 'without a budget');
is(scalar(@{ bodies()->[1]{messages} }), 601, 'a history within 16,000 tokens is sent whole, all 600 turns');
like($node->safe_psql('postgres', qq{SELECT llm_chat($longsum, 'summarise first')}),
	qr/^mock reply to: summarise first \[system: Summary of the earlier part/, 'summarize on a long conversation');
my $sreq = $mock2->get('/_mock/requests')->{requests};
is(scalar(@$sreq), 1, 'one summary request (its rounds fit the summary model at once)');
like($sreq->[0]{body}{messages}[0]{content}, qr/\nUser: old question 1\n.*\nAssistant: old answer 5\d\d\n/s, 'covering the old turns from the first');
like($node->safe_psql('postgres', qq{SELECT llm_chat($longsum, 'then again')}), qr/^mock reply to: then again \[system: Summary/, 'the next call');
is(scalar(@{ $mock2->get('/_mock/requests')->{requests} }), 1, 'made no new summary');
is($node->safe_psql('postgres', qq{SELECT count(*) FROM llm.conversation_turns WHERE conversation = $longsum AND role = 'summary'}), '1', 'one summary turn');

# --- two sessions on one conversation: the second waits, then sees the first's turns
my $k = $node->safe_psql('postgres', q{SELECT llm.new_conversation('m')});
$mock->reset;
my $bg1 = $node->background_psql('postgres', on_error_stop => 0);
$bg1->query_safe('BEGIN');
$bg1->query_safe(qq{SELECT llm_chat($k, 'first in')});
my $bg2 = $node->background_psql('postgres', on_error_stop => 0);
$bg2->query_until(qr/started/, "\\echo started\nSELECT llm_chat($k, 'second in');\n");
ok($node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM pg_stat_activity WHERE query LIKE '%second in%' AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()}),
	'the second call waits for the first one\'s transaction');
is(scalar(@{ bodies() }), 1, 'and has sent nothing yet');
$bg1->query_safe('COMMIT');
$bg1->quit;
ok($node->poll_query_until('postgres', qq{SELECT count(*) = 4 FROM llm.conversation_turns WHERE conversation = $k}),
	'then it continues');
$bg2->quit;
$b = bodies();
is_deeply([ map { $_->{role} . ':' . (ref $_->{content} ? $_->{content}[0]{text} : $_->{content}) } @{ $b->[1]{messages} } ],
	[ 'user:first in', 'assistant:mock reply to: first in', 'user:second in' ], 'with the first one\'s turns');
is($node->safe_psql('postgres', qq{SELECT string_agg(seq || role, ',' ORDER BY seq) FROM llm.conversation_turns WHERE conversation = $k}),
	'1user,2assistant,3user,4assistant', 'never interleaved');

# --- many conversations advance in one statement, concurrently
$node->safe_psql('postgres', q{SELECT llm.new_conversation('m', NULL, '{"title": "batch"}') FROM generate_series(1, 6)});
$mock->reset;
$mock->post('/_mock/config', { latency_ms => 300 });
like($node->safe_psql('postgres', q{EXPLAIN (COSTS OFF) SELECT llm_chat(id, 'next') FROM llm.conversations WHERE title = 'batch'}),
	qr/LLM Pipeline/, 'llm_chat over many conversations is pipelined');
is($node->safe_psql('postgres', q{SELECT count(*) FROM (SELECT llm_chat(id, 'next please') AS a FROM llm.conversations WHERE title = 'batch') s WHERE a = 'mock reply to: next please'}),
	'6', 'six conversations answered');
is($mock->get('/_mock/stats')->{max_in_flight}, 6, 'all six in flight at once');
is($node->safe_psql('postgres', q{SELECT count(*) FROM llm.conversation_turns t JOIN llm.conversations c ON c.id = t.conversation WHERE c.title = 'batch'}),
	'12', 'each got its two turns');

# a call prepared when the session has no handle left waits and is prepared
# again (llm.max_handles_per_session 2, concurrency 8)
is($node->safe_psql('postgres', q{
	SET llm.max_handles_per_session = 2;
	SELECT count(*) FROM (SELECT llm_chat(id, 'two at a time') AS a FROM llm.conversations WHERE title = 'batch') s
	 WHERE a = 'mock reply to: two at a time'}),
	'6', 'with two handles per session, all six are continued');

# an UPDATE of the conversations themselves: llm_chat never writes their rows
$mock->post('/_mock/config', { latency_ms => 0 });
is($node->safe_psql('postgres', q{
	UPDATE llm.conversations SET title = llm_chat(id, 'name this') WHERE title = 'batch';
	SELECT count(*) FROM llm.conversations WHERE title = 'mock reply to: name this'}),
	'6', 'UPDATE ... SET title = llm_chat(id, ...) continues each and sets its title');

# a cursor closed before its calls are answered: they are abandoned, and
# the same transaction can continue those conversations
$node->safe_psql('postgres', q{UPDATE llm.conversations SET title = 'batch' WHERE title = 'mock reply to: name this'});
$mock->post('/_mock/config', { latency_ms => 300 });
is($node->safe_psql('postgres', q{
	BEGIN;
	DECLARE cur CURSOR FOR SELECT llm_chat(id, 'abandoned') FROM llm.conversations WHERE title = 'batch' ORDER BY id;
	FETCH 1 FROM cur;
	CLOSE cur;
	SELECT count(*) FROM (SELECT llm_chat(id, 'after the cursor') FROM llm.conversations WHERE title = 'batch') s;
	COMMIT;}), "mock reply to: abandoned\n6", 'every conversation continues after the cursor closed');
my ($answered, $turned) = split /\|/, $node->safe_psql('postgres', q{SELECT
	(SELECT count(*) FROM llm.requests WHERE status = 'ok' AND request_body::text LIKE '%"abandoned"%'),
	(SELECT count(*) FROM llm.conversation_turns t JOIN llm.conversations c ON c.id = t.conversation
	  WHERE c.title = 'batch' AND t.content #>> '{}' = 'abandoned')});
# a call is appended when the session takes its answer: the fetched row's
# and any taken meanwhile, never one the provider answered after the close
ok($turned >= 1 && $turned <= $answered, "turns of taken calls only ($turned, $answered answered by the provider)");

# the same conversation twice in one statement: one call at a time, in row order
my $twice = $node->safe_psql('postgres', q{SELECT llm.new_conversation('m')});
$mock->reset;
$mock->post('/_mock/config', { latency_ms => 100 });
like($node->safe_psql('postgres', qq{EXPLAIN (COSTS OFF) SELECT llm_chat($twice, m) FROM (VALUES (1, 'one'), (2, 'two'), (3, 'three')) v(n, m)}),
	qr/LLM Pipeline/, 'pipelined plan');
is($node->safe_psql('postgres', qq{SELECT string_agg(llm_chat($twice, m), ' / ' ORDER BY n) FROM (SELECT * FROM (VALUES (1, 'one'), (2, 'two'), (3, 'three')) v(n, m) ORDER BY n) v}),
	'mock reply to: one / mock reply to: two / mock reply to: three', 'three answers');
is($mock->get('/_mock/stats')->{max_in_flight}, 1, 'sent one after the other');
$b = bodies();
is(scalar(@{ $b->[2]{messages} }), 5, 'the third call carried the first two exchanges');
is($node->safe_psql('postgres', qq{SELECT string_agg(seq || ':' || (CASE WHEN role = 'user' THEN content #>> '{}' ELSE content->0->>'text' END), ',' ORDER BY seq) FROM llm.conversation_turns WHERE conversation = $twice}),
	'1:one,2:mock reply to: one,3:two,4:mock reply to: two,5:three,6:mock reply to: three', 'turns in row order');
$mock->post('/_mock/config', { latency_ms => 0 });

# --- fork: shares the turns up to at_seq, copies none
my $f = $node->safe_psql('postgres', qq{SELECT llm.fork_conversation($c, 2)});
$mock->reset;
is($node->safe_psql('postgres', qq{SELECT llm_chat($f, 'a different second question')}),
	'mock reply to: a different second question [system: Be brief.]', 'the fork answers with the parent\'s settings');
$b = bodies();
is_deeply([ map { $_->{role} } @{ $b->[0]{messages} } ], [ 'user', 'assistant', 'user' ], 'sent the shared turns 1-2 and the new one');
is($b->[0]{messages}[0]{content}, 'hello there', 'the parent\'s first turn');
is($node->safe_psql('postgres', qq{SELECT string_agg(seq::text, ',' ORDER BY seq) FROM llm.conversation_turns WHERE conversation = $f}),
	'3,4', 'the fork stores only its own turns');
is($node->safe_psql('postgres', qq{SELECT string_agg(seq || ':' || conversation, ',' ORDER BY seq) FROM llm.conversation_history($f)}),
	"1:$c,2:$c,3:$f,4:$f", 'conversation_history reads the shared ones in place');
is(turns_of($c), 6, 'the parent is unchanged');

# --- replay on a provider of another kind (OpenAI), side by side
my $url = $mock->url . '/v1';
$node->safe_psql('postgres', qq{
	SELECT llm.add_provider('mock_openai', 'openai', '$url');
	SELECT llm.set_credential('mock_openai', 'fake-key-conversations-three');
	SELECT llm.add_route('o', 'mock_openai', 'gpt-mock', options => '{"price_input": 1, "price_output": 2}')});
my $r = $node->safe_psql('postgres', q{
	SELECT llm.new_conversation('m', 'Use tools.', '{"tools": [{"name": "lookup", "description": "look things up",
	   "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}]}')});
sub tool_id_of { my ($answer) = @_; my ($id) = $answer =~ /"id": "(toolu_\w+)"/; return $id; }
$node->safe_psql('postgres', qq{SELECT llm_chat($r, 'hello replay')});
# the original model was made to call the tool by a per-call option the replay does not have
my $id1 = tool_id_of($node->safe_psql('postgres', qq{SELECT llm_chat($r, '"look up dogs"'::jsonb, '{"tool_choice": {"type": "any"}}')}));
$node->safe_psql('postgres', qq{SELECT llm_chat($r, '[{"type": "tool_result", "tool_use_id": "$id1", "content": "dogs bark"}]'::jsonb)});
my $id2 = tool_id_of($node->safe_psql('postgres', qq{SELECT llm_chat($r, '"look up cats [[mock:tool]]"'::jsonb)}));
$node->safe_psql('postgres', qq{SELECT llm_chat($r, '[{"type": "tool_result", "tool_use_id": "$id2", "content": "cats purr"}]'::jsonb)});
$node->safe_psql('postgres', qq{SELECT llm_chat($r, 'thanks')});
$mock->reset;
my @rows = split /\n/, $node->safe_psql('postgres', qq{
	SELECT seq, coalesce(original->0->>'text', original::text), replayed::text, original_tokens, replayed_tokens,
	       coalesce(original_cost::text, '-'), replayed_cost
	  FROM llm.replay_conversation($r, 'o')});
is(scalar(@rows), 6, 'one row per user turn');
my @f = map { [ split /\|/ ] } @rows;
is_deeply([ map { $_->[0] } @f ], [ 1, 3, 5, 7, 9, 11 ], 'in order, by the user turns\' seq');
is($f[0][1], 'mock reply to: hello replay [system: Use tools.]', 'the original answer');
like($f[0][2], qr/^\[\{"text": "mock reply to: hello replay \[system: Use tools.\]", "type": "text"\}\]$/, 'the replayed answer, from the OpenAI kind');
like($f[1][2], qr/"text": "mock reply to: look up dogs/, 'unforced, the replayed model answered in text where the original called the tool');
like($f[2][2], qr/tool result was: dogs bark/, 'so the original tool call was replayed with its result');
like($f[3][2], qr/"type": "tool_use"/, 'the replayed model made the same call');
like($f[4][2], qr/tool result was: cats purr/, 'and got the original result for it');
is($f[0][5], '-', 'the original has no price');
my ($in, $out) = ($f[0][4], undef);
my $b_o = bodies();
is(scalar(@$b_o), 6, 'six requests');
like($b_o->[0]{model} // '', qr/gpt-mock/, 'sent to the OpenAI-kind target');
my ($subst) = grep { ($_->{role} // '') eq 'tool' && $_->{content} eq 'dogs bark' } @{ $b_o->[2]{messages} };
is($subst->{tool_call_id}, $id1, 'the original tool call id, with the original call before it');
my ($new_id) = grep { ($_->{role} // '') eq 'tool' && $_->{content} eq 'cats purr' } @{ $b_o->[4]{messages} };
like($new_id->{tool_call_id}, qr/^call_mock_\d+$/, 'the replayed call\'s own id for its result');
is($node->safe_psql('postgres', q{SELECT count(*), sum(cost_usd) = sum(input_tokens * 1 + output_tokens * 2) / 1e6 FROM llm.requests WHERE tags->>'purpose' = 'replay' AND tags->>'conversation' IS NOT NULL}),
	'6|t', 'the replay calls are logged, tagged, at the route\'s prices');
is($node->safe_psql('postgres', qq{SELECT string_agg(replayed_cost::text, ',' ORDER BY seq) FROM llm.replay_conversation($r, 'o')}),
	$node->safe_psql('postgres', q{SELECT string_agg(cost_usd::text, ',' ORDER BY id) FROM (SELECT * FROM llm.requests WHERE tags->>'purpose' = 'replay' ORDER BY id LIMIT 6) r}),
	'replayed_cost is what the log says each call cost');
is(turns_of($r), 12, 'a replay stores no turn');

done_testing();
