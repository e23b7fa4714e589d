# Provider limits are enforced by queueing in the worker, never by failing
# calls: max_concurrency caps what the provider sees in flight, and
# requests_per_minute spaces calls out (token bucket).
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use LlmGatewayTest;

my $mock = start_mock('--latency-ms', '100');
my $node = gateway_node('limits', $mock, 'anthropic', "max_connections = 60\n");

# concurrency: 20 sessions x 5 calls, provider allows 3 at once
$node->safe_psql('postgres', q{SELECT llm.alter_provider('mock', options => '{"max_concurrency": 3}')});
$mock->reset;
$node->pgbench(
	'--no-vacuum --client=20 --jobs=4 --transactions=5',
	0,
	[qr{processed: 100/100}],
	[qr{^$}],
	'100 calls through a provider limited to 3 at once, no errors',
	{ '008_conc' => q{SELECT llm_complete('m', 'limited ' || :client_id);} });
my $stats = $mock->get('/_mock/stats');
is($stats->{max_in_flight}, 3, 'the provider never saw more than 3 calls at once');
is($stats->{requests}, 100, 'and received every call');
is($node->safe_psql('postgres', q{SELECT in_flight || '/' || queued FROM llm.provider_load WHERE provider = 'mock'}),
	'0/0', 'nothing left in flight or queued');
# (throttled is counted while the provider is busy: see 014)
is($node->safe_psql('postgres', q{SELECT count(*) FROM llm._provider_load()}), '0',
	'the idle provider\'s entry is freed');

# rate: 1,200 requests per minute = 20 per second, burst 20
$node->safe_psql('postgres', q{SELECT llm.alter_provider('mock', options => '{"requests_per_minute": 1200}')});
$mock->post('/_mock/config', { latency_ms => 0 });
$mock->reset;
$mock->post('/_mock/config', { latency_ms => 0 });
my $t0 = time;
$node->pgbench(
	'--no-vacuum --client=6 --jobs=2 --transactions=10',
	0,
	[qr{processed: 60/60}],
	[qr{^$}],
	'60 calls under a 1,200/min limit, no errors',
	{ '008_rate' => q{SELECT llm_complete('m', 'rate ' || :client_id);} });
my $took = time - $t0;
cmp_ok($took, '>=', 1.8, "60 calls at 20/s after a burst of 20 take at least 2 s (took $took s)");
is($mock->get('/_mock/stats')->{requests}, 60, 'every call reached the provider');

# a call that cannot get a slot before its deadline times out instead of failing early
$node->safe_psql('postgres', q{SELECT llm.alter_provider('mock', options => '{"requests_per_minute": 1}')});
$node->safe_psql('postgres', q{SELECT llm_complete('m', 'uses the only token')});
my ($ret, $out, $err) = $node->psql('postgres',
	q{SELECT llm_complete('m', 'no token left', '{"timeout_ms": 500}')});
like($err, qr/timed out after 500 ms before it could be sent/, 'a throttled call ends at its deadline');
# the same for a call waiting for a concurrency slot: it ends at its own
# deadline, not when the slot frees
$node->safe_psql('postgres', q{SELECT llm.alter_provider('mock', options => '{"max_concurrency": 1}')});
my $holder = $node->background_psql('postgres');
$holder->query_until(qr/started/, q{\echo started
SELECT llm_complete('m', 'holds the slot [[mock:latency=2500]]');
});
$node->poll_query_until('postgres', q{SELECT in_flight = 1 FROM llm.provider_load WHERE provider = 'mock'})
  or die 'slot holder never started';
$t0 = time;
($ret, $out, $err) = $node->psql('postgres',
	q{SELECT llm_complete('m', 'waits for the slot', '{"timeout_ms": 400}')});
my $waited = time - $t0;
like($err, qr/timed out after 400 ms before it could be sent/, 'a call queued for a slot times out');
cmp_ok($waited, '<', 1.5, "at its deadline, not when the slot frees ($waited s)");
$holder->quit;
$node->safe_psql('postgres', q{SELECT llm.alter_provider('mock', options => '{}')});
is($node->safe_psql('postgres', q{SELECT llm_complete('m', 'unlimited again')}), 'mock reply to: unlimited again',
	'removing the limit applies at once');

$node->stop;
$mock->stop;
done_testing();
