# The bedrock kind end to end: calls through the worker to the mock with
# SigV4 verification on.  The right secret is answered; a session token is
# sent and signed; model ids with ':' (a version suffix, an ARN) are
# encoded as one path label and still verify; tool use round trips; a wrong
# secret fails with LL001 and the secret appears in no error or log row;
# a route falls over from a refused bedrock target to another kind.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use LlmGatewayTest;

my $secret = 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY';
my $wrong = 'WRONGsecretWRONGsecretWRONGsecret0000000';
my $mock = start_mock('--aws-secret-access-key', $secret);
my $url = $mock->url;
my $node = new_node('bedrock');
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION llm_gateway');
$node->safe_psql('postgres', qq{
	SELECT llm.add_provider('br', 'bedrock', '$url', 'us-east-1');
	SELECT llm.set_credential('br', '{"access_key_id": "AKIDEXAMPLE", "secret_access_key": "$secret"}');
	SELECT llm.add_route('b', 'br', 'anthropic.claude-3-haiku-20240307-v1:0');
	SELECT llm.add_provider('brtok', 'bedrock', '$url', 'eu-west-1');
	SELECT llm.set_credential('brtok', '{"access_key_id": "ASIAEXAMPLE", "secret_access_key": "$secret", "session_token": "FwoGZXIvYXdz+token/=="}');
	SELECT llm.add_route('arn', 'brtok', 'arn:aws:bedrock:eu-west-1:123456789012:inference-profile/eu.anthropic.claude-3-haiku-20240307-v1:0');
	SELECT llm.add_provider('badbr', 'bedrock', '$url', 'us-east-1');
	SELECT llm.set_credential('badbr', '{"access_key_id": "AKIDEXAMPLE", "secret_access_key": "$wrong"}');
	SELECT llm.add_route('bad', 'badbr', 'anthropic.claude-3-haiku-20240307-v1:0', 0, 1, '{"max_attempts": 1}');
	SELECT llm.add_provider('anth', 'anthropic', '$url');
	SELECT llm.set_credential('anth', 'k');
	SELECT llm.add_route('fb', 'badbr', 'anthropic.claude-3-haiku-20240307-v1:0', 0);
	SELECT llm.add_route('fb', 'anth', 'claude-fallback', 1);});

sub last_request { return $mock->get('/_mock/requests?last=1')->{requests}[0]; }

# --- the right secret: answered, and the mock verified the signature
my ($ret, $out, $err) = $node->psql('postgres', q{SELECT llm_complete('b', 'hello bedrock')});
is($out, 'mock reply to: hello bedrock', 'a signed call is answered') or diag($err);
my $r = last_request();
is($r->{path}, '/model/anthropic.claude-3-haiku-20240307-v1%3A0/converse', "the version suffix's ':' is sent as %3A");
is($r->{aws_auth}{verified}, JSON::PP::true, 'the mock recomputed the same signature');
is(join(',', map { $r->{aws_auth}{$_} } qw(access_key region service SignedHeaders)),
	'AKIDEXAMPLE,us-east-1,bedrock,content-type;host;x-amz-date', 'credential scope and signed headers');
unlike(encode_json($r->{headers}), qr/\Q$secret\E/, 'the secret access key is in no header');

# --- session token and an ARN model id (':' and '/' in one label)
($ret, $out, $err) = $node->psql('postgres', q{SELECT llm_complete('arn', 'with a token')});
is($out, 'mock reply to: with a token', 'a call with a session token is answered') or diag($err);
$r = last_request();
is($r->{path}, '/model/arn%3Aaws%3Abedrock%3Aeu-west-1%3A123456789012%3Ainference-profile%2Feu.anthropic.claude-3-haiku-20240307-v1%3A0/converse',
	'an ARN is one encoded path label');
is($r->{headers}{'x-amz-security-token'}, 'FwoGZXIvYXdz+token/==', 'the session token is sent');
is($r->{aws_auth}{SignedHeaders}, 'content-type;host;x-amz-date;x-amz-security-token', 'and signed');
is($r->{aws_auth}{verified}, JSON::PP::true, 'the signature verifies');
is($r->{aws_auth}{region}, 'eu-west-1', "the provider's region is in the scope");

