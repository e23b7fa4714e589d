# Fair sharing: a session with hundreds of calls in flight or queued (a
# pipeline, emulated here by llm_submit fan-outs) must not starve another
# session's single call, neither for a provider slot (max_concurrency,
# queued in the worker) nor for a channel slot (llm.max_inflight, waited
# for in the backend); and the big sessions still get every answer.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use JSON::PP;
use LlmGatewayTest;

my $mock = start_mock('--latency-ms', '200');
my $node = gateway_node('fair', $mock, 'anthropic');

# the history of one user prompt, as SQL
sub hist
{
	my ($prompt) = @_;
	return qq{jsonb_build_array(jsonb_build_object('role', 'user', 'content', $prompt))};
}

# ms a call of one session takes, measured around psql
sub timed_call
{
	my ($prompt) = @_;
	my $t0 = time;
	my $out = $node->safe_psql('postgres', "SELECT llm_complete('m', '$prompt')");
	my $took = time - $t0;
	is($out, "mock reply to: $prompt", "$prompt answered");
	return $took;
}

is($node->safe_psql('postgres', q{SELECT llm_complete('m', 'warm up')}), 'mock reply to: warm up', 'warm-up call');

# (a) provider slots: max_concurrency 4, session A queues 200 calls of 200 ms
# (10 s of work); B's single call goes to the next free provider slot, not
# behind A's queue.
$node->safe_psql('postgres', q{SELECT llm.alter_provider('mock', options => '{"max_concurrency": 4}')});
$mock->reset;
my $sa = $node->background_psql('postgres');
$sa->query_safe(q{CREATE TEMP TABLE ha AS
  SELECT i, llm_submit('m', } . hist(q{'pipe a ' || i}) . q{) AS h FROM generate_series(1, 200) i});
$node->poll_query_until('postgres', q{SELECT queued >= 150 FROM llm.provider_load WHERE provider = 'mock'})
  or die 'A\'s calls were never queued';
my $took = timed_call('single b');
cmp_ok($took, '<', 0.8, "B's single call took $took s behind A's 200 queued calls (mock latency 0.2 s, A needs 10 s)");
cmp_ok($node->safe_psql('postgres', q{SELECT queued FROM llm.provider_load WHERE provider = 'mock'}), '>=', 100,
	'and A\'s queue was still long when B was answered');
is($sa->query_safe(q{SELECT count(*) FROM ha WHERE llm_await(h)->'content'->0->>'text' = 'mock reply to: pipe a ' || i}),
	'200', 'A got all 200 answers, each its own');
$sa->quit;
is($mock->get('/_mock/stats')->{max_in_flight}, 4, 'the provider never saw more than 4 calls at once');
is($node->safe_psql('postgres', q{SELECT status || ':' || count(*) FROM llm.requests
  WHERE request_body::text LIKE '%pipe a %' OR request_body::text LIKE '%single b%' GROUP BY status}),
	'ok:201', 'all 201 calls logged ok, none failed');

# (a') rate: 600 requests per minute (10 a second), no latency; A queues 80
# calls (8 s of tokens); B's single call takes the next token, not the 81st
# (without ordering the due calls by load, B waited from 0.08 s to 3 s, by luck)
$node->safe_psql('postgres', q{SELECT llm.alter_provider('mock', options => '{"requests_per_minute": 600}')});
$mock->reset;
$mock->post('/_mock/config', { latency_ms => 0 });
$sa = $node->background_psql('postgres');
$sa->query_safe(q{CREATE TEMP TABLE ha AS
  SELECT i, llm_submit('m', } . hist(q{'rate a ' || i}) . q{) AS h FROM generate_series(1, 80) i});
$node->poll_query_until('postgres', q{SELECT queued >= 60 FROM llm.provider_load WHERE provider = 'mock'})
  or die 'A\'s calls were never queued';
$took = timed_call('rate b');
cmp_ok($took, '<', 0.6, "B's single call took $took s behind A's 80 calls queued for tokens at 10/s");
is($sa->query_safe(q{SELECT count(*) FROM ha WHERE llm_await(h)->'content'->0->>'text' = 'mock reply to: rate a ' || i}),
	'80', 'A got all 80 answers');
$sa->quit;
is($node->safe_psql('postgres', q{SELECT status || ':' || count(*) FROM llm.requests
  WHERE request_body::text LIKE '%rate a %' OR request_body::text LIKE '%rate b%' GROUP BY status}),
	'ok:81', 'all 81 logged ok, none failed');

# (b) channel slots: llm.max_inflight = 16
$node->safe_psql('postgres', q{SELECT llm.alter_provider('mock', options => '{}')});
$node->append_conf('postgresql.conf', "llm.max_inflight = 16\n");
$node->restart;
$node->safe_psql('postgres', q{SELECT llm_complete('m', 'warm up again')});
$mock->reset;

# eight sessions hold one slot each and wait for a second; D holds the
# other eight; then C, holding none, waits for one.  The first slot D frees
# must go to C, whoever else wakes first: the eight are at a higher level
# (without the levels C won about one time in nine).
my @holders;
for my $k (1 .. 8)
{
	my $h = $node->background_psql('postgres', on_error_stop => 0);
	$h->query_safe(q{SELECT llm_submit('m', } . hist(qq{'held $k [[mock:latency=60000]]'}) . q{)});
	push @holders, $h;
}
my $d = $node->background_psql('postgres');
$d->query_safe(q{CREATE TEMP TABLE hd AS
  SELECT i, llm_submit('m', } . hist(q{'d ' || i || ' [[mock:latency=60000]]'}) . q{) AS h FROM generate_series(1, 8) i});
