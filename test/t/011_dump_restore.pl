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

# a conversation with two turns, a fork of it and a share (pg_dump keeps the
# conversation tables as extension configuration)
my $conv = $old->safe_psql('postgres', q{SELECT llm.new_conversation('m', 'Be brief.', '{"title": "dumped"}')});
is($old->safe_psql('postgres', "SELECT llm_chat($conv, 'turn one')"), 'mock reply to: turn one [system: Be brief.]',
	'the source conversation: first turn');
is($old->safe_psql('postgres', "SELECT llm_chat($conv, 'turn two')"), 'mock reply to: turn two [system: Be brief.]',
	'the source conversation: second turn');
my $fork = $old->safe_psql('postgres', "SELECT llm.fork_conversation($conv, 2)");
$old->safe_psql('postgres', "CREATE ROLE conv_reader; SELECT llm.share_conversation($conv, 'conv_reader', false)");
# every row of the four tables, as text
my $conv_rows = q{
	SELECT string_agg(r, E'\n' ORDER BY r) FROM (
		SELECT 'c ' || c::text AS r FROM llm.conversations c
		UNION ALL SELECT 't ' || t::text FROM llm.conversation_turns t
		UNION ALL SELECT 's ' || s::text FROM llm.conversation_shares s
		UNION ALL SELECT 'l ' || l::text FROM llm.conversation_lineage l) x};
my $rows_before = $old->safe_psql('postgres', $conv_rows);
is($old->safe_psql('postgres', q{SELECT (SELECT count(*) FROM llm.conversations) || '/' || (SELECT count(*) FROM llm.conversation_turns)
	|| '/' || (SELECT count(*) FROM llm.conversation_shares) || '/' || (SELECT count(*) FROM llm.conversation_lineage)}),
	'2/4/1/1', 'the source has two conversations, four turns, a share and a lineage row');

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
is($new->safe_psql('postgres', q{SELECT count(*) FROM llm.requests}), '3', 'the request log restored');
is($new->safe_psql('postgres', $conv_rows), $rows_before, 'the conversations, turns, shares and lineage restored row for row');
is($new->safe_psql('postgres', "SELECT string_agg(seq || ':' || role, ' ' ORDER BY seq) FROM llm.conversation_history($fork)"),
	'1:user 2:assistant', 'the restored fork reads its parent\'s turns');
is($new->safe_psql('postgres', q{SELECT llm_complete('m', 'after the restore')}), 'mock reply to: after the restore',
	'the restored gateway decrypts the key and calls the provider');
is($new->safe_psql('postgres', q{SELECT count(DISTINCT id) FROM llm.requests}), '4',
	'new log rows do not collide with restored ones');
my $recv = $mock->get('/_mock/requests?last=1')->{requests}[0];
is($recv->{headers}{'x-api-key'}, 'k', 'with the same key as before');

# the restored conversation continues: the whole history is sent, seq goes on
is($new->safe_psql('postgres', "SELECT llm_chat($conv, 'turn three')"), 'mock reply to: turn three [system: Be brief.]',
	'llm_chat continues the restored conversation');
$recv = $mock->get('/_mock/requests?last=1')->{requests}[0];
my @sent = map {
	my $c = $_->{content};
	$_->{role} . ':' . (ref $c ? join('', map { $_->{text} // '' } @$c) : $c)
} @{ $recv->{body}{messages} };
is_deeply(\@sent,
	[ 'user:turn one', 'assistant:mock reply to: turn one [system: Be brief.]',
	  'user:turn two', 'assistant:mock reply to: turn two [system: Be brief.]', 'user:turn three' ],
	'with the whole restored history');
is($recv->{body}{system}, 'Be brief.', 'and the restored system prompt');
is($new->safe_psql('postgres', "SELECT string_agg(seq || ':' || role, ' ' ORDER BY seq) FROM llm.conversation_turns WHERE conversation = $conv"),
	'1:user 2:assistant 3:user 4:assistant 5:user 6:assistant', 'the new turns continue the restored seq');
my $next = $new->safe_psql('postgres', q{SELECT llm.new_conversation('m')});
cmp_ok($next, '>', $fork, 'a new conversation after the restore takes a new id (the identity sequence was restored)');
is($new->safe_psql('postgres', q{SELECT count(DISTINCT id) FROM llm.conversations}), '3', 'no id collides');

$old->stop;
$new->stop;
$mock->stop;
done_testing();
