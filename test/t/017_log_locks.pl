# The worker never waits unboundedly on a lock held on llm.requests, and
# one refused row fails only its own call:
# - a session holding ACCESS EXCLUSIVE on the log for 3 s: calls made
#   meanwhile complete once it is released, every row complete;
# - a session that locks the log and then calls in the same transaction
#   (a deadlock the detector cannot see: the worker waits for the session,
#   the session for the worker) gets a clear 55000 at its call's deadline;
# - an administrator's row lock on one pending row: the other calls go on,
#   its own caller gets its answer after 2 s, and the row is completed (over
#   the administrator's change) once released;
# - calls queued behind a lock and written in one batch where an added
#   CHECK refuses two rows: those two fail with 55000, the others are sent.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use IPC::Run;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(time usleep);
use LlmGatewayTest;

my $mock = start_mock();
my $node = gateway_node('log_locks', $mock, 'anthropic');

is($node->safe_psql('postgres', q{SELECT llm_complete('m', 'warm up')}), 'mock reply to: warm up', 'warm-up call');

# a call in its own psql, in the background: ->finish gives (rc, stdout, stderr)
sub start_call
{
	my ($sql) = @_;
	my %c = (out => '', err => '');
	$c{h} = IPC::Run::start(
		[ 'psql', '-XAtq', '-v', 'ON_ERROR_STOP=1', '-d', $node->connstr('postgres'), '-c', $sql ],
		'>', \$c{out}, '2>', \$c{err});
	return \%c;
}

sub finish_call
{
	my ($c) = @_;
	$c->{h}->finish;
	chomp(my $out = $c->{out});
	return ($c->{h}->result(0), $out, $c->{err});
}

sub held_lock_session
{
	my ($sql) = @_;
	my $bg = $node->background_psql('postgres', on_error_stop => 0);
	$bg->query_safe("BEGIN; $sql");
	return $bg;
}

# 1. ACCESS EXCLUSIVE for 3 s
my $lock = held_lock_session('LOCK TABLE llm.requests IN ACCESS EXCLUSIVE MODE');
my $t0 = time;
my @calls = map { start_call(qq{SELECT llm_complete('m', 'during the lock $_')}) } 1 .. 4;
usleep(3_000_000);
$lock->query_safe('COMMIT');
my $released = time;
my $all_ok = 1;
for my $i (1 .. 4)
{
	my ($rc, $out) = finish_call($calls[ $i - 1 ]);
	$all_ok = 0 unless $rc == 0 && $out eq "mock reply to: during the lock $i";
}
my $took = time - $released;
ok($all_ok, 'calls made while the log was locked complete once it is released');
cmp_ok($took, '<', 3, "promptly after the release ($took s)");
ok( $node->poll_query_until(
		'postgres', q{SELECT count(*) = 4 AND bool_and(status = 'ok') FROM llm.requests
		              WHERE request_body::text LIKE '%during the lock%'}),
	'and their rows are complete');

# 2. a session that locks the log, then calls: its call fails at its deadline
$lock = held_lock_session('LOCK TABLE llm.requests IN SHARE MODE');
$t0 = time;
my $res = $lock->query(q{SELECT llm_complete('m', 'self-deadlock', '{"timeout_ms": 2500}')});
$took = time - $t0;
like(
	$lock->{stderr},
	qr/could not write the audit row of the call: canceling statement due to lock timeout/,
	'a call that cannot have its row written fails with the reason');
cmp_ok($took, '<', 6, "at its deadline ($took s, timeout_ms 2500)");
$lock->query('ROLLBACK');
$lock->quit;
is($node->safe_psql('postgres', q{SELECT llm_complete('m', 'after the self-deadlock')}),
	'mock reply to: after the self-deadlock', 'the worker goes on');

# 3. an administrator's row lock on one pending row
my $slow = start_call(q{SELECT llm_complete('m', 'locked row [[mock:latency=1500]]')});
$node->poll_query_until('postgres',
	q{SELECT count(*) = 1 FROM llm.requests WHERE status = 'pending' AND request_body::text LIKE '%locked row%'})
  or die 'the slow call never became pending';
