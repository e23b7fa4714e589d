# The channel under faults: shared memory that runs out or cannot grow
# (53200, no slot lost), a worker that exits with large payloads in flight
# (no crash), a timeout at the top of its range, a hot standby, and an
# llm.database the worker cannot serve (a clear error at once).
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

# psql with the SQLSTATE in the error: (stderr, seconds taken)
sub call_err
{
	my ($node, $sql, $db) = @_;
	my $t0 = time;
	my ($ret, $out, $err) = $node->psql($db // 'postgres', "\\set VERBOSITY verbose\n$sql");
	return ($err, time - $t0);
}

# a background session whose call hangs at the provider with a history of BYTES
sub hanging_call
{
	my ($node, $bytes, $tag) = @_;
	my $bg = $node->background_psql('postgres', on_error_stop => 0);
	$bg->query_until(qr/started/, "\\echo started\n\\set VERBOSITY verbose\n"
		  . "SELECT length(llm_complete('m', repeat('x', $bytes) || ' $tag [[mock:hang]]'));\n\\echo done\n");
	return $bg;
}

sub wait_pending
{
	my ($node, $n) = @_;
	$node->poll_query_until('postgres', "SELECT count(*) = $n FROM llm.requests WHERE status = 'pending'")
	  or die "never $n calls pending";
}

sub slots_in_use
{
	my ($node) = @_;
	return $node->safe_psql('postgres', 'SELECT slots_in_use FROM llm.gateway_status()');
}

# ---------------------------------------------------------------------
# 1. Shared memory: 8 MB for payloads, 4 slots.
# ---------------------------------------------------------------------
my $node = gateway_node('faults', $mock, 'anthropic',
	"llm.shared_memory_mb = 8\nllm.max_inflight = 4\nwal_level = replica\nmax_wal_senders = 4\n");

# growing the area fails with an ERROR (as dsm_create does when /dev/shm is
# full), more times than there are slots: each caller gets 53200 and no
# slot is lost (a lost slot would block the last call below)
for my $i (1 .. 5)
{
	my ($err) = call_err($node, "SET llm.debug_fail_shm_alloc = 1; SELECT llm_complete('m', 'alloc $i')");
	like($err, qr/ERROR:  53200: no shared memory left for the call's request/, "request allocation ERROR $i: 53200")
	  if $i == 1 || $i == 5;
	like($err, qr/HINT:  Raise llm.shared_memory_mb/, 'with a hint') if $i == 1;
}
for my $i (1 .. 5)
{
	my ($err) = call_err($node, "SET llm.debug_fail_shm_alloc = 2; SELECT llm_complete('m', 'map $i')");
	like($err, qr/ERROR:  53200: could not map the shared memory of the provider's answer/,
		"taking the answer fails ($i): 53200") if $i == 1 || $i == 5;
}
is(slots_in_use($node), '0', 'no slot in use after ten failures');
is($node->safe_psql('postgres', q{SET statement_timeout = '10s'; SELECT llm_complete('m', 'after failures')}),
	'mock reply to: after failures', 'every slot is back: a call works');

# the worker cannot map a call's request: that call fails, unsent, the worker lives
my $worker = $node->safe_psql('postgres', 'SELECT worker_pid FROM llm.gateway_status()');
$node->safe_psql('postgres', 'ALTER SYSTEM SET llm.debug_fail_shm_alloc = 1; SELECT pg_reload_conf()');
my $take_err = '';
for my $i (1 .. 50)
{
	my ($err) = call_err($node, "SET llm.debug_fail_shm_alloc = 0; SELECT llm_complete('m', 'worker map $i')");
	if ($err =~ /ERROR/) { $take_err = $err; last; }
	usleep(100_000);		# the worker has not read the new setting yet
}
like($take_err, qr/ERROR:  53100: the gateway could not take the call: could not resize shared memory segment/,
	'the worker failing to map a request fails that call with the error\'s SQLSTATE');
is($node->safe_psql('postgres', 'SELECT worker_pid FROM llm.gateway_status()'), $worker, 'the worker did not exit');
is(slots_in_use($node), '0', 'and settled the slot');

# the worker's answer allocation fails: that call fails (53200), the worker lives
$node->safe_psql('postgres', 'ALTER SYSTEM SET llm.debug_fail_shm_alloc = 2; SELECT pg_reload_conf()');
my $worker_err = '';
for my $i (1 .. 50)
{
	my ($err) = call_err($node, "SET llm.debug_fail_shm_alloc = 0; SELECT llm_complete('m', 'worker alloc $i')");
	if ($err =~ /ERROR/) { $worker_err = $err; last; }
	usleep(100_000);		# the worker has not read the new setting yet
}
like($worker_err, qr/ERROR:  53200: no shared memory left for the provider's answer/,
	'the worker failing to allocate an answer fails that call with 53200');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET llm.debug_fail_shm_alloc; SELECT pg_reload_conf()');
is($node->safe_psql('postgres', 'SELECT worker_pid FROM llm.gateway_status()'), $worker, 'the worker did not exit');
is(slots_in_use($node), '0', 'and freed the slot');

# the real limit: two 3 MB calls in flight leave no room for a third, nor
# for a 3 MB answer
my @bg = (hanging_call($node, 3_000_000, 'big one'), hanging_call($node, 3_000_000, 'big two'));
wait_pending($node, 2);
my ($err) = call_err($node, "SELECT llm_complete('m', repeat('y', 3000000))");
like($err, qr/ERROR:  53200: no shared memory left for the call's request \(\d+ bytes\)/,
	'a request beyond llm.shared_memory_mb: 53200');
($err) = call_err($node, "SELECT length(llm_complete('m', 'large answer [[mock:large=3000000]]'))");
like($err, qr/ERROR:  53200: no shared memory left for the provider's answer/,
	'an answer beyond llm.shared_memory_mb: 53200');
$node->safe_psql('postgres', q{SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%[[mock:hang]]%' AND pid <> pg_backend_pid()});
eval { $_->quit } for @bg;
$node->poll_query_until('postgres', 'SELECT slots_in_use = 0 FROM llm.gateway_status()')
  or die 'slots not freed';
is($node->safe_psql('postgres', q{SELECT length(llm_complete('m', repeat('z', 3000000)))}) > 0, 1,
	'once they end, a 3 MB call fits again');

# ---------------------------------------------------------------------
# 2. A deadline at the top of its range does not overflow.
# ---------------------------------------------------------------------
is($node->safe_psql('postgres', q{SET llm.request_timeout_ms = 2147483647; SELECT llm_complete('m', 'long deadline')}),
	'mock reply to: long deadline', 'llm.request_timeout_ms = 2147483647 works');

# ---------------------------------------------------------------------
# 3. A hot standby refuses calls at once.
# ---------------------------------------------------------------------
$node->backup('bk');
my $standby = PostgreSQL::Test::Cluster->new('standby');
$standby->init_from_backup($node, 'bk', has_streaming => 1);
$standby->start;
$node->wait_for_catchup($standby);
my $took;
($err, $took) = call_err($standby, "SET llm.request_timeout_ms = 5000; SELECT llm_complete('m', 'on standby')");
like($err, qr/ERROR:  25006: llm_gateway calls cannot be served on a standby server/, 'standby: 25006');
like($err, qr/HINT:  Call the primary server/, 'standby: the hint says where to call');
cmp_ok($took, '<', 2, "standby: at once ($took s)");
$standby->stop;

# ---------------------------------------------------------------------
# 4. The worker cannot connect to llm.database (it stopped accepting
#    connections): callers already connected fail at once, not at their
#    deadline; once it accepts connections again, calls work.
# ---------------------------------------------------------------------
my $s = $node->background_psql('postgres', on_error_stop => 0);
$s->query_safe('\set VERBOSITY verbose');
$worker = $s->query_safe('SELECT worker_pid FROM llm.gateway_status()');
my $log_offset = -s $node->logfile;
$node->safe_psql('template1', "ALTER DATABASE postgres ALLOW_CONNECTIONS false; SELECT pg_terminate_backend($worker)");
$node->wait_for_log(qr/database "postgres" is not currently accepting connections/, $log_offset);
# no worker attached any more (the connecting one failed and exited)
for (1 .. 100)
{
	last if $s->query_safe('SELECT worker_pid IS NULL FROM llm.gateway_status()') eq 't';
	usleep(20_000);
}
$s->{stderr} = '';
my $t0 = time;
$s->query("SET llm.request_timeout_ms = 10000; SELECT llm_complete('m', 'no worker')");
$took = time - $t0;
like($s->{stderr}, qr/ERROR:  55000: the llm_gateway worker cannot connect to database "postgres" named by llm.database/,
	'worker cannot connect: 55000 naming llm.database');
like($s->{stderr}, qr/DETAIL:  database "postgres" is not currently accepting connections/, 'with the reason');
cmp_ok($took, '<', 2, "at once ($took s)");
$node->safe_psql('template1', 'ALTER DATABASE postgres ALLOW_CONNECTIONS true');
$s->quit;
$node->poll_query_until('postgres', 'SELECT worker_pid IS NOT NULL FROM llm.gateway_status()')
  or die 'worker did not come back';
is($node->safe_psql('postgres', q{SELECT llm_complete('m', 'connected again')}), 'mock reply to: connected again',
	'calls work once the worker connects');
$node->stop;

# ---------------------------------------------------------------------
# 5. llm.database names a database that does not exist, then one without
#    the extension: callers from elsewhere are told why, at once.
# ---------------------------------------------------------------------
my $wrong = new_node('wrongdb', "llm.database = 'nosuch'\n");
$wrong->start;
$wrong->safe_psql('postgres', 'CREATE EXTENSION llm_gateway');
$err = '';
for (1 .. 50)
{
	($err, $took) = call_err($wrong, "SELECT llm_complete('m', 'hi')");
	last if $err =~ /cannot connect/;
	usleep(200_000);
}
like($err, qr/ERROR:  55000: the llm_gateway worker cannot connect to database "nosuch" named by llm.database/,
	'llm.database does not exist: 55000 naming it');
like($err, qr/DETAIL:  database "nosuch" does not exist/, 'with the reason');
cmp_ok($took, '<', 2, "at once ($took s)");

$wrong->safe_psql('postgres', 'CREATE DATABASE other');
$wrong->append_conf('postgresql.conf', "llm.database = 'other'\n");
$wrong->restart;
for (1 .. 50)
{
	($err) = call_err($wrong, "SELECT llm_complete('m', 'hi')");
	last if $err =~ /not installed/;
	usleep(200_000);
}
like($err, qr/ERROR:  55000: llm_gateway serves calls only from database "other" \(llm.database\)/,
	'llm.database without the extension: 55000 naming it');
like($err, qr/DETAIL:  .*extension llm_gateway is not installed in database "other"/, 'with the reason');
$wrong->stop;

# ---------------------------------------------------------------------
# 6. The worker exits with payloads beyond the first 4 MB DSA segment in
#    flight: its exit frees them before its mappings go (no crash), and
#    a fast shutdown with such calls in flight is clean.
# ---------------------------------------------------------------------
my $big = gateway_node('bigexit', $mock, 'anthropic');
@bg = map { hanging_call($big, 2_000_000 + 1_000_000 * $_, "exit $_") } 0 .. 3;
wait_pending($big, 4);
$worker = $big->safe_psql('postgres', 'SELECT worker_pid FROM llm.gateway_status()');
$big->safe_psql('postgres', "SELECT pg_terminate_backend($worker)");
for my $b (@bg)
{
	$b->query_until(qr/done/, '');
	like($b->{stderr}, qr/ERROR:  LL011: the llm_gateway worker exited while serving the call/,
		'the worker exits: its callers get LL011');
	$b->quit;
}
$big->poll_query_until('postgres', "SELECT worker_pid <> $worker FROM llm.gateway_status()")
  or die 'worker did not restart';

# the worker frees abandoned slots on exit: stop it, let its callers cancel
# (their slots become ABANDONED), then terminate it
@bg = map { hanging_call($big, 2_000_000 + 1_000_000 * $_, "abandon $_") } 0 .. 3;
$big->poll_query_until('postgres',
	q{SELECT count(*) = 4 FROM llm.requests WHERE status = 'pending' AND request_body::text LIKE '%abandon %'})
  or die 'calls never pending';
$worker = $big->safe_psql('postgres', 'SELECT worker_pid FROM llm.gateway_status()');
kill 'STOP', $worker;
$big->safe_psql('postgres', q{SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%abandon %[[mock:hang]]%' AND pid <> pg_backend_pid()});
for my $b (@bg)
{
	$b->query_until(qr/done/, '');
	$b->quit;
}
kill 'TERM', $worker;
kill 'CONT', $worker;
$big->poll_query_until('postgres', "SELECT worker_pid <> $worker AND slots_in_use = 0 FROM llm.gateway_status()")
  or die 'worker did not restart';
ok(1, 'the worker exited with abandoned large calls and every slot is free');

# a fast shutdown with large calls in flight
@bg = map { hanging_call($big, 2_000_000 + 1_000_000 * $_, "shutdown $_") } 0 .. 3;
$big->poll_query_until('postgres',
	q{SELECT count(*) = 4 FROM llm.requests WHERE status = 'pending' AND request_body::text LIKE '%shutdown %'})
  or die 'calls never pending';
$big->stop('fast');
eval { $_->quit } for @bg;
my $log = slurp_file($big->logfile);
unlike($log, qr/terminated by signal/, 'no process died of a signal');
unlike($log, qr/terminating any other active server processes/, 'no crash restart');
$big->start;
$big->poll_query_until('postgres', q{SELECT count(*) = 0 FROM llm.requests WHERE status = 'pending'})
  or die 'rows left pending';
ok(1, 'after the restart no row is pending');
$big->stop;

$mock->stop;
done_testing();
