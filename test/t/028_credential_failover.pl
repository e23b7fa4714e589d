# A provider with several enabled credentials: a key the provider refuses
# (401/403) gives way to the provider's next credential, each tried at most
# once, before the call falls over to another target; the log row names the
# label each attempt used, never the secret.  A provider with one
# credential behaves as before.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use LlmGatewayTest;

# the mock refuses any key starting with "invalid" (401 authentication_error)
my $bad_a = 'invalid-a-SECRET-7f3c91d2';
my $bad_b = 'invalid-b-SECRET-0a8e4b6f';
my $good_b = 'good-b-SECRET-5d21c8e0';
my $good_p2 = 'good-p2-SECRET-93b7f1a4';
my @secrets = ($bad_a, $bad_b, $good_b, $good_p2);

my $mock = start_mock();
my $node = new_node('credential_failover', "log_statement = none\n");
$node->start;
my $url = $mock->url;
$node->safe_psql('postgres', qq{
	CREATE EXTENSION llm_gateway;
	SELECT llm.add_provider('p1', 'anthropic', '$url');
	SELECT llm.add_provider('p2', 'anthropic', '$url');
	SELECT llm.add_provider('p3', 'anthropic', '$url');
	SELECT llm.set_credential('p1', '$bad_a', 'a');
	SELECT llm.set_credential('p1', '$good_b', 'b');
	SELECT llm.set_credential('p2', '$good_p2');
	SELECT llm.set_credential('p3', '$bad_a');
	SELECT llm.add_route('m', 'p1', 'model-1', priority => 0);
	SELECT llm.add_route('m', 'p2', 'model-2', priority => 1);
	SELECT llm.add_route('solo', 'p1', 'model-1');
	SELECT llm.add_route('single', 'p3', 'model-3');});

# The keys the mock received since the last reset, in order.
sub keys_seen
{
	my $reqs = $mock->get('/_mock/requests')->{requests};
	return join(',', map { $_->{headers}{'x-api-key'} // '(none)' } @$reqs);
}

sub call
{
	my ($alias, $prompt) = @_;
	my ($ret, $out, $err) = $node->psql('postgres',
		"\\set VERBOSITY verbose\nSELECT llm_complete('$alias', '$prompt')");
	return ($ret == 0, $out, $err);
}

# The finished log row of the call with this prompt: status|provider|error_code|labels|providers
sub log_row
{
	my ($prompt) = @_;
	my $where = "request_body::text LIKE '%$prompt%' AND status <> 'pending'";
	$node->poll_query_until('postgres', "SELECT count(*) = 1 FROM llm.requests WHERE $where")
	  or die "no finished log row for $prompt";
	return $node->safe_psql('postgres', qq{
		SELECT status || '|' || provider || '|' || coalesce(error_code, '') || '|' ||
		       (SELECT string_agg(a->>'credential', ',' ORDER BY n) FROM jsonb_array_elements(attempts_detail) WITH ORDINALITY AS x(a, n)) || '|' ||
		       (SELECT string_agg(a->>'provider', ',' ORDER BY n) FROM jsonb_array_elements(attempts_detail) WITH ORDINALITY AS x(a, n))
		  FROM llm.requests WHERE $where});
}

# No secret in the row, whatever the column.
sub row_has_no_secret
{
	my ($prompt, $what) = @_;
	my $row = $node->safe_psql('postgres',
		"SELECT r::text FROM llm.requests r WHERE request_body::text LIKE '%$prompt%'");
	ok(!(grep { index($row, $_) >= 0 } @secrets), "$what: no secret in the log row");
	return;
}

# --- a refused first key: the provider's second key answers, no fallback
$mock->post('/_mock/reset');
my ($ok, $out, $err) = call('m', 'first call');
ok($ok, 'a refused key gives way to the next credential') or diag($err);
is($out, 'mock reply to: first call', 'the call is answered');
is(keys_seen(), "$bad_a,$good_b", 'the mock saw exactly two requests, key a then key b');
is(log_row('first call'), 'ok|p1||a,b|p1,p1', 'the log row shows both attempts with their labels, on p1');
row_has_no_secret('first call', 'first call');

# --- every credential of p1 refused: then, and only then, the next target
$node->safe_psql('postgres', qq{SELECT llm.set_credential('p1', '$bad_b', 'b')});
$mock->post('/_mock/reset');
($ok, $out, $err) = call('m', 'second call');
ok($ok, 'all keys of p1 refused: the call falls over to p2') or diag($err);
is($out, 'mock reply to: second call', 'p2 answers');
is(keys_seen(), "$bad_a,$bad_b,$good_p2", 'each p1 key tried once, in rotation order, then p2');
is(log_row('second call'), 'ok|p2||a,b,default|p1,p1,p2', 'the log row shows the three attempts');

# --- one target only and all refused: LL001 naming the provider, no secret
$mock->post('/_mock/reset');
($ok, $out, $err) = call('solo', 'third call');
ok(!$ok, 'all keys refused and no other target: the call fails');
like($err, qr/ERROR:  LL001: provider "p1" returned HTTP 401/, 'LL001 naming the provider');
like($err, qr/All 2 enabled credentials of provider "p1" were refused/, 'the hint says every key was refused');
ok(!(grep { index($err, $_) >= 0 } @secrets), 'no secret in the error');
# the second call started p1's rotation at a, so this one starts at b
is(keys_seen(), "$bad_b,$bad_a", 'each key was tried exactly once, in rotation order');
is(log_row('third call'), 'error|p1|LL001|b,a|p1,p1', 'the log row shows both refused attempts');
row_has_no_secret('third call', 'third call');

# --- a single credential behaves as before: one request, then the error
$mock->post('/_mock/reset');
($ok, $out, $err) = call('single', 'fourth call');
ok(!$ok, 'a single refused key fails the call');
like($err, qr/ERROR:  LL001: provider "p3" returned HTTP 401/, 'LL001 naming the provider');
unlike($err, qr/enabled credentials/, 'with the usual hint');
is(keys_seen(), $bad_a, 'one request');

# --- rotation still spreads calls over the keys: the next call starts with b
$node->safe_psql('postgres', qq{SELECT llm.set_credential('p1', '$good_b', 'b')});
$mock->post('/_mock/reset');
($ok, $out, $err) = call('solo', 'fifth call');
ok($ok, 'fifth call answered') or diag($err);
($ok, $out, $err) = call('solo', 'sixth call');
ok($ok, 'sixth call answered') or diag($err);
is(keys_seen(), "$bad_a,$good_b,$good_b", 'the second call starts with the next key in turn');

$node->stop;
done_testing();
