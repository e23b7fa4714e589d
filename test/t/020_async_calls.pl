# Asynchronous calls by hand: llm_submit returns at once, so one session
# keeps many calls in flight; llm_await / llm_await_any take the answers,
# llm_cancel and the session's exit abort the calls still open.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use LlmGatewayTest;

my $mock = start_mock();
my $node = gateway_node('async', $mock, 'anthropic');

# the history of one user prompt, as SQL
sub hist
{
	my ($prompt) = @_;
	return qq{jsonb_build_array(jsonb_build_object('role', 'user', 'content', '$prompt'))};
}

# run SQL in one session, going on after errors; (stdout, stderr)
sub session
{
	my ($sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\n$sql", on_error_stop => 0);
	return ($out, $err);
}

# the provider saw N clients go away
sub provider_saw_disconnects
{
	my ($n) = @_;
	for (1 .. 100)
	{
		return 1 if $mock->get('/_mock/stats')->{disconnects} >= $n;
		select(undef, undef, undef, 0.05);
	}
	return 0;
}

is($node->safe_psql('postgres', q{SELECT llm_complete('m', 'warm up')}), 'mock reply to: warm up', 'warm-up call');

# ten calls of 500 ms from one session: submitted together, they overlap
$mock->reset;
my $t0 = time;
my ($out, $err) = session(q{
CREATE TEMP TABLE h AS
  SELECT i, llm_submit('m', } . hist("fan ' || i || ' [[mock:latency=500]]") . q{) AS h
  FROM generate_series(1, 10) i;
SELECT string_agg(llm_await(h)->'content'->0->>'text', ';' ORDER BY i) FROM h;
});
my $took = time - $t0;
is($err, '', 'no error');
is($out, join(';', map { "mock reply to: fan $_" } 1 .. 10), 'each handle gets its own answer');
cmp_ok($took, '<', 2.5, "10 calls of 500 ms took $took s, not 5 s");
is($mock->get('/_mock/stats')->{max_in_flight}, 10, 'the provider had all 10 in flight at once');
is($node->safe_psql('postgres', q{SELECT count(*) FROM llm.requests WHERE status = 'ok' AND request_body::text LIKE '%fan %'}),
	'10', 'and each is logged ok');

# await_any returns the first to finish, whatever its place in the array
($out, $err) = session(q{
SELECT llm_submit('m', } . hist('slow one [[mock:latency=1500]]') . q{) AS a \gset
SELECT llm_submit('m', } . hist('fast one [[mock:latency=100]]') . q{) AS b \gset
SELECT llm_submit('m', } . hist('slow two [[mock:latency=1500]]') . q{) AS c \gset
SELECT handle = :b, answer->'content'->0->>'text' FROM llm_await_any(ARRAY[:a, :b, :c]);
SELECT llm_await(:b);
SELECT llm_await(:a)->'content'->0->>'text', llm_await(:c)->'content'->0->>'text';
});
is($out, "t|mock reply to: fast one\nmock reply to: slow one|mock reply to: slow two",
	'llm_await_any returned the fast call; the slow ones stay for llm_await');
like($err, qr/ERROR:  22023: llm_gateway handle \d+ is not open in this session/,
	'a handle taken by llm_await_any is gone');

# an unknown handle, a handle of another session, an awaited handle: 22023 with a hint
($out, $err) = session(q{SELECT llm_await(42);});
like($err, qr/ERROR:  22023: llm_gateway handle 42 is not open in this session\n.*HINT:  A handle is valid only in the session whose llm_submit\(\) returned it/s,
	'an unknown handle is 22023 with a hint');
($out, $err) = session(q{
SELECT llm_submit('m', } . hist('once') . q{) AS h \gset
SELECT llm_await(:h)->'content'->0->>'text';
SELECT llm_await(:h);
SELECT llm_cancel(:h);
});
is($out, 'mock reply to: once', 'awaited once');
is(() = $err =~ /ERROR:  22023: llm_gateway handle \d+ is not open in this session/g, 2,
	'a second llm_await or llm_cancel of it is 22023');

# bad arguments
($out, $err) = session(q{
SELECT llm_await(NULL);
SELECT llm_submit('m', } . hist('arguments') . q{) AS h \gset
SELECT llm_await(:h, -1);
SELECT llm_await_any('{}');
SELECT llm_await_any(ARRAY[:h, NULL]);
SELECT llm_submit('m', NULL);
SELECT llm_await(:h)->'content'->0->>'text';
});
like($err, qr/ERROR:  22004: handle must not be NULL.*ERROR:  22023: timeout_ms must not be negative.*ERROR:  22023: handles must not be empty.*ERROR:  22004: handles must not contain NULL.*ERROR:  22004: history must not be NULL/s,
	'NULL handle, negative timeout, empty array, NULL in the array, NULL history');
is($out, 'mock reply to: arguments', 'and the handle survives them');

# an error is raised at await, exactly as llm_messages raises it
($out, $err) = session(q{
SELECT llm_submit('m', } . hist('bad [[mock:status=400]]') . q{) AS h \gset
SELECT llm_await(:h);
});
my ($sync_ret, $sync_out, $sync_err) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT llm_messages('m', " . hist('bad [[mock:status=400]]') . ')');
my ($async_error) = $err =~ /(ERROR:  [^\n]*)/;
my ($sync_error) = $sync_err =~ /(ERROR:  [^\n]*)/;
like($async_error, qr/^ERROR:  LL004: /, 'the call\'s error is raised at await with its SQLSTATE');
is($async_error, $sync_error, 'the same error as llm_messages gives');
like($err, qr/CONTEXT:  llm_gateway handle \d+/, 'naming the handle in the context');

# on_error as given at submit: the await returns the error object instead
($out, $err) = session(q{
SELECT llm_submit('m', } . hist('bad null [[mock:status=400]]') . q{, '{"on_error": "null"}') AS h \gset
SELECT a->>'type', a->'error'->>'type', a->'gateway'->>'sqlstate' FROM (SELECT llm_await(:h) AS a) s;
});
is($out, 'error|invalid_request_error|LL004', 'a call submitted with on_error null is awaited as an error object');
is($err, '', 'without raising');

# a timeout at await leaves the call running; a later await gets the answer
$mock->reset;
($out, $err) = session(q{
BEGIN;
SELECT llm_submit('m', } . hist('patience [[mock:latency=1000]]') . q{) AS h \gset
ROLLBACK;
SELECT llm_await(:h, 100);
SET statement_timeout = '100ms';
SELECT llm_await(:h);
RESET statement_timeout;
SELECT llm_await(:h)->'content'->0->>'text';
});
like($err, qr/ERROR:  LL009: llm_gateway handle \d+ has no answer within 100 ms\nDETAIL:  The call is still running; the handle stays valid\./,
	'an await timeout raises LL009');
like($err, qr/ERROR:  57014: canceling statement due to statement timeout/,
	'statement_timeout ends an await too');
is($out, 'mock reply to: patience', 'and a later await (after a rollback too) still gets the answer');
is($mock->get('/_mock/stats')->{disconnects}, 0, 'the provider never saw the call go away');

# llm_cancel aborts the call at the provider; the row says cancelled
$mock->reset;
my $bg = $node->background_psql('postgres', on_error_stop => 0);
my $h = $bg->query_safe(q{SELECT llm_submit('m', } . hist('to cancel [[mock:hang]]') . ')');
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM llm.requests WHERE status = 'pending' AND request_body::text LIKE '%to cancel%'})
  or die 'call never became pending';
is($bg->query_safe("SELECT llm_cancel($h)"), 't', 'llm_cancel of a running call is true');
ok(provider_saw_disconnects(1), 'the provider saw the connection closed');
ok($node->poll_query_until('postgres',
		q{SELECT status = 'cancelled' FROM llm.requests WHERE request_body::text LIKE '%to cancel%'}),
	'the row says cancelled');
$h = $bg->query_safe(q{SELECT llm_submit('m', } . hist('done before cancel') . ')');
$node->poll_query_until('postgres',
	q{SELECT status = 'ok' FROM llm.requests WHERE request_body::text LIKE '%done before cancel%'})
  or die 'call never finished';
is($bg->query_safe("SELECT llm_cancel($h)"), 'f', 'llm_cancel of a finished call is false');

# at most llm.max_handles_per_session calls open in one session
$bg->query_safe('SET llm.max_handles_per_session = 2');
$bg->query_safe(q{SELECT llm_submit('m', } . hist('limit one [[mock:hang]]') . ')');
$bg->query_safe(q{SELECT llm_submit('m', } . hist('limit two [[mock:hang]]') . ')');
$bg->query(q{\set VERBOSITY verbose
SELECT llm_submit('m', } . hist('limit three') . ')');
like($bg->{stderr}, qr/ERROR:  53400: this session already has 2 llm_gateway calls in flight/,
	'a submit past llm.max_handles_per_session is 53400');
$bg->{stderr} = '';

# session exit with handles pending aborts them (and the two above)
$bg->query_safe('RESET llm.max_handles_per_session');
$bg->query_safe(q{SELECT llm_submit('m', jsonb_build_array(jsonb_build_object('role', 'user', 'content', 'left behind ' || i || ' [[mock:hang]]'))) FROM generate_series(1, 3) i});
$node->poll_query_until('postgres',
	q{SELECT count(*) = 5 FROM llm.requests WHERE status = 'pending'})
  or die 'calls never became pending';
my $before = $mock->get('/_mock/stats')->{disconnects};
$bg->quit;
ok(provider_saw_disconnects($before + 5), 'the provider saw the five pending calls go away');
ok($node->poll_query_until('postgres',
		q{SELECT count(*) = 5 FROM llm.requests WHERE status = 'cancelled' AND (request_body::text LIKE '%left behind%' OR request_body::text LIKE '%limit %')}),
	'their rows say cancelled');
ok($node->poll_query_until('postgres', 'SELECT slots_in_use = 0 FROM llm.gateway_status()'),
	'and every slot is back');

# plain calls still work after all that
is($node->safe_psql('postgres', q{SELECT llm_complete('m', 'after')}), 'mock reply to: after', 'llm_complete still works');

$node->stop;
$mock->stop;
done_testing();
