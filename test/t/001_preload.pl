# The library refuses to work unless preloaded, and says how to fix it.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use LlmGatewayTest;

my $plain = PostgreSQL::Test::Cluster->new('not_preloaded');
$plain->init;
$plain->start;

my ($ret, $out, $err) = $plain->psql('postgres', 'CREATE EXTENSION llm_gateway');
isnt($ret, 0, 'CREATE EXTENSION fails without preloading');
like($err, qr/llm_gateway must be loaded via shared_preload_libraries/, 'error names the requirement');
like($err, qr/HINT:\s+Add llm_gateway to shared_preload_libraries in postgresql.conf and restart the server/,
	'hint says how to fix it');
is($plain->safe_psql('postgres', "SELECT count(*) FROM pg_namespace WHERE nspname = 'llm'"),
	'0', 'failed CREATE EXTENSION leaves no schema behind');

($ret, $out, $err) = $plain->psql('postgres', "LOAD 'llm_gateway'");
isnt($ret, 0, 'LOAD fails without preloading');
like($err, qr/must be loaded via shared_preload_libraries/, 'LOAD error is the same clear message');
$plain->stop;

my $node = new_node('preloaded');
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION llm_gateway');
is($node->safe_psql('postgres', 'SELECT llm.version()'),
	$node->safe_psql('postgres', "SELECT extversion FROM pg_extension WHERE extname = 'llm_gateway'"),
	'preloaded: llm.version() matches the installed version');
$node->stop;

done_testing();