# --- tool use, then the tool result
my $tools = '{"tools": [{"name": "calc", "description": "math", "input_schema": {"type": "object", "properties": {"query": {"type": "string"}}}}], "tool_choice": {"type": "any"}}';
my $answer = $node->safe_psql('postgres',
	qq{SELECT llm_messages('b', '[{"role": "user", "content": "2+2"}]', '$tools')});
my $a = decode_json($answer);
is($a->{stop_reason}, 'tool_use', 'a forced tool call stops with tool_use');
is($a->{content}[0]{type}, 'tool_use', 'the answer is a tool_use block');
like($a->{content}[0]{id}, qr/^tooluse_mock_\d+$/, "Bedrock's toolUseId is the block id");
is_deeply($a->{content}[0]{input}, { query => '2+2' }, 'with its input');
my $id = $a->{content}[0]{id};
$answer = $node->safe_psql('postgres', qq{SELECT llm_messages('b', '[
	{"role": "user", "content": "2+2"},
	{"role": "assistant", "content": [{"type": "tool_use", "id": "$id", "name": "calc", "input": {"query": "2+2"}}]},
	{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "$id", "content": "4"}]}]', '$tools')});
$a = decode_json($answer);
is($a->{content}[0]{text}, 'tool result was: 4', 'the tool result reaches the model as toolResult');
$r = last_request();
is($r->{body}{messages}[2]{content}[0]{toolResult}{toolUseId}, $id, 'with the same toolUseId');
is($r->{body}{messages}[2]{content}[0]{toolResult}{status}, 'success', 'and status success');

# --- structured output: Converse has no schema mode, so a forced tool call
# carries it, and llm_extract gets the tool's input back as the object
my $schema = '{"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"], "additionalProperties": false}';
($ret, $out, $err) = $node->psql('postgres', qq{SELECT llm_extract('b', 'Paris', '$schema')});
is($out, '{"query": "Paris"}', 'llm_extract through bedrock returns the forced tool call\'s input') or diag($err);
$r = last_request();
is($r->{body}{toolConfig}{toolChoice}{tool}{name}, 'json_output', 'the request forces the json_output tool');
is_deeply($r->{body}{toolConfig}{tools}[0]{toolSpec}{inputSchema}{json}, decode_json($schema), 'whose input schema is the schema');

# --- a wrong secret: LL001, and the secret appears nowhere
($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT llm_complete('bad', 'wrong secret')");
like($err, qr/ERROR:  LL001: provider "badbr" returned HTTP 403: The request signature we calculated does not match the signature you provided\./, 'a wrong secret fails with LL001 and Bedrock\'s message');
like($err, qr/DETAIL:  Upstream model "anthropic.claude-3-haiku-20240307-v1:0", provider error type InvalidSignatureException\./, "the detail names Bedrock's exception");
unlike($err, qr/\Q$wrong\E/, 'the error does not contain the secret');
is(last_request()->{aws_auth}{verified}, JSON::PP::false, 'the mock rejected the signature');
is($node->safe_psql('postgres', q{SELECT status || ' ' || error_code || ' ' || http_status FROM llm.requests WHERE alias = 'bad'}),
	'error LL001 403', 'the log row says LL001 / 403');
is($node->safe_psql('postgres', qq{SELECT count(*) FROM llm.requests
	 WHERE concat_ws(' ', error, response_body, attempts_detail::text, request_body::text) LIKE '%$wrong%'
	    OR concat_ws(' ', error, response_body, attempts_detail::text, request_body::text) LIKE '%$secret%'}),
	'0', 'no log row contains a secret access key');

# --- fallback from a refused bedrock target to an anthropic one
($ret, $out, $err) = $node->psql('postgres', q{SELECT llm_complete('fb', 'fall over')});
is($out, 'mock reply to: fall over', 'a refused bedrock target falls over to another kind') or diag($err);
is($node->safe_psql('postgres', q{SELECT provider || ' ' || (attempts_detail->0->>'provider') || ' ' || (attempts_detail->0->>'error_code')
	 FROM llm.requests WHERE alias = 'fb'}),
	'anth badbr LL001', 'the log row names the answering provider and the refused attempt');

$node->stop;
done_testing();