is($node->safe_psql('postgres', q{SELECT slots_in_use FROM llm.gateway_status()}), '16', 'all 16 slots are taken');
for my $k (1 .. 8)
{
	$holders[$k - 1]->query_until(qr/second $k/, qq{\\echo second $k\nSELECT 'second', llm_submit('m', }
		  . hist(qq{'second $k'}) . q{) IS NOT NULL;} . "\n");
}
$node->poll_query_until('postgres', q{SELECT count(*) = 8 FROM pg_stat_activity
  WHERE wait_event_type = 'Extension' AND query LIKE '%''second%'})
  or die 'the holders are not waiting for a slot';
my $c = $node->background_psql('postgres');
$c->query_until(qr/single c/, qq{\\echo single c\nSELECT llm_complete('m', 'single c');\n});
$node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM pg_stat_activity
  WHERE wait_event_type = 'Extension' AND query LIKE '%single c%'})
  or die 'C is not waiting for a slot';

$d->query_safe(q{SELECT llm_cancel(h) FROM hd WHERE i = 1});
my $seen = 0;
my $t0 = time;
while (time - $t0 < 3)
{
	if (grep { JSON::PP->new->canonical->encode($_->{body} // {}) =~ /single c/ } @{ $mock->get('/_mock/requests')->{requests} })
	{
		$seen = 1;
		last;
	}
	usleep(20_000);
}
ok($seen, 'the one slot D freed went to C, which held no call, not to the eight holders waiting before it');
ok($node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM llm.requests WHERE request_body::text LIKE '%single c%' AND status = 'ok'}),
	'C was answered') if $seen;

# the holders wait, never fail: the rest of D's slots let them all submit
$d->query_safe(q{SELECT count(*) FROM (SELECT llm_cancel(h) FROM hd WHERE i > 1) s});
$node->poll_query_until('postgres', q{SELECT count(*) = 8 FROM llm.requests WHERE request_body::text LIKE '%second %' AND status = 'ok'})
  or die 'the holders\' second calls were not all answered';
for my $h (@holders)
{
	$h->quit;
}
$d->quit;
$c->quit;

# two pipelines of 100 calls, 8 in flight each (all 16 slots), and a third
# session's single calls: each answered within about one call's latency
$mock->reset;
my @pipes;
for my $p ('p', 'q')
{
	my $s = $node->background_psql('postgres');
	$s->query_until(qr/go $p/, qq{\\echo go $p\n} . q{DO $$
DECLARE
  hs bigint[] := '{}';
  h bigint;
  n int := 0;
BEGIN
  FOR i IN 1 .. 100 LOOP
    IF cardinality(hs) >= 8 THEN
      IF llm_await(hs[1])->'content'->0->>'text' LIKE 'mock reply to: } . $p . q{ %' THEN n := n + 1; END IF;
      hs := hs[2:];
    END IF;
    hs := hs || llm_submit('m', } . hist(qq{'$p ' || i}) . q{);
  END LOOP;
  FOREACH h IN ARRAY hs LOOP
    IF llm_await(h)->'content'->0->>'text' LIKE 'mock reply to: } . $p . q{ %' THEN n := n + 1; END IF;
  END LOOP;
  RAISE NOTICE 'pipe done %', n;
END $$;
} . "\\echo pipe finished\n");
	push @pipes, $s;
}
$node->poll_query_until('postgres', q{SELECT slots_in_use >= 14 FROM llm.gateway_status()})
  or die 'the pipelines did not fill the slots';
my @single;
push @single, timed_call("single $_") for 1 .. 3;
my $worst = (sort { $b <=> $a } @single)[0];
cmp_ok($worst, '<', 0.5, "beside two pipelines holding every slot, single calls took at most $worst s (mock latency 0.2 s)");
for my $s (@pipes)
{
	$s->query_until(qr/pipe finished/, '');
	like($s->{stderr}, qr/pipe done 100/, 'a pipeline got all 100 answers');
	$s->quit;
}
is($node->safe_psql('postgres', q{SELECT status || ':' || count(*) FROM llm.requests
  WHERE request_body::text ~ '"[pq] \d+"' GROUP BY status}),
	'ok:200', 'all 200 pipeline calls logged ok, none failed');

# a real pipeline asking for more calls than llm.max_inflight (16) waits
# for slots, never fails: 64 wanted, at most 16 in flight, every row answered
$mock->reset;
$mock->post('/_mock/config', { latency_ms => 100 });
my ($ret, $out, $err) = $node->psql('postgres', q{SET llm.statement_concurrency = 64;
SELECT count(*) FILTER (WHERE a = 'mock reply to: row ' || i) FROM (SELECT i, llm_complete('m', 'row ' || i) AS a FROM generate_series(1, 80) i) s});
is($err, '', 'a pipeline wider than llm.max_inflight raises nothing');
is($out, '80', 'and answers every row');
is($mock->get('/_mock/stats')->{max_in_flight}, 16, 'with at most llm.max_inflight calls in flight');

$node->stop;
$mock->stop;
done_testing();
