# Cancel really cancels: pg_cancel_backend and statement_timeout during a
# hung provider call stop the transfer (the provider sees the connection
# close) and the log row says "cancelled".
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
my $node = gateway_node('cancel', $mock, 'anthropic');

# true once the provider has seen a client go away
sub provider_saw_disconnect
{
	for (1 .. 100)
	{
		return 1 if $mock->get('/_mock/stats')->{disconnects} >= 1;
		select(undef, undef, undef, 0.05);
	}
	return 0;
}

# start a call that hangs at the provider in another session, then hit
# that session with SIGNAL_FUNCTION (pg_cancel_backend, pg_terminate_backend)
# and wait for the log row to say "cancelled"
sub interrupt_hanging_call
{
	my ($prompt, $signal_function) = @_;
	my $bg = $node->background_psql('postgres', on_error_stop => 0);
	$bg->query_until(qr/started/, "\\echo started\nSELECT llm_complete('m', '$prompt [[mock:hang]]');\n");
	$node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM llm.requests WHERE status = 'pending'})
	  or die 'call never became pending';
	$node->safe_psql('postgres',
		"SELECT $signal_function(pid) FROM pg_stat_activity WHERE query LIKE '%$prompt [[%' AND pid <> pg_backend_pid()");
	my $logged = $node->poll_query_until('postgres',
		"SELECT status = 'cancelled' FROM llm.requests WHERE request_body::text LIKE '%$prompt [[%'");
	eval { $bg->quit };
	return $logged;
}
is($node->safe_psql('postgres', q{SELECT llm_complete('m', 'warm up')}), 'mock reply to: warm up', 'warm-up call');

# statement_timeout during a hang
$mock->reset;
my $t0 = time;
my ($ret, $out, $err) = $node->psql('postgres',
	q{SET statement_timeout = '300ms'; SELECT llm_complete('m', 'hang [[mock:hang]]')});
my $took = time - $t0;
isnt($ret, 0, 'statement_timeout ends a hung call');
like($err, qr/canceling statement due to statement timeout/, 'with the usual message');
cmp_ok($took, '<', 5, "promptly ($took s)");
$node->poll_query_until('postgres', q{SELECT status = 'cancelled' FROM llm.requests ORDER BY id DESC LIMIT 1})
  or die 'log row never became cancelled';
ok(1, 'log row marked cancelled');
ok(provider_saw_disconnect(), 'the provider saw the connection closed');

# pg_cancel_backend from another session
$mock->reset;
ok(interrupt_hanging_call('hang again', 'pg_cancel_backend'), 'pg_cancel_backend cancels the call and logs it');
ok(provider_saw_disconnect(), 'the provider saw that connection closed too');

# the session that was cancelled can call again; no slot leaked
is($node->safe_psql('postgres', q{SELECT llm_complete('m', 'after cancel')}), 'mock reply to: after cancel',
	'calls work after cancels');
is($node->safe_psql('postgres', 'SELECT slots_in_use FROM llm.gateway_status()'), '0', 'no slot leaked');

# a session that exits mid-call (pg_terminate_backend) abandons its call
ok(interrupt_hanging_call('terminated', 'pg_terminate_backend'), 'a terminated session\'s call is cancelled');

$node->stop;
$mock->stop;
done_testing();
