# Routing state across faults: a worker that dies leaves no provider slot
# or circuit probe taken; the breaker still works after; the route cache
# reloads only when the routing tables change; an idempotency key is the
# same on every attempt of a call; an answer received but unreadable is not
# sent again unless the route allows it.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use LlmGatewayTest;

my $mock = start_mock();
# DEBUG1: the worker logs each route cache load, counted below
my $node = gateway_node('routing_faults', $mock, 'anthropic', "log_min_messages = debug1\n");

sub worker_pid
{
	return $node->safe_psql('postgres', 'SELECT worker_pid FROM llm.gateway_status()');
}

# Terminate the worker while BG's call is in flight; wait for the next one.
sub kill_worker
{
	my ($bg, $what) = @_;
	my $pid = worker_pid();
	$node->safe_psql('postgres', "SELECT pg_terminate_backend($pid)");
	$bg->query_until(qr/done/, '');
	like($bg->{stderr}, qr/the llm_gateway worker exited while serving the call/, "$what: the call in flight fails");
	$bg->quit;
	$node->poll_query_until('postgres',
		"SELECT worker_pid IS NOT NULL AND worker_pid <> $pid FROM llm.gateway_status()")
	  or die 'worker did not restart';
	return;
}

sub call_in_background
{
	my ($sql) = @_;
	my $bg = $node->background_psql('postgres', on_error_stop => 0);
	$bg->query_until(qr/started/, "\\echo started\n$sql;\n\\echo done\n");
	return $bg;
}

# --- a provider with max_concurrency 1: its slot is free after a worker death
$node->safe_psql('postgres', q{SELECT llm.alter_provider('mock', options => '{"max_concurrency": 1}')});
my $bg = call_in_background(q{SELECT llm_complete('m', 'holds the only slot [[mock:hang]]')});
$node->poll_query_until('postgres', q{SELECT in_flight = 1 FROM llm.provider_load WHERE provider = 'mock'})
  or die 'the call never took the slot';
kill_worker($bg, 'slot holder');
is($node->safe_psql('postgres', q{SELECT in_flight || '/' || queued FROM llm.provider_load WHERE provider = 'mock'}),
	'0/0', 'the new worker counts nothing in flight');
my ($ret, $out, $err) = $node->psql('postgres',
	q{SELECT llm_complete('m', 'after the worker died', '{"timeout_ms": 3000}')});
is($out, 'mock reply to: after the worker died', 'the next call gets the slot') or diag($err);

# the limit still holds: a second call waits while the first has the slot
$bg = call_in_background(q{SELECT llm_complete('m', 'holds it again [[mock:latency=1500]]')});
$node->poll_query_until('postgres', q{SELECT in_flight = 1 FROM llm.provider_load WHERE provider = 'mock'})
  or die 'the call never took the slot';
($ret, $out, $err) = $node->psql('postgres',
	q{SELECT llm_complete('m', 'must wait', '{"timeout_ms": 300}')});
like($err, qr/timed out after 300 ms before it could be sent/, 'max_concurrency 1 still queues a second call');
is($node->safe_psql('postgres', q{SELECT throttled > 0 FROM llm.provider_load WHERE provider = 'mock'}),
	't', 'and counts it as throttled while the provider is busy');
$bg->query_until(qr/done/, '');
$bg->quit;
is($node->safe_psql('postgres', q{SELECT count(*) FROM llm._provider_load()}), '0',
	'an idle provider has no entry left in the load table');
$node->safe_psql('postgres', q{SELECT llm.alter_provider('mock', options => '{}')});

# --- a half-open circuit whose probe died with the worker lets a new probe through
my $cb = $node->safe_psql('postgres', q{SELECT llm.add_route('cb', 'mock', 'cb-model', 0, 1,
	'{"max_attempts": 1, "breaker_failures": 1, "breaker_cooldown_ms": 300}')});
($ret, $out, $err) = $node->psql('postgres', q{SELECT llm_complete('cb', 'fails [[mock:status=503]]')});
like($err, qr/returned HTTP 503/, 'a failure opens the circuit (breaker_failures 1)');
is($node->safe_psql('postgres', "SELECT state FROM llm.circuit_breakers WHERE target_id = $cb"), 'open',
	'the circuit is open');
($ret, $out, $err) = $node->psql('postgres', q{SELECT llm_complete('cb', 'refused while open')});
like($err, qr/every target of model alias "cb" is cooling down/, 'an open circuit refuses calls');
sleep(1);	# the cool-down itself (300 ms) is what passes here
$bg = call_in_background(q{SELECT llm_complete('cb', 'the probe [[mock:hang]]')});
$node->poll_query_until('postgres', "SELECT state = 'half-open' FROM llm.circuit_breakers WHERE target_id = $cb")
  or die 'the probe never went out';
kill_worker($bg, 'probe');
($ret, $out, $err) = $node->psql('postgres', q{SELECT llm_complete('cb', 'a new probe')});
is($out, 'mock reply to: a new probe', 'after the worker died a new probe is let through') or diag($err);
is($node->safe_psql('postgres', "SELECT state FROM llm.circuit_breakers WHERE target_id = $cb"), 'closed',
	'and its success closes the circuit');
