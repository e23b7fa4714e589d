# The request log's durability.  By default (llm.durable_before_send = on)
# the pending row is flushed before the request is sent, also when the
# database and every role set synchronous_commit = off, and one flush
# serves every call of a worker turn.  With the opt-in
# llm.durable_before_send = off the log flusher takes the row to disk
# while the provider holds the request (the WAL writer is slowed to 10 s
# here, so it is not the one doing it); a killed flusher comes back and
# calls meanwhile stay durable.  And the polling that saves wake-ups stops
# when there is nothing to do.
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
my $node = gateway_node('log_durability', $mock, 'anthropic',
	"wal_writer_delay = '10s'\nllm.durable_before_send = off\n");
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

# durable_before_send = off: committed before the send, flushed by the flusher moments later
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

# the default, strict order: the row is on disk before the provider sees
# the request, whatever synchronous_commit the database or a role sets
$node->safe_psql('postgres', q{
	ALTER DATABASE postgres SET synchronous_commit = off;
	ALTER ROLE ALL SET synchronous_commit = off;});
$node->append_conf('postgresql.conf', "llm.durable_before_send = on\n");
$node->reload;
# a new worker connects with the database's and the roles' settings
my $old_worker = $node->safe_psql('postgres', 'SELECT worker_pid FROM llm.gateway_status()');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($old_worker)");
$node->poll_query_until('postgres',
	"SELECT worker_pid IS NOT NULL AND worker_pid <> $old_worker FROM llm.gateway_status()")
  or die 'the worker did not come back';
$node->poll_query_until('postgres', q{SELECT llm_complete('m', 'strict warm-up') IS NOT NULL})
  or die 'calls fail after the restart';
($bg, $lsn) = hang_call('strict', 2000);
ok(flushed_past($lsn),
	'llm.durable_before_send flushes the row before the provider gets the request, despite synchronous_commit = off for the database and roles');
$bg->quit;

# group commit: 16 sessions calling at once share the flushes of their rows
# (counted as WAL writes, since test clusters run with fsync = off)
my $script = $node->basedir . '/group.sql';
open(my $fh, '>', $script) or die "$script: $!";
print $fh qq{SELECT llm_complete('m', 'group [[mock:latency=30]]');\n};
close $fh;
my $syncs_before = $node->safe_psql('postgres', 'SELECT wal_write FROM pg_stat_wal');
my $calls_before = $node->safe_psql('postgres', 'SELECT count(*) FROM llm.requests');
$node->command_ok(
	[ 'pgbench', '-n', '-c', '16', '-j', '4', '-t', '20', '-f', $script, '-h', $node->host, '-p', $node->port, 'postgres' ],
	'16 sessions, 20 calls each');
# the worker reports its WAL statistics at most once a second, after a batch
usleep(1_100_000);
$node->safe_psql('postgres', q{SELECT llm_complete('m', 'report the statistics')});
usleep(200_000);
my $syncs = $node->safe_psql('postgres', 'SELECT wal_write FROM pg_stat_wal') - $syncs_before;
my $calls = $node->safe_psql('postgres', 'SELECT count(*) FROM llm.requests') - $calls_before - 1;
is($calls, 320, 'every call has its row');
# a flush per call would take at least one WAL write per call, plus the WAL
# writer's for the completions
cmp_ok($syncs, '<', $calls, "a WAL flush serves several calls ($syncs WAL writes for $calls calls)");

$node->safe_psql('postgres', q{
	ALTER DATABASE postgres RESET synchronous_commit;
	ALTER ROLE ALL RESET synchronous_commit;});
$node->append_conf('postgresql.conf', "llm.durable_before_send = off\n");
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
