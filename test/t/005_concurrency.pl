# Many sessions at once: every call answered, one log row each, the
# provider saw them concurrently, and calls from another database are refused.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use LlmGatewayTest;

my $mock = start_mock('--latency-ms', '100');
my $node = gateway_node('concurrency', $mock, 'anthropic', "max_connections = 100\nllm.max_inflight = 16\n");

# 40 clients x 10 calls, through only 16 slots: callers wait for a slot
$node->pgbench(
	'--no-vacuum --client=40 --jobs=4 --transactions=10',
	0,
	[qr{processed: 400/400}],
	[qr{^$}],
	'400 calls from 40 sessions, no errors',
	{ '005_calls' => q{SELECT llm_complete('m', 'concurrent call ' || :client_id);} });

is($node->safe_psql('postgres', q{SELECT count(*) FROM llm.requests WHERE status = 'ok'}), '400',
	'one ok log row per call');
is($node->safe_psql('postgres', q{SELECT count(*) FROM llm.requests WHERE status <> 'ok'}), '0',
	'no other rows');
my $stats = $mock->get('/_mock/stats');
cmp_ok($stats->{max_in_flight}, '>=', 10, "provider saw calls in parallel (max in flight $stats->{max_in_flight})");
cmp_ok($stats->{max_in_flight}, '<=', 16, 'never more than llm.max_inflight');
cmp_ok($stats->{connections_total}, '<=', 40, "connections are reused ($stats->{connections_total} for 400 calls)");
cmp_ok($node->safe_psql('postgres', 'SELECT waited_for_slot FROM llm.gateway_status()'), '>', 0,
	'callers waited for a free slot instead of failing');

# another database
$node->safe_psql('postgres', 'CREATE DATABASE other');
$node->safe_psql('other', 'CREATE EXTENSION llm_gateway');
my ($ret, $out, $err) = $node->psql('other', q{SELECT llm_complete('m', 'hi')});
like($err, qr/llm_gateway serves calls only from database "postgres"/, 'a call from another database is refused');
like($err, qr/llm\.database/, 'and the hint names the setting');

$node->stop;
$mock->stop;
done_testing();
