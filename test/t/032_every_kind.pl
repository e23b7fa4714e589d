# Every provider kind behind one canonical shape ("Done when" of the
# providers issue): the same conversation with a tool round trip through
# each kind gives the same canonical answer and the same log row; one alias
# falls over across every kind in turn; llm_extract works through each.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use LlmGatewayTest;

my $aws = 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY';
my $mock = start_mock('--aws-secret-access-key', $aws);
my $url = $mock->url;

# vertex: a throwaway service-account key whose public half the mock's
# token endpoint verifies; the wrong key is another one
my $dir = PostgreSQL::Test::Utils::tempdir();
sub sa_key
{
	my ($name) = @_;
	system('openssl', 'genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048',
		'-out', "$dir/$name.pem") == 0 or die 'openssl genpkey failed';
	my $pem = slurp_file("$dir/$name.pem");
	my $sa = JSON::PP->new->canonical->encode({
		type => 'service_account', project_id => 'proj-test', private_key_id => "kid-$name",
		private_key => $pem, client_email => 'gw@proj-test.iam.gserviceaccount.com',
		token_uri => "$url/token" });
	return ($sa, scalar `openssl pkey -in $dir/$name.pem -pubout`);
}
my ($sa_good, $pub) = sa_key('good');
my ($sa_wrong) = sa_key('wrong');
$mock->post('/_mock/config', { vertex_public_key => $pub })->{success} or die 'mock config';
my $node = new_node('kinds');
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION llm_gateway');

# kind => [base_url, region, secret, wrong secret]
my %kinds = (
	anthropic    => [ $url,       undef,       'k', 'bad-key' ],
	openai       => [ "$url/v1",  undef,       'k', 'bad-key' ],
	azure_openai => [ $url,       undef,       'k', 'bad-key' ],
	gemini       => [ $url,       undef,       'k', 'bad-key' ],
	vertex       => [ $url,       'us-central1', $sa_good, $sa_wrong ],
	bedrock      => [ $url,       'us-east-1',
		qq({"access_key_id": "AKIDEXAMPLE", "secret_access_key": "$aws"}),
		qq({"access_key_id": "AKIDEXAMPLE", "secret_access_key": "WRONG$aws"}) ],
	ollama       => [ $url,       undef,       undef, undef ],
);
my @kinds = qw(anthropic openai azure_openai gemini vertex bedrock ollama);
my $sql = '';
for my $k (@kinds)
{
	my ($base, $region, $secret, $wrong) = @{ $kinds{$k} };
	my $r = defined $region ? "'$region'" : 'NULL';
	$sql .= "SELECT llm.add_provider('p_$k', '$k', '$base', $r);\n";
	$sql .= "SELECT llm.set_credential('p_$k', \$s\$$secret\$s\$);\n" if defined $secret;
	$sql .= "SELECT llm.add_route('k_$k', 'p_$k', 'model-$k');\n";
	next unless defined $wrong;
	$sql .= "SELECT llm.add_provider('bad_$k', '$k', '$base', $r);\n";
	$sql .= "SELECT llm.set_credential('bad_$k', \$s\$$wrong\$s\$);\n";
}
# one alias over every kind: each refuses the key in turn, ollama answers
my $prio = 0;
for my $k (@kinds)
{
	my $p = $k eq 'ollama' ? 'p_ollama' : "bad_$k";
	$sql .= "SELECT llm.add_route('chain', '$p', 'model-$k', $prio, 1, '{\"max_attempts\": 1}');\n";
	$prio++;
}
$node->safe_psql('postgres', $sql);

# --- the same conversation through every kind --------------------------------
my $tools = '{"tools": [{"name": "get_weather", "description": "the weather of a city", "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]}}], "max_tokens": 100}';
my $first = '[{"role": "user", "content": "weather in Paris [[mock:tool]]"}]';

# the parts of an answer that must not depend on the kind: the stop reason,
# the tool calls (name and input) and the text, in order; ids, model names
# and the gateway key are the provider's own
sub canonical
{
	my ($a) = @_;
	my @blocks;
	for my $b (@{ $a->{content} })
	{
		push @blocks, $b->{type} eq 'tool_use' ? "tool_use $b->{name} " . JSON::PP->new->canonical->encode($b->{input})
		  : $b->{type} eq 'text' && $b->{text} !~ /^calling / ? "text $b->{text}" : ();
	}
	return join(' | ', "stop $a->{stop_reason}", "role $a->{role}", "type $a->{type}", @blocks);
}

