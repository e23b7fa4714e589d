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
my $ok = 0;
for (1 .. 100)
{
	if ($mock->get('/_mock/stats')->{disconnects} >= 1) { $ok = 1; last; }
	select(undef, undef, undef, 0.05);
}
ok($ok, 'the provider saw the connection closed');

# pg_cancel_backend from another session
$mock->reset;
my $bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_until(qr/started/, q{\echo started
SELECT llm_complete('m', 'hang again [[mock:hang]]');
});
$node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM llm.requests WHERE status = 'pending'})
  or die 'call never became pending';
$node->safe_psql('postgres',
	q{SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE query LIKE '%hang again%' AND pid <> pg_backend_pid()});
$node->poll_query_until('postgres',
	q{SELECT status = 'cancelled' FROM llm.requests WHERE request_body::text LIKE '%hang again%'})
  or die 'cancelled row not written';
ok(1, 'pg_cancel_backend cancels the call and logs it');
$ok = 0;
for (1 .. 100)
{
	if ($mock->get('/_mock/stats')->{disconnects} >= 1) { $ok = 1; last; }
	select(undef, undef, undef, 0.05);
}
ok($ok, 'the provider saw that connection closed too');
eval { $bg->quit };

# the session that was cancelled can call again; no slot leaked
is($node->safe_psql('postgres', q{SELECT llm_complete('m', 'after cancel')}), 'mock reply to: after cancel',
	'calls work after cancels');
is($node->safe_psql('postgres', 'SELECT slots_in_use FROM llm.gateway_status()'), '0', 'no slot leaked');

# a session that exits mid-call (pg_terminate_backend) abandons its call
$bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_until(qr/started/, q{\echo started
SELECT llm_complete('m', 'terminated [[mock:hang]]');
});
$node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM llm.requests WHERE status = 'pending'})
  or die 'call never became pending';
$node->safe_psql('postgres',
	q{SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%terminated [[%' AND pid <> pg_backend_pid()});
$node->poll_query_until('postgres',
	q{SELECT status = 'cancelled' FROM llm.requests WHERE request_body::text LIKE '%terminated [[%'})
  or die 'terminated call not logged as cancelled';
ok(1, 'a terminated session\'s call is cancelled');
eval { $bg->quit };

$node->stop;
$mock->stop;
done_testing();
