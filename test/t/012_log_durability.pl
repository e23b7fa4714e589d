# The request log's durability without a WAL flush on the call path: the
# log flusher takes a call's pending row to disk while the provider holds
# the request (the WAL writer is slowed to 10 s here, so it is not the one
# doing it); llm.durable_before_send = on flushes before the request is
# sent; a killed flusher comes back and calls meanwhile stay durable.  And
# the polling that saves wake-ups stops when there is nothing to do.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use LlmGatewayTest;

my $mock = start_mock();
my $node = gateway_node('log_durability', $mock, 'anthropic', "wal_writer_delay = '10s'\n");
# no dead catalog tuples left for a query below to prune: that WAL would
# lie past the row's commit, and only the WAL writer would flush it
$node->safe_psql('postgres', 'VACUUM');

# Start a call that hangs at the provider; return once the provider holds
# the request, with the WAL insert position seen then (past the row's commit).
sub hang_call
{
	my ($label, $timeout_ms) = @_;
	my $before = $mock->get('/_mock/stats')->{requests};
	my $bg = $node->background_psql('postgres', on_error_stop => 0);
	$bg->query_until(qr/started/, qq{\\echo started
SELECT llm_complete('m', '$label [[mock:hang]]', '{"timeout_ms": $timeout_ms}');
});
	my $deadline = time + 30;
	while ($mock->get('/_mock/stats')->{requests} <= $before)
	{
		die 'the provider never received the call' if time > $deadline;
		usleep(10_000);
	}
	my $lsn = $node->safe_psql('postgres', 'SELECT pg_current_wal_insert_lsn()');
	return ($bg, $lsn);
}

sub flushed_past
{
	my ($lsn) = @_;
	return $node->safe_psql('postgres', "SELECT pg_current_wal_flush_lsn() >= '$lsn'::pg_lsn") eq 't';
}

# default: committed before the send, flushed by the flusher moments later
my ($bg, $lsn) = hang_call('flusher', 30000);
is($node->safe_psql('postgres', q{SELECT status FROM llm.requests WHERE request_body::text LIKE '%flusher [[%'}),
	'pending', 'the pending row is committed while the provider holds the request');
my $t0 = time;
ok($node->poll_query_until('postgres', "SELECT pg_current_wal_flush_lsn() >= '$lsn'::pg_lsn"),
	'the log flusher took the row to disk');
my $took = time - $t0;
cmp_ok($took, '<', 3, "well before the WAL writer would have ($took s; wal_writer_delay is 10 s)");

# a crash now keeps the row: the next worker marks it unknown
crash_marks_unknown($node, $bg, '%flusher [[%')
  or die 'pending row lost or not marked unknown after the crash';
ok(1, 'after a crash the row is there, marked unknown');

# strict order: the row is on disk before the provider sees the request
$node->safe_psql('postgres', 'ALTER SYSTEM SET llm.durable_before_send = on');
$node->reload;
$node->poll_query_until('postgres', q{SELECT llm_complete('m', 'strict warm-up') IS NOT NULL})
  or die 'calls fail after the reload';
($bg, $lsn) = hang_call('strict', 2000);
ok(flushed_past($lsn), 'with llm.durable_before_send the row is flushed before the provider gets the request');
$bg->quit;
$node->safe_psql('postgres', 'ALTER SYSTEM RESET llm.durable_before_send');
$node->reload;

# a flusher that goes away comes back; meanwhile the worker flushes itself
my $flusher = $node->safe_psql('postgres', 'SELECT flusher_pid FROM llm.gateway_status()');
ok($flusher > 0, "the log flusher runs (pid $flusher)");
kill 'TERM', $flusher;
is($node->safe_psql('postgres', q{SELECT llm_complete('m', 'no flusher')}), 'mock reply to: no flusher',
	'calls work while the flusher restarts');
$node->poll_query_until('postgres',
	"SELECT flusher_pid IS NOT NULL AND flusher_pid <> $flusher FROM llm.gateway_status()")
  or die 'the flusher did not come back';
ok(1, 'the flusher restarted');
is($node->safe_psql('postgres', q{SELECT count(*) FROM llm.requests WHERE status = 'pending'}),
	'0', 'no row left pending');

# polling ends with the work: an idle worker and flusher use no CPU
$node->safe_psql('postgres', q{SELECT llm_complete('m', 'before idle')});
my $worker = $node->safe_psql('postgres', 'SELECT worker_pid FROM llm.gateway_status()');
sub cpu_ticks
{
	my ($pid) = @_;
	open(my $fh, '<', "/proc/$pid/stat") or die "/proc/$pid/stat: $!";
	my @f = split ' ', scalar <$fh>;
	close $fh;
	return $f[13] + $f[14];
}
# the sleep is the measurement: two idle seconds
my $w0 = cpu_ticks($worker);
sleep 2;
my $used = cpu_ticks($worker) - $w0;
cmp_ok($used, '<=', 5, "the idle worker used $used clock ticks in 2 s");

$node->stop;
$mock->stop;
done_testing();