is($node->safe_psql('postgres', "SELECT count(*) FROM llm._circuit_state() WHERE route_id = $cb"), '0',
	'a healthy target has no entry left in the breaker table');
($ret, $out, $err) = $node->psql('postgres', q{SELECT llm_complete('cb', 'fails again [[mock:status=503]]')});
($ret, $out, $err) = $node->psql('postgres', q{SELECT llm_complete('cb', 'refused again')});
like($err, qr/every target of model alias "cb" is cooling down/, 'the breaker still opens after the restart');

# --- the route cache reloads only when the routing tables change
sub cache_loads
{
	my @loads = (slurp_file($node->logfile) =~ /llm_gateway: route cache loaded/g);
	return scalar @loads;
}
$node->safe_psql('postgres', q{SELECT llm_complete('m', 'warm the cache')});
my $loads = cache_loads();
ok($loads > 0, "the worker logs its cache loads ($loads so far)");
$node->safe_psql('postgres', q{CREATE TABLE unrelated (x int); INSERT INTO unrelated SELECT generate_series(1, 100)});
$node->safe_psql('postgres', q{ANALYZE unrelated});
$node->safe_psql('postgres', q{ANALYZE llm.requests});
$node->safe_psql('postgres', q{SELECT llm_complete('m', 'after ANALYZE and CREATE TABLE')});
is(cache_loads(), $loads, 'ANALYZE and CREATE TABLE do not reload the route cache');
$node->safe_psql('postgres', q{SELECT llm.alter_route(id, weight => 2) FROM llm.routes WHERE alias = 'm'});
$node->safe_psql('postgres', q{SELECT llm_complete('m', 'after alter_route')});
is(cache_loads(), $loads + 1, 'alter_route reloads it once');
$node->safe_psql('postgres', q{SELECT llm.set_credential('mock', 'k2')});
$node->safe_psql('postgres', q{SELECT llm_complete('m', 'after set_credential')});
is(cache_loads(), $loads + 2, 'a credential change reloads it');

# --- idempotency: one key per call, the same on every attempt
$node->safe_psql('postgres', q{SELECT llm.add_route('idem', 'mock', 'idem-model', 0, 1,
	'{"max_attempts": 3, "idempotency_header": "Idempotency-Key"}')});
$mock->reset;
is($node->safe_psql('postgres', q{SELECT llm_complete('idem', 'retried twice [[mock:fail_first=2,status=503]]')}),
	'mock reply to: retried twice', 'a call retried twice succeeds');
my $reqs = $mock->get('/_mock/requests')->{requests};
is(scalar @$reqs, 3, 'the provider saw three attempts');
my @keys = map { $_->{headers}{'idempotency-key'} // 'none' } @$reqs;
my $id = $node->safe_psql('postgres', q{SELECT id FROM llm.requests ORDER BY id DESC LIMIT 1});
like($keys[0], qr/^llmgw-\d+-\d+-$id$/, "the key names the cluster, the database and the request ($keys[0])");
is_deeply([ @keys[1, 2] ], [ $keys[0], $keys[0] ], 'every attempt carries the same key');
$mock->reset;
$node->safe_psql('postgres', q{SELECT llm_complete('idem', 'another call')});
$node->safe_psql('postgres', q{SELECT llm_complete('m', 'a route without the option')});
$reqs = $mock->get('/_mock/requests')->{requests};
isnt($reqs->[0]{headers}{'idempotency-key'}, $keys[0], 'another call gets another key');
ok(!exists $reqs->[1]{headers}{'idempotency-key'}, 'a route without idempotency_header sends none');

# --- an unreadable 200 is not sent again (retry or fallback) unless allowed
my $unr = $node->safe_psql('postgres', q{SELECT llm.add_route('unr', 'mock', 'unr-model', 0, 1, '{"max_attempts": 3}')});
$node->safe_psql('postgres', q{SELECT llm.add_route('unr', 'mock', 'unr-fallback', 1, 1, '{"max_attempts": 1}')});
$mock->reset;
($ret, $out, $err) = $node->psql('postgres', q{SELECT llm_complete('unr', 'unreadable [[mock:malformed]]')});
like($err, qr/sent an answer the gateway cannot read.*HINT:.*retry_unreadable/s,
	'a malformed 200 fails the call, naming retry_unreadable');
is($mock->get('/_mock/stats')->{requests}, 1, 'the provider was called once: no retry, no fallback');
is($node->safe_psql('postgres', q{SELECT status || ' ' || error_code || ' ' || attempts FROM llm.requests ORDER BY id DESC LIMIT 1}),
	'error LL006 1', 'the log row: one attempt, LL006');
$node->safe_psql('postgres', qq{SELECT llm.alter_route($unr, options => '{"max_attempts": 3, "retry_unreadable": true}')});
$node->safe_psql('postgres', q{SELECT llm.alter_route(id, options => '{"max_attempts": 1, "retry_unreadable": true}')
	FROM llm.routes WHERE upstream_model = 'unr-fallback'});
$mock->reset;
($ret, $out, $err) = $node->psql('postgres', q{SELECT llm_complete('unr', 'unreadable again [[mock:malformed]]')});
is($mock->get('/_mock/stats')->{requests}, 4, 'with retry_unreadable: three attempts, then the fallback');

$node->stop;
$mock->stop;
done_testing();