my (%step1, %step2, %tool_id);
for my $k (@kinds)
{
	my ($ret, $out, $err) = $node->psql('postgres', qq{SELECT llm_messages('k_$k', '$first', '$tools')});
	is($err, '', "$k: the tool call is answered");
	my $a = decode_json($out);
	$step1{$k} = canonical($a);
	my ($use) = grep { $_->{type} eq 'tool_use' } @{ $a->{content} };
	$tool_id{$k} = $use->{id};
	ok(defined $use->{id} && length $use->{id}, "$k: the tool_use block has an id ($use->{id})");
	# the assistant turn goes back as the kind answered it, then the tool's result
	my $history = encode_json([
		{ role => 'user', content => 'weather in Paris [[mock:tool]]' },
		{ role => 'assistant', content => $a->{content} },
		{ role => 'user', content => [ { type => 'tool_result', tool_use_id => $use->{id}, content => 'sunny, 21 C' } ] } ]);
	$history =~ s/'/''/g;
	($ret, $out, $err) = $node->psql('postgres', qq{SELECT llm_messages('k_$k', '$history', '$tools')});
	is($err, '', "$k: the tool result is answered");
	$step2{$k} = canonical(decode_json($out));
}
for my $k (@kinds)
{
	is($step1{$k}, 'stop tool_use | role assistant | type message | tool_use get_weather {"query":"weather in Paris"}',
		"$k: the tool call, canonically");
	is($step2{$k}, 'stop end_turn | role assistant | type message | text tool result was: sunny, 21 C',
		"$k: the answer to the tool result, canonically");
}

# the log rows: the same canonical request for the first turn, and the same
# columns filled for every kind
my $rows = $node->safe_psql('postgres', q{
SELECT alias, status, attempts, provider, upstream_model, error_code IS NULL,
       input_tokens > 0, output_tokens > 0, latency_ms > 0, stop_reason, md5(request_body::text)
  FROM llm.requests WHERE alias LIKE 'k\_%' AND request_body::text NOT LIKE '%tool_result%' ORDER BY id});
my %row = map { my @f = split /\|/; ($f[0] => [@f[1..$#f]]) } split /\n/, $rows;
for my $k (@kinds)
{
	my @f = @{ $row{"k_$k"} };
	is(join(' ', @f[0..3, 4..8]), "ok 1 p_$k model-$k t t t t tool_use", "$k: the log row of the tool call");
	is($f[9], $row{k_anthropic}[9], "$k: the logged request is the same canonical request as anthropic's");
}

# --- one alias falls over across every kind ---------------------------------
my ($ret, $out, $err) = $node->psql('postgres', q{SELECT llm_complete('chain', 'fall over everywhere')});
is($out, 'mock reply to: fall over everywhere', 'the last kind of the chain answers') or diag($err);
is($node->safe_psql('postgres', q{
	SELECT string_agg(a->>'provider' || ':' || coalesce(a->>'error_code', 'ok'), ' ' ORDER BY n)
	  FROM llm.requests, jsonb_array_elements(attempts_detail) WITH ORDINALITY AS x(a, n)
	 WHERE alias = 'chain'}),
	'bad_anthropic:LL001 bad_openai:LL001 bad_azure_openai:LL001 bad_gemini:LL001 bad_vertex:LL001 bad_bedrock:LL001 p_ollama:ok',
	'each kind refused its key (LL001) and fell over to the next kind');

# --- structured output through every kind ------------------------------------
my $schema = '{"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"], "additionalProperties": false}';
for my $k (@kinds)
{
	($ret, $out, $err) = $node->psql('postgres', qq{SELECT jsonb_typeof(llm_extract('k_$k', 'Paris', '$schema')->'query')});
	is("$out$err", 'string', "$k: llm_extract returns an object that follows the schema");
}

$node->stop;
$mock->stop;
done_testing();
