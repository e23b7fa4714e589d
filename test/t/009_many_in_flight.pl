# Hundreds of calls in flight at once through the one worker: 300 sessions
# each waiting on a provider that takes 500 ms.  If the worker served them
# one by one this would take minutes; concurrently it takes about a second.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time);
use LlmGatewayTest;

my $clients = 300;
my $mock = start_mock('--latency-ms', '500');
my $node = gateway_node('many', $mock, 'openai', "max_connections = 320\nllm.max_connections = 1000\n");

my $t0 = time;
$node->pgbench(
	"--no-vacuum --client=$clients --jobs=8 --transactions=2",
	0,
	[qr{processed: 600/600}],
	[qr{^$}],
	"600 calls from $clients sessions, no errors",
	{ '009_many' => q{SELECT llm_complete('m', 'in flight ' || :client_id);} });
my $took = time - $t0;
my $stats = $mock->get('/_mock/stats');
cmp_ok($stats->{max_in_flight}, '>=', 290, "the provider saw $stats->{max_in_flight} calls in flight at once");
cmp_ok($took, '<', 30, "600 calls of 500 ms each took $took s");
is($node->safe_psql('postgres', q{SELECT count(*) FROM llm.requests WHERE status = 'ok'}), '600',
	'every call answered and logged');

$node->stop;
$mock->stop;
done_testing();
