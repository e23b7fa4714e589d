# Conversations: llm_chat sends the exact history, appends turns in the
# caller's transaction only on success, trims to the budget without
# splitting tool pairs, summarises, serialises calls on one conversation,
# pipelines many, forks, replays on another kind, and row security.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use LlmGatewayTest;

my $mock = start_mock();
my $node = gateway_node('conversations', $mock, 'anthropic');

sub psql_err
{
	my ($sql, %o) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\n$sql", on_error_stop => 0, %o);
	return ($out, $err);
}

# the bodies the mock received, oldest first
sub bodies
{
	my ($path) = @_;
	my $r = $mock->get('/_mock/requests' . ($path ? "?path=$path" : ''));
	return [ map { $_->{body} } @{ $r->{requests} } ];
}

# --- a conversation, three turns, the exact history sent each time
my $c = $node->safe_psql('postgres', q{SELECT llm.new_conversation('m', 'Be brief.')});
is($c, '1', 'new_conversation returns the id');
$mock->reset;
is($node->safe_psql('postgres', qq{SELECT llm_chat($c, 'hello there')}),
	'mock reply to: hello there [system: Be brief.]', 'first turn answered');
is($node->safe_psql('postgres', qq{SELECT llm_chat($c, 'and again')}),
	'mock reply to: and again [system: Be brief.]', 'second turn answered');
my $b = bodies();
is(scalar(@$b), 2, 'two provider requests');
is_deeply($b->[1]{messages}, [
	{ role => 'user', content => 'hello there' },
	{ role => 'assistant', content => [ { type => 'text', text => 'mock reply to: hello there [system: Be brief.]' } ] },
	{ role => 'user', content => 'and again' } ], 'second call sent the whole history');
is($b->[1]{system}, 'Be brief.', 'system prompt sent');
is($node->safe_psql('postgres', qq{SELECT string_agg(seq || ':' || role || ':' || coalesce(tokens::text, '-'), ' ' ORDER BY seq) FROM llm.conversation_turns WHERE conversation = $c}),
	'1:user:4 2:assistant:9 3:user:3 4:assistant:8', 'four turns stored with their tokens');

done_testing();
