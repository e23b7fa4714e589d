# Outbound policy and keys that follow base_url (docs/design.md sections 12, 13):
# - a key is bound to its provider's origin: an llm_admin who points base_url
#   at another host gets a call that fails unsent, and the key reaches nobody;
# - llm.allowed_hosts, https except to loopback, link-local/metadata refused;
# - reserved headers refused at input and in the worker;
# - proxy environment variables ignored;
# - a provider that echoes the key puts no key into llm.requests.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use LlmGatewayTest;

my $secret = 'outbound-secret-0123456789';    # not key-shaped: only the literal match can scrub it
my $mock = start_mock();
my $evil = start_mock();
my $port = $mock->port;
my $evil_port = $evil->port;
my $node = new_node('outbound');
$node->start;
$node->safe_psql('postgres', qq{
	CREATE EXTENSION llm_gateway;
	SELECT llm.add_provider('mock', 'anthropic', 'http://127.0.0.1:$port');
	SELECT llm.set_credential('mock', '$secret');
	SELECT llm.add_route('m', 'mock', 'claude-mock', options => '{"max_attempts": 1}');
	CREATE ROLE admin LOGIN IN ROLE llm_admin;});

# call(SQL) -> [sqlstate or 'ok', output or message]
sub call
{
	my ($sql, $user) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $sql,
		extra_params => [ '-v', 'VERBOSITY=verbose', ($user ? ('-U', $user) : ()) ]);
	return [ 'ok', $out ] if $ret == 0;
	my ($state) = $err =~ /ERROR:\s+([0-9A-Z]{5}):/;
	return [ $state // '?', $err ];
}

sub reload_with
{
	my ($setting) = @_;
	$node->safe_psql('postgres', "ALTER SYSTEM SET $setting; SELECT pg_reload_conf();");
	# the worker applies a reload at its next turn; give it a moment
	select(undef, undef, undef, 0.3);
	return;
}

sub mock_requests { my ($m) = @_; return $m->get('/_mock/stats')->{requests}; }

is(call(q{SELECT llm_complete('m', 'hello')})->[1], 'mock reply to: hello', 'the gateway works');
is($mock->get('/_mock/requests?last=1')->{requests}[0]{headers}{'x-api-key'}, $secret, 'with the key');

# ---- keys follow base_url ------------------------------------------------
$mock->reset;
$node->safe_psql('postgres', qq{SELECT llm.alter_provider('mock', base_url => 'http://localhost:$evil_port')},
	extra_params => [ '-U', 'admin' ]);
my $r = call(q{SELECT llm_complete('m', 'to the other host')});
is($r->[0], '55000', 'after llm_admin moved base_url to another origin the call fails with 55000');
like($r->[1], qr/stored for another origin than the provider's base_url now names \(http:\/\/localhost:$evil_port\); it must be set again/,
	'naming the cause and the fix');
is(mock_requests($evil), 0, 'the other host received nothing');
is(mock_requests($mock), 0, 'nor did the old one');
is($node->safe_psql('postgres', q{SELECT error_code FROM llm.requests ORDER BY id DESC LIMIT 1}), '55000',
	'the log row says so');

# the administrator who meant it sets the key again
$node->safe_psql('postgres', qq{SELECT llm.set_credential('mock', '$secret')});
is(call(q{SELECT llm_complete('m', 'key set again')})->[1], 'mock reply to: key set again',
	'set_credential again makes the new origin work');
is($evil->get('/_mock/requests?last=1')->{requests}[0]{headers}{'x-api-key'}, $secret, 'with the key');

# the same origin with another path keeps the key (the mock has no such path: a 404, with the key)
$evil->reset;
$node->safe_psql('postgres', qq{SELECT llm.alter_provider('mock', base_url => 'http://LOCALHOST:$evil_port/other')});
$r = call(q{SELECT llm_complete('m', 'other path')});
is($r->[0], 'LL004', 'the same origin with another path is still called');
is($evil->get('/_mock/requests?last=1')->{requests}[0]{headers}{'x-api-key'}, $secret,
	'and gets the key');