my $admin = held_lock_session(
	q{UPDATE llm.requests SET tags = '{"admin": true}' WHERE request_body::text LIKE '%locked row%'});
# the slow call finishes at the provider (1.5 s) while the row stays locked
my $until = time + 10;
usleep(50_000) while $mock->get('/_mock/stats')->{in_flight} > 0 && time < $until;
my $worst = 0;
for my $i (1 .. 5)
{
	my $s = time;
	$node->safe_psql('postgres', qq{SELECT llm_complete('m', 'beside the lock $i')});
	$worst = time - $s if time - $s > $worst;
}
cmp_ok($worst, '<', 0.5, "other calls are not held up by the locked row (slowest $worst s)");
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM llm.requests WHERE status = 'ok' AND request_body::text LIKE '%beside the lock%'}),
	'5', 'and their rows are complete');
# the caller of the locked row waits for it at most 2 s, then gets its answer
my $answered = 0;
for (1 .. 100)
{
	$slow->{h}->pump_nb;
	if (!$slow->{h}->pumpable) { $answered = 1; last; }
	usleep(50_000);
}
ok($answered, 'the caller of the locked row got its answer while the lock was still held');
is($node->safe_psql('postgres',
		q{SELECT status FROM llm.requests WHERE request_body::text LIKE '%locked row%'}),
	'pending', 'its row waits for the lock');
$admin->query_safe('COMMIT');
$admin->quit;
ok( $node->poll_query_until(
		'postgres', q{SELECT status = 'ok' AND tags = '{"admin": true}' FROM llm.requests
		              WHERE request_body::text LIKE '%locked row%'}),
	'the locked row is completed once released, keeping the administrator\'s change');
my ($rc, $out) = finish_call($slow);
is($out, 'mock reply to: locked row', 'the slow call got its answer');

# 4. one batch, two rows refused by an added CHECK
$node->safe_psql('postgres',
	q{ALTER TABLE llm.requests ADD CONSTRAINT no_refusals CHECK (request_body::text NOT LIKE '%refuse me%') NOT VALID});
$mock->reset;
$lock = held_lock_session('LOCK TABLE llm.requests IN SHARE MODE');
my %batch = map { $_ => start_call(qq{SELECT llm_complete('m', '$_')}) } ('fine 1', 'refuse me 1', 'fine 2', 'refuse me 2');
usleep(1_500_000);
is($mock->get('/_mock/stats')->{requests}, 0, 'no call is sent before its row is written');
my $log_offset = -s $node->logfile;
$lock->query_safe('COMMIT');
$lock->quit;
for my $p ('fine 1', 'fine 2')
{
	my ($rc, $out) = finish_call($batch{$p});
	is($out, "mock reply to: $p", "\"$p\" is sent and answered");
}
for my $p ('refuse me 1', 'refuse me 2')
{
	my ($rc, $out, $err) = finish_call($batch{$p});
	like(
		$err,
		qr/could not write the audit row of the call: new row for relation "requests" violates check constraint "no_refusals"/,
		"\"$p\" fails with the reason");
}
is($mock->get('/_mock/stats')->{requests}, 2, 'only the two written calls reached the provider');
like(slurp_file($node->logfile, $log_offset), qr/writing its rows one by one/,
	'the four were one batch, redone row by row');
is( $node->safe_psql('postgres',
		q{SELECT count(*) FROM llm.requests WHERE request_body::text LIKE '%refuse me%'}),
	'0', 'the refused calls have no row');
$node->safe_psql('postgres', q{ALTER TABLE llm.requests DROP CONSTRAINT no_refusals});

is($node->safe_psql('postgres', q{SELECT count(*) FROM llm.requests WHERE status = 'pending'}),
	'0', 'no row left pending');

$node->stop;
$mock->stop;
done_testing();
