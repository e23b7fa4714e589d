# Statement progress: llm.statement_progress shows what a running
# statement's calls have done (one row per backend, filtered by role), and
# llm.progress_notice sends the same figures as NOTICEs.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use LlmGatewayTest;

my $mock = start_mock();
my $node = gateway_node('progress', $mock, 'anthropic');

# alice and bob call models; carol administers; prices make a cost
$node->safe_psql('postgres', q{
CREATE ROLE alice LOGIN IN ROLE llm_user;
CREATE ROLE bob LOGIN IN ROLE llm_user;
CREATE ROLE carol LOGIN IN ROLE llm_admin;
UPDATE llm.routes SET options = '{"price_input": 1, "price_output": 2}' WHERE alias = 'm';
});
is($node->safe_psql('postgres', q{SELECT llm_complete('m', 'warm up')}), 'mock reply to: warm up', 'warm-up call');

sub as_role
{
	my ($role, $sql) = @_;
	return $node->safe_psql('postgres', $sql, extra_params => [ '-U', $role ]);
}

# the figures of the statement of backend $pid, as one line
my $cols = q{calls_submitted, calls_answered, calls_failed, calls_cancelled, calls_in_flight, calls_queued};

# A serial statement of 20 calls of 200 ms (a PL/pgSQL loop: one call at a
# time), the 3rd failing with on_error = null; at its end it waits for
# advisory lock 1, which the test holds, so its final figures can be read.
my $gate = $node->background_psql('postgres');
$gate->query_safe('SELECT pg_advisory_lock(1)');
my $alice = $node->background_psql('postgres', extra_params => [ '-U', 'alice' ]);
my $alice_pid = $alice->query_safe('SELECT pg_backend_pid()');
$alice->query_until(qr/started/, q{\echo started
DO $$
BEGIN
    FOR i IN 1..20 LOOP
        PERFORM llm_complete('m', 'row ' || i || CASE WHEN i = 3 THEN ' [[mock:status=400]]' ELSE ' [[mock:latency=200]]' END,
                             '{"on_error": "null"}');
    END LOOP;
    PERFORM pg_advisory_xact_lock(1);
END
$$;
});

# while it runs: one call in flight, the rest answered or failed
$node->poll_query_until('postgres',
	qq{SELECT calls_answered >= 4 FROM llm.statement_progress WHERE pid = $alice_pid})
  or die 'alice\'s statement never showed progress';
my $row = $node->safe_psql('postgres', qq{
SELECT role, calls_in_flight, calls_submitted = calls_answered + calls_failed + 1, calls_failed,
       calls_cancelled, calls_queued, rows_expected IS NULL,
       input_tokens = 2 * calls_answered, output_tokens = 5 * calls_answered,
       cost_usd = calls_answered * 0.000012, calls_per_second > 0,
       query_start = (SELECT query_start FROM pg_stat_activity WHERE pid = $alice_pid)
  FROM llm.statement_progress WHERE pid = $alice_pid});
is($row, 'alice|1|t|1|0|0|t|t|t|t|t|t',
	'a serial statement: its role, one call in flight, one failed, tokens and cost of the answered calls, its query_start');

# role visibility: bob sees nothing of alice's; alice and llm_admin do
is(as_role('bob', q{SELECT count(*) FROM llm.statement_progress}), '0', 'another llm_user sees nothing of it');
is(as_role('alice', qq{SELECT count(*) FROM llm.statement_progress WHERE pid = $alice_pid}), '1',
	'alice sees her own statement from another session');
is(as_role('carol', qq{SELECT role FROM llm.statement_progress WHERE pid = $alice_pid}), 'alice',
	'llm_admin sees every statement');
my ($ret, $out, $err) = $node->psql('postgres', q{SELECT * FROM llm._statement_progress()},
	extra_params => [ '-U', 'alice' ]);
is($ret, 0, 'llm_user may call the function behind the view');

# once its calls are done (the statement still runs, waiting for the lock)
$node->poll_query_until('postgres',
	qq{SELECT calls_submitted = 20 AND calls_in_flight = 0 FROM llm.statement_progress WHERE pid = $alice_pid})
  or die 'alice\'s calls never finished';
is($node->safe_psql('postgres', qq{SELECT $cols, input_tokens, output_tokens, cost_usd
  FROM llm.statement_progress WHERE pid = $alice_pid}),
	'20|19|1|0|0|0|38|95|0.000228', 'its final figures: 20 submitted, 19 answered, 1 failed; 19 answers\' tokens and cost');
