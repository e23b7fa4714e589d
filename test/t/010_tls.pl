# TLS to providers is verified: a provider whose certificate the server does
# not trust is refused before any request is sent, and llm.ca_bundle names
# the CA to trust instead.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use LlmGatewayTest;

# self-signed certificates: one for localhost, one for a name we never connect to
my $dir = PostgreSQL::Test::Utils::tempdir();
sub make_cert
{
	my ($name, $san) = @_;
	system('openssl', 'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
		'-subj', "/CN=$name", '-addext', "subjectAltName=$san",
		'-keyout', "$dir/$name.key", '-out', "$dir/$name.pem") == 0
	  or die 'openssl could not make a certificate';
	return;
}
make_cert('localhost', 'DNS:localhost,IP:127.0.0.1');
make_cert('elsewhere', 'DNS:elsewhere.invalid');
system("cat '$dir/localhost.pem' '$dir/elsewhere.pem' > '$dir/bundle.pem'") == 0 or die;

my $mock = start_mock('--tls-cert', "$dir/localhost.pem", '--tls-key', "$dir/localhost.key");
my $other = start_mock('--tls-cert', "$dir/elsewhere.pem", '--tls-key', "$dir/elsewhere.key");
my $node = new_node('tls');
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION llm_gateway');
my $port = $mock->port;
$node->safe_psql('postgres', qq{
	SELECT llm.add_provider('secure', 'anthropic', 'https://localhost:$port');
	SELECT llm.set_credential('secure', 'k');
	SELECT llm.add_route('m', 'secure', 'claude-mock');});

my ($ret, $out, $err) = $node->psql('postgres', q{SELECT llm_complete('m', 'over tls')});
isnt($ret, 0, 'an untrusted certificate fails the call');
like($err, qr/LL008|could not reach provider "secure"/, 'as a connection error');
like($err, qr/certificate/i, 'naming the certificate problem');
is($node->safe_psql('postgres', q{SELECT error_code FROM llm.requests ORDER BY id DESC LIMIT 1}),
	'LL008', 'and the log row says so');

# trust the mock's certificate through llm.ca_bundle
$node->append_conf('postgresql.conf', "llm.ca_bundle = '$dir/bundle.pem'\n");
$node->reload;
my $ok = 0;
for (1 .. 50)
{
	($ret, $out, $err) = $node->psql('postgres', q{SELECT llm_complete('m', 'over tls')});
	if ($ret == 0) { $ok = 1; last; }
	select(undef, undef, undef, 0.1);
}
ok($ok, 'with llm.ca_bundle trusting it, the call succeeds');
is($out, 'mock reply to: over tls', 'over HTTPS');

# the host name is verified too: a trusted certificate for another name is refused
my $other_port = $other->port;
# (a key is bound to its origin: another port needs it set again)
$node->safe_psql('postgres', qq{SELECT llm.alter_provider('secure', base_url => 'https://localhost:$other_port');
	SELECT llm.set_credential('secure', 'k');});
($ret, $out, $err) = $node->psql('postgres', q{SELECT llm_complete('m', 'wrong name')});
isnt($ret, 0, 'a trusted certificate for another host name fails the call');
like($err, qr/subject name|host name|hostname/i, 'because the name does not match');
# the handshake fails before any HTTP request is written
is($node->safe_psql('postgres', q{SELECT error_code || ' ' || coalesce(http_status::text, 'no HTTP status') FROM llm.requests ORDER BY id DESC LIMIT 1}),
	'LL008 no HTTP status', 'no HTTP exchange took place');

$node->stop;
$mock->stop;
$other->stop;
done_testing();
