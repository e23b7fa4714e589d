# Worker death is an error, not a hang: the waiting backend fails within a
# second, the worker comes back, and rows it left pending become "unknown".
# A server restart with calls pending does the same.
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
my $node = gateway_node('worker_death', $mock, 'openai');
is($node->safe_psql('postgres', q{SELECT llm_complete('m', 'hello')}), 'mock reply to: hello', 'call works');

my $worker_pid = $node->safe_psql('postgres', 'SELECT worker_pid FROM llm.gateway_status()');
ok($worker_pid > 0, "worker runs (pid $worker_pid)");

# kill the worker while a call hangs at the provider
my $bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_until(qr/started/, q{\echo started
SELECT llm_complete('m', 'hang [[mock:hang]]');
\echo done
});
$node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM llm.requests WHERE status = 'pending'})
  or die 'call never became pending';
my $t0 = time;
$node->safe_psql('postgres', "SELECT pg_terminate_backend($worker_pid)");
my $out = $bg->query_until(qr/done/, '');
my $took = time - $t0;
like($bg->{stderr}, qr/the llm_gateway worker exited while serving the call/, 'the waiting call fails with a clear error');
cmp_ok($took, '<', 2, "within a second or so ($took s)");
$bg->quit;

$node->poll_query_until('postgres',
	"SELECT worker_pid IS NOT NULL AND worker_pid <> $worker_pid FROM llm.gateway_status()")
  or die 'worker did not restart';
ok(1, 'the worker restarted');
is($node->safe_psql('postgres', q{SELECT status FROM llm.requests WHERE request_body::text LIKE '%hang [[%'}),
	'unknown', 'the row it left pending is marked unknown');
is($node->safe_psql('postgres', q{SELECT llm_complete('m', 'after restart')}), 'mock reply to: after restart',
	'calls work after the restart');

# server restart (fast shutdown) while a call hangs
$bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_until(qr/started/, q{\echo started
SELECT llm_complete('m', 'across restart [[mock:hang]]');
});
$node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM llm.requests WHERE status = 'pending'})
  or die 'call never became pending';
$node->restart(mode => 'fast');
eval { $bg->quit };
ok(1, 'fast shutdown with a transfer in flight completes');
# the session's FATAL may reach the worker first (cancelled) or not (unknown);
# either way the row must not stay pending
$node->poll_query_until('postgres',
	q{SELECT status IN ('unknown', 'cancelled') FROM llm.requests WHERE request_body::text LIKE '%across restart%'})
  or die 'pending row left pending after restart';
ok(1, 'after a server restart the row is settled (cancelled or unknown)');

# immediate shutdown (crash) with a call pending: recovered, then marked
$bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_until(qr/started/, q{\echo started
SELECT llm_complete('m', 'across crash [[mock:hang]]');
});
$node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM llm.requests WHERE status = 'pending'})
  or die 'call never became pending';
crash_marks_unknown($node, $bg, '%across crash%')
  or die 'pending row not marked unknown after crash';
ok(1, 'a committed pending row survives a crash and is marked unknown');

$node->stop;
$mock->stop;
done_testing();