$gate->query_safe('SELECT pg_advisory_unlock(1)');
$alice->query_safe('SELECT 1');
is($node->safe_psql('postgres', qq{SELECT count(*) FROM llm.statement_progress WHERE pid = $alice_pid}), '0',
	'a finished statement leaves the view');
# the session's next statement without calls does not show the old figures
is($node->safe_psql('postgres', q{SELECT count(*) FROM llm.statement_progress}), '0', 'nothing else is shown');

# llm_submit fan-out through a provider that allows one call at a time:
# five calls in flight, four of them queued by the worker; one cancelled
$node->safe_psql('postgres', q{SELECT llm.alter_provider('mock', options => '{"max_concurrency": 1}')});
$gate->query_safe('SELECT pg_advisory_lock(1)');
$alice->query_until(qr/started/, q{\echo started
DO $$
DECLARE
    h bigint[];
BEGIN
    FOR i IN 1..6 LOOP
        h := h || llm_submit('m', jsonb_build_array(jsonb_build_object('role', 'user',
                                 'content', 'fan ' || i || ' [[mock:latency=700]]')));
    END LOOP;
    PERFORM llm_cancel(h[6]);
    FOR i IN 1..5 LOOP
        PERFORM llm_await(h[i]);
    END LOOP;
    PERFORM pg_advisory_xact_lock(1);
END
$$;
});
ok($node->poll_query_until('postgres',
	qq{SELECT calls_submitted = 6 AND calls_cancelled = 1 AND calls_in_flight = 5 AND calls_queued = 4
	     FROM llm.statement_progress WHERE pid = $alice_pid}),
	'llm_submit fan-out: 6 submitted, 1 cancelled, 5 in flight, 4 of them queued for the provider\'s max_concurrency');
$node->poll_query_until('postgres',
	qq{SELECT calls_in_flight = 0 FROM llm.statement_progress WHERE pid = $alice_pid})
  or die 'the fan-out never finished';
is($node->safe_psql('postgres', qq{SELECT $cols FROM llm.statement_progress WHERE pid = $alice_pid}),
	'6|5|0|1|0|0', 'and at its end: 5 answered, 1 cancelled, none queued');
$gate->query_safe('SELECT pg_advisory_unlock(1)');
$alice->query_safe('SELECT 1');
$node->safe_psql('postgres', q{SELECT llm.alter_provider('mock', options => '{}')});

# llm.progress_notice: 5 serial calls of 400 ms with a NOTICE every 500 ms
($ret, $out, $err) = $node->psql('postgres', q{
SET llm.progress_notice = '500ms';
DO $$
BEGIN
    FOR i IN 1..5 LOOP
        PERFORM llm_complete('m', 'noticed ' || i || ' [[mock:latency=400]]');
    END LOOP;
END
$$;
}, extra_params => [ '-U', 'alice' ]);
is($ret, 0, 'the statement succeeds');
my @notices = $err =~ /NOTICE:  llm_gateway statement progress: (\d+) calls submitted, (\d+) answered, 0 failed, 0 cancelled, (\d+) in flight, 0 queued for provider limits; (\d+) input tokens, (\d+) output tokens, cost ([\d.]+) USD; [\d.]+ calls\/s$/mg;
my $n = @notices / 6;
cmp_ok($n, '>=', 3, "the 2 s statement sent NOTICEs every 500 ms ($n)") or diag($err);
my $consistent = 1;
for my $k (0 .. $n - 1)
{
	my ($sub, $ans, $fly, $in, $outt) = @notices[ 6 * $k .. 6 * $k + 4 ];
	$consistent = 0 unless $fly == 1 && $sub == $ans + 1 && $in == 2 * $ans && $outt == 5 * $ans;
}
ok($consistent, 'each NOTICE: one call in flight, the others answered, their tokens');
unlike($err, qr/WARNING|ERROR/, 'nothing else was reported');

# off by default
($ret, $out, $err) = $node->psql('postgres',
	q{SELECT llm_complete('m', 'quiet [[mock:latency=600]]')});
is($err, '', 'no NOTICE without llm.progress_notice');

$alice->quit;
$gate->quit;
$node->stop;
$mock->stop;
done_testing();