# back to the first mock: the key must be set again, as for any origin change
$node->safe_psql('postgres', qq{SELECT llm.alter_provider('mock', base_url => 'http://127.0.0.1:$port')});
is(call(q{SELECT llm_complete('m', 'back')})->[0], '55000', 'moving back needs the key again too');
$node->safe_psql('postgres', qq{SELECT llm.set_credential('mock', '$secret')});
is(call(q{SELECT llm_complete('m', 'back')})->[0], 'ok', 'and works once it is set');

# ---- llm.allowed_hosts --------------------------------------------------------
$mock->reset;
reload_with(q{llm.allowed_hosts = 'api.example.com, *.openai.azure.com'});
$r = call(q{SELECT llm_complete('m', 'not allowed')});
is($r->[0], '42501', 'a host outside llm.allowed_hosts fails with 42501');
like($r->[1], qr/host "127\.0\.0\.1" \(port $port\) is not allowed by llm\.allowed_hosts/, 'naming the host and the setting');
is(mock_requests($mock), 0, 'nothing was sent');
is($node->safe_psql('postgres', q{SELECT status || ' ' || error_code || ' ' || coalesce(http_status::text, '-') FROM llm.requests ORDER BY id DESC LIMIT 1}),
	'error 42501 -', 'logged unsent');
reload_with(q{llm.allowed_hosts = '*.0.0.1'});
is(call(q{SELECT llm_complete('m', 'wildcard')})->[0], 'ok', 'a wildcard pattern matches');
reload_with(qq{llm.allowed_hosts = '127.0.0.1:1'});
is(call(q{SELECT llm_complete('m', 'other port')})->[0], '42501', 'host:port checks the port');
reload_with(qq{llm.allowed_hosts = 'api.example.com, 127.0.0.1:$port'});
is(call(q{SELECT llm_complete('m', 'host and port')})->[0], 'ok', 'the right host:port is allowed');

# fallback targets are checked the same way: the primary fails (503), the fallback is refused
$node->safe_psql('postgres', qq{
	SELECT llm.add_provider('flaky', 'anthropic', 'http://127.0.0.1:$port', options => '{"headers": {"x-mock": "status=503"}}');
	SELECT llm.add_provider('elsewhere', 'anthropic', 'http://localhost:$evil_port');
	SELECT llm.add_route('fb', 'flaky', 'claude-mock', 0, options => '{"max_attempts": 1}');
	SELECT llm.add_route('fb', 'elsewhere', 'claude-mock', 1);});
$mock->reset;
$evil->reset;
$r = call(q{SELECT llm_complete('fb', 'fall over')});
is($r->[0], '42501', 'a fallback target outside llm.allowed_hosts is refused');
like($r->[1], qr/host "localhost"/, 'naming its host');
is(mock_requests($mock) . ' ' . mock_requests($evil), '1 0', 'only the allowed primary was contacted');
reload_with(q{llm.allowed_hosts = ''});

# ---- https except to loopback; link-local and metadata addresses -----------------------
$node->safe_psql('postgres', q{
	SELECT llm.add_provider('remote', 'anthropic', 'http://192.0.2.1:9');
	SELECT llm.add_route('remote', 'remote', 'claude-mock', options => '{"max_attempts": 1}');
	SELECT llm.add_provider('metadata', 'anthropic', 'http://169.254.169.254');
	SELECT llm.add_route('metadata', 'metadata', 'claude-mock', options => '{"max_attempts": 1}');
	SELECT llm.add_provider('mapped', 'anthropic', 'https://[::ffff:169.254.169.254]');
	SELECT llm.add_route('mapped', 'mapped', 'claude-mock', options => '{"max_attempts": 1}');
	SELECT llm.add_provider('decimal', 'anthropic', 'https://2852039166');
	SELECT llm.add_route('decimal', 'decimal', 'claude-mock', options => '{"max_attempts": 1}');
	SELECT llm.add_provider('byname', 'anthropic', 'http://localhost:} . $port . q{');
	SELECT llm.add_route('byname', 'byname', 'claude-mock');});
