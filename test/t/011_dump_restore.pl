# pg_dump keeps the gateway's configuration and log: providers, routes,
# credentials (as ciphertext) and requests move to another cluster, and with
# the same master key file the restored gateway calls the provider.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use File::Copy;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use LlmGatewayTest;

my $mock = start_mock();
my $old = gateway_node('dump_source', $mock, 'anthropic');
$old->safe_psql('postgres', q{SELECT llm.add_route('m', 'mock', 'second-model', 1)});
is($old->safe_psql('postgres', q{SELECT llm_complete('m', 'before the dump')}), 'mock reply to: before the dump',
	'the source gateway works');

my $dump = $old->basedir . '/gateway.dump';
$old->command_ok([ 'pg_dump', '-Fc', '-d', $old->connstr('postgres'), '-f', $dump ], 'pg_dump');

my $new = new_node('dump_target');
# the ciphertext is useless without its key: bring the key file along
copy(master_key_file($old), master_key_file($new)) or die "copy key: $!";
chmod(0600, master_key_file($new));
$new->start;
$new->command_ok([ 'pg_restore', '-d', $new->connstr('postgres'), $dump ], 'pg_restore');

is($new->safe_psql('postgres', q{SELECT string_agg(alias || ':' || upstream_model, ',' ORDER BY priority) FROM llm.routes}),
	'm:anthropic-mock,m:second-model', 'routes restored');
is($new->safe_psql('postgres', q{SELECT count(*) FROM llm.credentials}), '1', 'the credential restored (ciphertext)');
is($new->safe_psql('postgres', q{SELECT count(*) FROM llm.requests}), '1', 'the request log restored');
is($new->safe_psql('postgres', q{SELECT llm_complete('m', 'after the restore')}), 'mock reply to: after the restore',
	'the restored gateway decrypts the key and calls the provider');
is($new->safe_psql('postgres', q{SELECT count(DISTINCT id) FROM llm.requests}), '2',
	'new log rows do not collide with restored ones');
my $recv = $mock->get('/_mock/requests?last=1')->{requests}[0];
is($recv->{headers}{'x-api-key'}, 'k', 'with the same key as before');

$old->stop;
$new->stop;
$mock->stop;
done_testing();
