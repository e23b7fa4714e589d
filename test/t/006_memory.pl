# No per-call memory growth: after a warm-up, thousands more calls leave
# the worker's private memory and the calling backend's memory contexts
# where they were (success and error paths both).
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use LlmGatewayTest;

my $mock = start_mock();
# quick retries, so the retry path runs thousands of times too
my $node = gateway_node('memory', $mock, 'anthropic', "llm.retry_base_ms = 1\n");

my $worker = $node->safe_psql('postgres', 'SELECT worker_pid FROM llm.gateway_status()');

# private (anonymous) memory of a process, in kB; shared memory is not counted
sub rss_anon
{
	my ($pid) = @_;
	open(my $fh, '<', "/proc/$pid/status") or die "no /proc/$pid/status";
	while (<$fh>) { return $1 if /^RssAnon:\s+(\d+) kB/; }
	die 'no RssAnon';
}

# calls from one session, measuring that session's memory contexts too
my $session = $node->background_psql('postgres');
my $calls = q{
DO $$
BEGIN
    FOR i IN 1..%d LOOP
        PERFORM llm_messages('m', '[{"role": "user", "content": "memory check"}]',
                             '{"tools": [{"name": "f", "input_schema": {"type": "object"}}], "tags": {"n": 1}}');
        BEGIN
            PERFORM llm_complete('m', 'failing [[mock:status=500]]');
        EXCEPTION WHEN OTHERS THEN NULL;
        END;
    END LOOP;
END $$;
SELECT sum(total_bytes) FROM pg_backend_memory_contexts;
};
$session->query_safe(sprintf($calls, 500));
my $backend_before = $session->query_safe(sprintf($calls, 1));
my $worker_before = rss_anon($worker);

$session->query_safe(sprintf($calls, 2500));
my $backend_after = $session->query_safe(sprintf($calls, 1));
my $worker_after = rss_anon($worker);

note "backend contexts: $backend_before -> $backend_after bytes; worker RssAnon: $worker_before -> $worker_after kB";
cmp_ok($backend_after - $backend_before, '<', 64 * 1024,
	'backend memory flat over 5,000 more calls');
cmp_ok($worker_after - $worker_before, '<', 1024, 'worker private memory flat over 5,000 more calls');
is($node->safe_psql('postgres', q{SELECT count(*) FROM llm.requests}), '6004', 'every call logged');
$session->quit;

$node->stop;
$mock->stop;
done_testing();