$node->safe_psql('postgres', qq{SELECT llm.set_credential('byname', '$secret')});
$r = call(q{SELECT llm_complete('remote', 'plain http', '{"timeout_ms": 2000}')});
is($r->[0], '42501', 'plain http to a non-loopback address is refused');
like($r->[1], qr/host "192\.0\.2\.1" \(192\.0\.2\.1\) must be reached over https/, 'saying https is required');
is(call(q{SELECT llm_complete('byname', 'a name that resolves to loopback')})->[0], 'ok',
	'plain http to a name that resolves to loopback is judged by its address');
for my $alias ('metadata', 'mapped', 'decimal')
{
	$r = call(qq{SELECT llm_complete('$alias', 'metadata', '{"timeout_ms": 2000}')});
	is($r->[0], '42501', "$alias: a link-local / metadata address is refused");
	like($r->[1], qr/link-local or cloud metadata address/, "$alias: saying why");
}
# allowed when named explicitly (and http allowed): then curl tries to connect
reload_with(q{llm.allowed_hosts = '169.254.169.254, 127.0.0.1, localhost'});
reload_with(q{llm.allow_http = on});
$r = call(q{SELECT llm_complete('metadata', 'named', '{"timeout_ms": 300}')});
isnt($r->[0], '42501', 'a metadata address named in llm.allowed_hosts is not refused by the policy');
$r = call(q{SELECT llm_complete('remote', 'plain http', '{"timeout_ms": 300}')});
is($r->[0], '42501', 'allow_http does not bypass allowed_hosts');
reload_with(q{llm.allowed_hosts = ''});
$r = call(q{SELECT llm_complete('remote', 'plain http', '{"timeout_ms": 300}')});
isnt($r->[0], '42501', 'llm.allow_http = on allows plain http elsewhere');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET llm.allow_http; ALTER SYSTEM RESET llm.allowed_hosts; SELECT pg_reload_conf()');
select(undef, undef, undef, 0.3);
$r = call(q{ALTER SYSTEM SET llm.allowed_hosts = 'a b'});
is($r->[0], '22023', 'a malformed llm.allowed_hosts is refused');
$r = call(q{SET llm.allowed_hosts = 'anything'});
is($r->[0], '55P02', 'llm.allowed_hosts cannot be set in a session');

# ---- reserved headers and numeric options ------------------------------------------
$r = call(q{SELECT llm.alter_provider('mock', options => '{"headers": {"Authorization": "Bearer mine"}}')}, 'admin');
is($r->[0], '22023', 'a reserved header is refused at input');
like($r->[1], qr/cannot set reserved header "authorization"/, 'naming the header');
for my $h ('host', 'content-length', 'transfer-encoding', 'proxy-authorization', 'api-key', 'anthropic-version')
{
	is(call(qq{SELECT llm.add_provider('h_$h', 'openai', 'https://x.example', options => '{"headers": {"$h": "v"}}')})->[0],
		'22023', "header $h is refused at input");
}
like(call(q{SELECT llm.alter_provider('mock', options => '{"headers": {"x-ok": "a\nb"}}')})->[1],
	qr/must be a single-line string/, 'a header value with a line break is refused');
for my $opt ('{"max_concurrency": -1}', '{"max_concurrency": 1.5}', '{"requests_per_minute": 1e12}',
	'{"max_concurrency": "3"}', '{"timeout_ms": 1e131071}')
{
	is(call(qq{SELECT llm.alter_provider('mock', options => '$opt')})->[0], '22023', "provider options $opt refused");
}
like(call(q{SELECT llm.add_provider('userinfo', 'openai', 'https://api.openai.com@evil.example/v1')})->[1],
	qr/without user info/, 'a base_url with user info is refused');
# an llm_admin can UPDATE the table directly: the worker refuses the header and sends nothing
$mock->reset;
$node->safe_psql('postgres', q{UPDATE llm.providers SET options = '{"headers": {"X-Api-Key": "stolen", "Host": "evil"}}' WHERE name = 'mock'},
	extra_params => [ '-U', 'admin' ]);
