# The harness: a preloaded cluster and the mock provider run side by side.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use LlmGatewayTest;

my $mock = start_mock();
ok($mock->port > 0, 'mock provider reports a port');

my $node = new_node('harness');
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION llm_gateway');
ok($node->safe_psql('postgres', 'SELECT llm.version()') ne '', 'extension answers');

my $r = $mock->post('/v1/messages',
	{ model => 'm', max_tokens => 10, messages => [ { role => 'user', content => 'hello there' } ] },
	{ 'x-api-key' => 'k', 'anthropic-version' => '2023-06-01' });
is($r->{status}, 200, 'mock answers an Anthropic call');
like($r->{content}, qr/mock reply to: hello there/, 'with its deterministic reply');
is($mock->get('/_mock/stats')->{requests}, 1, 'and counts it');

$node->stop;
$mock->stop;
done_testing();
