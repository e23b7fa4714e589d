# A provider's "input longer than the context window" answer, end to end:
# with the mock's context=20 every kind refuses 21 words with its real 400;
# the call fails with LL017 and the provider's message, is logged as an
# error with SQLSTATE LL017 after one attempt (fatal: no retry, and the
# alias's second target is not tried), and 20 words succeed.
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

# vertex: a throwaway service-account key whose public half the mock verifies
my $dir = PostgreSQL::Test::Utils::tempdir();
system('openssl', 'genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048',
	'-out', "$dir/sa.pem") == 0 or die 'openssl genpkey failed';
my $sa = JSON::PP->new->canonical->encode({
	type => 'service_account', project_id => 'proj-test', private_key_id => 'kid-1',
	private_key => slurp_file("$dir/sa.pem"), client_email => 'gw@proj-test.iam.gserviceaccount.com',
	token_uri => "$url/token" });
my $pub = `openssl pkey -in $dir/sa.pem -pubout`;
$mock->post('/_mock/config', { vertex_public_key => $pub, directives => 'context=20' })->{success}
  or die 'mock config';

my $node = new_node('context');
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION llm_gateway');

# kind => [base_url, region, secret, the provider's message for 21 words]
my %kinds = (
	anthropic    => [ $url, undef, 'fake-key-for-context-tests', 'prompt is too long: 21 tokens > 20 maximum' ],
	openai       => [ "$url/v1", undef, 'fake-key-for-context-tests',
		"This model's maximum context length is 20 tokens. However, your messages resulted in 21 tokens. Please reduce the length of the messages." ],
	azure_openai => [ $url, undef, 'fake-key-for-context-tests',
		"This model's maximum context length is 20 tokens. However, your messages resulted in 21 tokens. Please reduce the length of the messages." ],
	gemini       => [ $url, undef, 'fake-key-for-context-tests',
		'The input token count (21) exceeds the maximum number of tokens allowed (20).' ],
	vertex       => [ $url, 'us-central1', $sa,
		'The input token count (21) exceeds the maximum number of tokens allowed (20).' ],
	bedrock      => [ $url, 'us-east-1',
		qq({"access_key_id": "AKIDEXAMPLE", "secret_access_key": "$aws"}),
		'Input is too long for requested model.' ],
	ollama       => [ $url, undef, undef, 'the input length exceeds the context length' ],
);
my @kinds = qw(anthropic openai azure_openai gemini vertex bedrock ollama);
my $sql = q{
CREATE FUNCTION call_state(alias text, prompt text) RETURNS text LANGUAGE plpgsql AS $$
DECLARE st text; msg text; hint text;
BEGIN
	PERFORM llm_complete(alias, prompt);
	RETURN 'ok';
EXCEPTION WHEN OTHERS THEN
	GET STACKED DIAGNOSTICS st = RETURNED_SQLSTATE, msg = MESSAGE_TEXT, hint = PG_EXCEPTION_HINT;
	RETURN st || E'\n' || msg || E'\n' || hint;
END $$;
};
for my $k (@kinds)
{
	my ($base, $region, $secret) = @{ $kinds{$k} };
	my $r = defined $region ? "'$region'" : 'NULL';
	$sql .= "SELECT llm.add_provider('p_$k', '$k', '$base', $r);\n";
	$sql .= "SELECT llm.set_credential('p_$k', \$s\$$secret\$s\$);\n" if defined $secret;
	# a second target that a fatal error must not reach
	$sql .= "SELECT llm.add_route('c_$k', 'p_$k', 'model-$k', 0);\n";
	$sql .= "SELECT llm.add_route('c_$k', 'p_$k', 'other-$k', 1);\n";
}
$node->safe_psql('postgres', $sql);

my $w20 = join(' ', map { "w$_" } 1 .. 20);
my $w21 = "$w20 w21";
for my $k (@kinds)
{
	my $msg = $kinds{$k}[3];
	my ($state, $text, $hint) = split /\n/, $node->safe_psql('postgres', "SELECT call_state('c_$k', '$w21')");
	is($state, 'LL017', "$k: 21 words fail with LL017");
	like($text, qr/\Q$msg\E/, "$k: the error carries the provider's message");
	like($hint // '', qr/context window: shorten it; for a conversation, set the route option context_window/, "$k: with the hint");
	is($node->safe_psql('postgres', qq{
		SELECT status || ' ' || error_code || ' ' || attempts || ' ' || http_status || ' '
		       || jsonb_array_length(attempts_detail) || ' ' || (attempts_detail->0->>'provider')
		  FROM llm.requests WHERE alias = 'c_$k' ORDER BY id DESC LIMIT 1}),
		"error LL017 1 400 1 p_$k", "$k: logged as error LL017 after one attempt, no fallback");
	is($node->safe_psql('postgres', "SELECT call_state('c_$k', '$w20')"), 'ok',
		"$k: 20 words are answered");
	is($node->safe_psql('postgres', qq{
		SELECT status || ' ' || attempts FROM llm.requests WHERE alias = 'c_$k' ORDER BY id DESC LIMIT 1}),
		'ok 1', "$k: logged ok");
}

# the mock saw exactly one over-long request per kind (no retry, no fallback)
my $log = $mock->get('/_mock/requests')->{requests};
is(scalar(grep { $_->{context_exceeded} } @$log), scalar(@kinds),
	'one refused request per kind reached the provider');

done_testing();