$r = call(q{SELECT llm_complete('m', 'reserved by update')});
is($r->[0], '22023', 'the worker refuses a reserved header written by UPDATE');
like($r->[1], qr/header "(x-api-key|host)"/, 'naming it');
is(mock_requests($mock), 0, 'and sends nothing');
$node->safe_psql('postgres', q{UPDATE llm.providers SET options = '{"headers": {"Cookie": "c=1"}}' WHERE name = 'mock'});
like(call(q{SELECT llm_complete('m', 'cookie')})->[1], qr/cannot set reserved header "cookie"/,
	'a header only the gateway-wide list reserves is refused too');
$node->safe_psql('postgres', q{UPDATE llm.providers SET options = '{}' WHERE name = 'mock'});

# ---- a provider that echoes the key ----------------------------------------------
$r = call(q{SELECT llm_complete('m', 'echo [[mock:echo_auth]]')});
is($r->[0], 'LL004', 'the echoing provider answers 400');
unlike($r->[1], qr/\Q$secret\E/, 'the error returned holds no key');
is($node->safe_psql('postgres', qq{
	SELECT count(*) FROM llm.requests
	 WHERE concat_ws(' ', error, response_body, attempts_detail::text) LIKE '%$secret%'}),
	'0', 'llm.requests holds the key nowhere');
like($node->safe_psql('postgres', q{SELECT response_body FROM llm.requests ORDER BY id DESC LIMIT 1}),
	qr/x-api-key: \[redacted\]/, 'response_body keeps the answer, key redacted');

# ---- proxy variables are ignored ----------------------------------------------------
# a dead proxy: curl would fail to connect if it used one
$ENV{http_proxy} = $ENV{https_proxy} = $ENV{ALL_PROXY} = $ENV{all_proxy} = 'http://127.0.0.1:9';
$node->restart;
delete @ENV{qw(http_proxy https_proxy ALL_PROXY all_proxy)};
$r = call(q{SELECT llm_complete('m', 'no proxy')});
is($r->[1], 'mock reply to: no proxy', 'http_proxy, https_proxy and ALL_PROXY in the environment are ignored');
ok($node->log_contains(qr/llm_gateway worker: libcurl [0-9.]+, (threaded|c-ares) DNS resolver/),
	'the worker logs which DNS resolver libcurl uses');

$node->stop;

# ---- curl's sockets count against max_files_per_process --------------------------
# With max_files_per_process = 70 a process may hold about 18 external fds
# (AcquireExternalFD: a third of max_safe_fds): 30 slow calls at once need
# more connections than that, and the calls beyond fail with 53000, the
# worker unharmed.
my $slow = start_mock('--latency-ms', '1500');
my $fds = gateway_node('outbound_fds', $slow, 'anthropic', "max_files_per_process = 70
max_connections = 60
");
my $pid = $fds->safe_psql('postgres', 'SELECT worker_pid FROM llm.gateway_status()');
$fds->pgbench('--no-vacuum --client=30 --jobs=4 --transactions=1', 2,
	[qr{processed: \d+/30}], [qr{no file descriptor is available for a connection to host "127\.0\.0\.1"}],
	'more connections than the fd budget: the calls beyond it fail',
	{ '013_fds' => q{SELECT llm_complete('m', 'fd ' || :client_id);} });
cmp_ok($fds->safe_psql('postgres', q{SELECT count(*) FROM llm.requests WHERE error_code = '53000'}), '>', 0,
	'with 53000');
cmp_ok($fds->safe_psql('postgres', q{SELECT count(*) FROM llm.requests WHERE status = 'ok'}), '>=', 10,
	'while the calls within the budget succeed');
is($fds->safe_psql('postgres', 'SELECT worker_pid FROM llm.gateway_status()'), $pid, 'the worker is unharmed');
is($fds->safe_psql('postgres', q{SELECT llm_complete('m', 'after')}), 'mock reply to: after', 'and serves the next call');
$fds->stop;

$slow->stop;
$mock->stop;
$evil->stop;
done_testing();
