# The LLM Pipeline: ordinary statements run their rows' calls concurrently
# (the mock's maximum in flight reaches llm.statement_concurrency), rows
# come out in the child's order with the serial plan's answers, shapes that
# cannot be pipelined stay serial and right, and calls the statement no
# longer needs are aborted at the provider and logged cancelled.
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
my $node = gateway_node('pipeline', $mock, 'anthropic');

# run SQL in one session, going on after errors; (stdout, stderr)
sub session
{
	my ($sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\n$sql", on_error_stop => 0);
	return ($out, $err);
}

sub mock_latency
{
	my ($ms) = @_;
	$mock->post('/_mock/config', { latency_ms => $ms });
	return;
}

sub stats { return $mock->get('/_mock/stats'); }

# wait until the provider saw N clients go away
sub provider_saw_disconnects
{
	my ($n) = @_;
	for (1 .. 200)
	{
		return 1 if stats()->{disconnects} >= $n;
		select(undef, undef, undef, 0.05);
	}
	return 0;
}

$node->safe_psql('postgres', q{
CREATE TABLE t (id int PRIMARY KEY, body text, grp int, answer text);
INSERT INTO t SELECT i, 'row ' || i, i % 3, NULL FROM generate_series(1, 1000) i;
CREATE TABLE u (grp int PRIMARY KEY, name text);
INSERT INTO u VALUES (0, 'zero'), (1, 'one'), (2, 'two');
CREATE TABLE t2 (id int, answer jsonb);
ANALYZE t; ANALYZE u;
});
is($node->safe_psql('postgres', q{SELECT llm_complete('m', 'warm up')}), 'mock reply to: warm up', 'warm-up call');

# Each shape: serially (concurrency 1, no node in the plan) and pipelined
# (concurrency 8, the node in the plan, the provider sees 8 in flight at
# once), with the same answers in the same order.  $sql's result (or, for
# the writing shapes, its $check query in the same transaction) is compared.
sub shape
{
	my ($name, $sql, $check) = @_;
	my $run = $check ? "BEGIN;\n$sql;\n$check;\nROLLBACK;" : "$sql;";

	mock_latency(0);
	my ($serial, $err1) = session("SET llm.statement_concurrency = 1;\n$run");
	is($err1, '', "$name: serial plan runs");
	my ($plan1) = session("SET llm.statement_concurrency = 1;\nEXPLAIN (COSTS OFF) $sql");
	unlike($plan1, qr/LLM Pipeline/, "$name: concurrency 1 plans no pipeline");

	$mock->reset;
	mock_latency(150);
	my ($plan8) = session("SET llm.statement_concurrency = 8;\nEXPLAIN (COSTS OFF) $sql");
	like($plan8, qr/Custom Scan \(LLM Pipeline\)\n.*Concurrency: 8/s, "$name: pipelined plan");
	my ($piped, $err8) = session("SET llm.statement_concurrency = 8;\n$run");
	is($err8, '', "$name: pipelined plan runs");
	is($piped, $serial, "$name: same answers in the same order");
	is(stats()->{max_in_flight}, 8, "$name: 8 calls in flight at once");
	mock_latency(0);
	return;
}

shape('SELECT', q{SELECT id, llm_complete('m', body) FROM t WHERE id <= 24});
shape('WHERE on a column and ORDER BY',
	q{SELECT id, llm_complete('m', body) FROM t WHERE grp = 1 AND id < 60 ORDER BY id DESC});
shape('an expression around the call',
	q{SELECT id, upper(llm_complete('m', body)) || ' #' || id FROM t WHERE id <= 24});
shape('two calls per row',
	q{SELECT id, llm_complete('m', body), llm_complete('m', 'again ' || body) FROM t WHERE id <= 12});
shape('join', q{SELECT t.id, llm_complete('m', t.body || ' of ' || u.name) FROM t JOIN u USING (grp) WHERE t.id <= 24 ORDER BY t.id});
shape('subquery',
	q{SELECT s.id, s.a FROM (SELECT id, llm_complete('m', body) AS a FROM t WHERE id <= 30) s WHERE s.id > 6});
shape('window function over the answers',
	q{SELECT id, a, lag(a) OVER (ORDER BY id) FROM (SELECT id, llm_complete('m', body) AS a FROM t WHERE id <= 24) s});
shape('llm_messages',
	q{SELECT id, llm_messages('m', jsonb_build_array(jsonb_build_object('role', 'user', 'content', body)))->'content' FROM t WHERE id <= 24});
shape('UPDATE', q{UPDATE t SET answer = llm_complete('m', body) WHERE id <= 24},
	q{SELECT string_agg(answer, ';' ORDER BY id) FROM t WHERE id <= 24});
shape('INSERT ... SELECT',
	q{INSERT INTO t2 SELECT id, llm_messages('m', jsonb_build_array(jsonb_build_object('role', 'user', 'content', body)))->'content' FROM t WHERE id <= 24},
	q{SELECT string_agg(answer::text, ';' ORDER BY id) FROM t2});
shape('CREATE TABLE AS',
	q{CREATE TABLE t3 AS SELECT id, llm_complete('m', body) AS a FROM t WHERE id <= 24},
	q{SELECT string_agg(a, ';' ORDER BY id) FROM t3});

# Shapes that stay serial: the call decides (or is decided by) something
# the pipeline would reorder.  The answers are right; one call at a time.
sub serial_shape
{
	my ($name, $sql) = @_;
	$mock->reset;
	mock_latency(50);
	my ($plan) = session("SET llm.statement_concurrency = 8;\nEXPLAIN (COSTS OFF) $sql");
	unlike($plan, qr/LLM Pipeline/, "$name: no pipeline");
	my ($out, $err) = session("SET llm.statement_concurrency = 8;\n$sql");
	is($err, '', "$name: runs");
	is(stats()->{max_in_flight}, 1, "$name: one call at a time");
	mock_latency(0);
	return $out;
}

is(serial_shape('CASE', q{SELECT id, CASE WHEN id % 2 = 0 THEN llm_complete('m', body) END FROM t WHERE id <= 4 ORDER BY id}),
	"1|\n2|mock reply to: row 2\n3|\n4|mock reply to: row 4", 'CASE: calls only where it decides to');
is(serial_shape('call in WHERE',
	q{SELECT id FROM t WHERE id <= 4 AND llm_complete('m', body) LIKE '%row 3' ORDER BY id}), '3', 'WHERE: right row');
is(serial_shape('aggregate argument', q{SELECT string_agg(llm_complete('m', body), ';' ORDER BY id) FROM t WHERE id <= 3}),
	'mock reply to: row 1;mock reply to: row 2;mock reply to: row 3', 'aggregate: right answer');
is(serial_shape('a volatile function alongside',
	q{SELECT id, llm_complete('m', body), clock_timestamp() IS NOT NULL FROM t WHERE id <= 3 ORDER BY id}),
	"1|mock reply to: row 1|t\n2|mock reply to: row 2|t\n3|mock reply to: row 3|t", 'volatile alongside: right answers');
is(serial_shape('a call inside a call', q{SELECT llm_complete('m', llm_complete('m', body)) FROM t WHERE id = 1}),
	'mock reply to: mock reply to: row 1', 'nested: right answer');
is(serial_shape('join condition',
	q{SELECT t.id FROM t JOIN u ON llm_complete('m', u.name) = 'mock reply to: ' || u.name AND t.grp = u.grp WHERE t.id <= 3 ORDER BY 1}),
	"1\n2\n3", 'join condition: right rows');

# LIMIT: a constant bound is known when the plan is made; no call past it
$mock->reset;
mock_latency(100);
my ($out, $err) = session(q{EXPLAIN (COSTS OFF) SELECT llm_complete('m', body) FROM t LIMIT 5});
like($out, qr/Rows Needed: 5/, 'the plan knows the LIMIT');
($out, $err) = session(q{SELECT llm_complete('m', body) FROM t LIMIT 5});
is($out, join("\n", map { "mock reply to: row $_" } 1 .. 5), 'LIMIT 5: the first five rows');
is(stats()->{requests}, 5, 'LIMIT 5 over 1000 rows: the provider saw exactly 5 calls');
$mock->reset;
($out, $err) = session(q{SELECT id, llm_complete('m', body) FROM t ORDER BY id DESC LIMIT 3 OFFSET 2});
is($out, join("\n", map { "$_|mock reply to: row $_" } 998, 997, 996), 'ORDER BY ... LIMIT 3 OFFSET 2: the right rows');
is(stats()->{requests}, 5, 'and 5 calls (offset + limit)');

$mock->reset;
($out, $err) = session(q{SELECT s.a || '!' FROM (SELECT llm_complete('m', body) AS a FROM t) s LIMIT 4});
is($out, join("\n", map { "mock reply to: row $_!" } 1 .. 4), 'LIMIT over a subquery: the first four rows');
is(stats()->{requests}, 4, 'and 4 calls: the bound passes through the subquery scan');

# a cursor that fetches 5 rows and closes: calls past those are aborted
$mock->reset;
mock_latency(300);
my $before = $node->safe_psql('postgres', 'SELECT max(id) FROM llm.requests');
($out, $err) = session(q{SET llm.statement_concurrency = 8;
BEGIN;
DECLARE c CURSOR FOR SELECT llm_complete('m', body || ' [[cursor]]') FROM t;
FETCH 5 FROM c;
CLOSE c;
COMMIT;});
is($out, join("\n", map { "mock reply to: row $_ [[cursor]]" } 1 .. 5), 'the cursor returned the first 5 rows');
my $calls = stats()->{requests};
cmp_ok($calls, '<=', 5 + 8, "the provider saw $calls calls: at most 5 + concurrency");
ok(provider_saw_disconnects($calls - 5 - 3) , 'the calls in flight at CLOSE were disconnected');
$node->poll_query_until('postgres', qq{SELECT count(*) = 0 FROM llm.requests WHERE id > $before AND status = 'pending'})
  or die 'rows stayed pending';
# a call cancelled before the worker sent it (a busy machine) has its row
# and never reached the provider
my ($ok, $cancelled, $other) = split /\|/, $node->safe_psql('postgres',
	qq{SELECT count(*) FILTER (WHERE status = 'ok'), count(*) FILTER (WHERE status = 'cancelled'),
	          count(*) FILTER (WHERE status NOT IN ('ok', 'cancelled'))
	   FROM llm.requests WHERE id > $before});
is($other, 0, "every call is logged ok ($ok) or cancelled ($cancelled)");
cmp_ok($ok + $cancelled, '>=', $calls, 'every call the provider saw has its row');
cmp_ok($cancelled, '>=', 1, 'those not returned were cancelled');
is(stats()->{disconnects}, $calls - $ok, 'the provider saw each cancelled call it had received go away');

# on_error = null: a mix of failing rows completes; every failure is logged
mock_latency(50);
$before = $node->safe_psql('postgres', 'SELECT max(id) FROM llm.requests');
($out, $err) = session(q{SET llm.statement_concurrency = 8;
SELECT count(*) FILTER (WHERE a IS NULL), count(*) FILTER (WHERE a IS NULL AND id % 5 = 0), count(*)
FROM (SELECT id, llm_complete('m', body || CASE WHEN id % 5 = 0 THEN ' [[mock:status=400]]' ELSE '' END,
                               '{"on_error": "null"}') a FROM t WHERE id <= 40) s});
is($err, '', 'on_error null: no error');
is($out, '8|8|40', 'on_error null: the 8 failing rows are NULL, the others answered');
is($node->safe_psql('postgres', qq{SELECT count(*) FROM llm.requests WHERE id > $before AND status = 'error' AND error_code = 'LL004'}),
	'8', 'and each failure has its log row with its SQLSTATE');

# raise: the first failure aborts the siblings in flight and raises as a serial call would
$mock->reset;
mock_latency(0);
$before = $node->safe_psql('postgres', 'SELECT max(id) FROM llm.requests');
my $t0 = time;
($out, $err) = session(q{SET llm.statement_concurrency = 8;
SELECT llm_complete('m', body || CASE WHEN id = 3 THEN ' [[mock:status=400]]' ELSE ' [[mock:latency=5000]]' END) FROM t WHERE id <= 20});
my $took = time - $t0;
like($err, qr/ERROR:  LL004: /, 'raise: the failure is raised with its SQLSTATE');
cmp_ok($took, '<', 3, "raise: at once ($took s), not after the slow siblings");
ok(provider_saw_disconnects(7), 'raise: the 7 siblings in flight were disconnected');
$node->poll_query_until('postgres',
	qq{SELECT count(*) = 7 FROM llm.requests WHERE id > $before AND status = 'cancelled'})
  or die 'siblings not logged cancelled';
ok(1, 'raise: the siblings are logged cancelled');

# statement_timeout mid-statement: every call in flight is aborted within 100 ms
$mock->reset;
$before = $node->safe_psql('postgres', 'SELECT max(id) FROM llm.requests');
$t0 = time;
($out, $err) = session(q{SET llm.statement_concurrency = 16; SET statement_timeout = '700ms';
SELECT llm_complete('m', body || ' [[mock:hang]]') FROM t});
like($err, qr/canceling statement due to statement timeout/, 'statement_timeout cancels a pipeline');
ok(provider_saw_disconnects(16), 'the 16 calls in flight were disconnected');
my $gone = time - $t0;
cmp_ok($gone, '<', 0.7 + 0.1 + 0.3, "within 100 ms of the timeout (plus psql start: $gone s)");
$node->poll_query_until('postgres',
	qq{SELECT count(*) = 16 FROM llm.requests WHERE id > $before AND status = 'cancelled'})
  or die 'timed-out calls not logged cancelled';
ok(1, 'and logged cancelled');

# pg_cancel_backend from another session
$mock->reset;
$before = $node->safe_psql('postgres', 'SELECT max(id) FROM llm.requests');
my $bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_until(qr/started/, "\\echo started\nSET llm.statement_concurrency = 12;\nSELECT llm_complete('m', body || ' [[mock:hang]] [[bgcancel]]') FROM t;\n");
$node->poll_query_until('postgres', qq{SELECT count(*) = 12 FROM llm.requests WHERE id > $before AND status = 'pending'})
  or die 'calls never became pending';
is($node->safe_psql('postgres', q{SELECT calls_submitted, calls_in_flight, rows_expected FROM llm.statement_progress}),
	'12|12|1000', 'llm.statement_progress shows the pipeline: 12 in flight, 1000 rows expected');
$node->safe_psql('postgres', q{SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%bgcancel%' AND pid <> pg_backend_pid()});
ok(provider_saw_disconnects(12), 'pg_cancel_backend: the 12 calls in flight were disconnected');
$node->poll_query_until('postgres',
	qq{SELECT count(*) = 12 FROM llm.requests WHERE id > $before AND status = 'cancelled'})
  or die 'cancelled calls not logged';
ok(1, 'pg_cancel_backend: logged cancelled');

# session exit mid-statement (the other session's backend terminated)
$mock->reset;
$before = $node->safe_psql('postgres', 'SELECT max(id) FROM llm.requests');
$bg->query_until(qr/again/, "\\echo again\nSELECT llm_complete('m', body || ' [[mock:hang]] [[bgterm]]') FROM t;\n");
$node->poll_query_until('postgres', qq{SELECT count(*) = 12 FROM llm.requests WHERE id > $before AND status = 'pending'})
  or die 'calls never became pending';
$node->safe_psql('postgres', q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%bgterm%' AND pid <> pg_backend_pid()});
ok(provider_saw_disconnects(12), 'session exit: the 12 calls in flight were disconnected');
eval { $bg->quit };

# the provider's max_concurrency holds under a pipeline: calls queue, none fails
$mock->reset;
mock_latency(100);
$node->safe_psql('postgres', q{UPDATE llm.providers SET options = options || '{"max_concurrency": 3}' WHERE name = 'mock'});
($out, $err) = session(q{SET llm.statement_concurrency = 16;
SELECT count(*) FILTER (WHERE a LIKE 'mock reply to: row %') FROM (SELECT llm_complete('m', body) a FROM t WHERE id <= 30) s});
is($err, '', 'max_concurrency: no error');
is($out, '30', 'max_concurrency: every row answered');
is(stats()->{max_in_flight}, 3, 'max_concurrency: the provider never saw more than 3 at once');
$node->safe_psql('postgres', q{UPDATE llm.providers SET options = options - 'max_concurrency' WHERE name = 'mock'});

# two pipelines and a single call at once: the single call is not starved
$mock->reset;
mock_latency(200);
$node->safe_psql('postgres', q{
CREATE FUNCTION timed_call() RETURNS float8 LANGUAGE plpgsql AS $$
DECLARE t0 timestamptz := clock_timestamp();
BEGIN
    PERFORM llm_complete('m', 'a single call');
    RETURN extract(epoch FROM clock_timestamp() - t0) * 1000;
END $$;});
my @pipes;
for my $p (1 .. 2)
{
	my $bg = $node->background_psql('postgres', on_error_stop => 0);
	$bg->query_until(qr/go/, "\\echo go\nSET llm.statement_concurrency = 32;\nSELECT count(llm_complete) FROM (SELECT llm_complete('m', body || ' [[pipe$p]]') FROM t WHERE id <= 320) s;\n");
	push @pipes, $bg;
}
$node->poll_query_until('postgres', q{SELECT stats.in_flight >= 64 FROM (SELECT count(*) AS in_flight FROM llm.requests WHERE status = 'pending') stats})
  or die 'the pipelines never filled';
my @single = map { $node->safe_psql('postgres', 'SELECT round(timed_call())') } 1 .. 3;
my $worst = (sort { $b <=> $a } @single)[0];
cmp_ok($worst, '<', 400, "beside two pipelines of 32, single calls took @single ms (mock: 200 ms)");
$_->quit for @pipes;	# psql ends its statement first
is($node->safe_psql('postgres', q{SELECT count(*) FROM llm.requests WHERE status = 'ok' AND request_body::text LIKE '%[[pipe%'}),
	'640', 'both pipelines answered every row');

# nothing leaked
$node->poll_query_until('postgres', q{SELECT slots_in_use = 0 FROM llm.gateway_status()})
  or die 'slots leaked';
ok(1, 'no channel slot leaked');

$node->stop;
done_testing();
