# Bedrock embeddings end to end (InvokeModel through the worker to the mock,
# SigV4 verified): exact vectors for Titan text v2 and Cohere embed, the
# bodies the mock received, dimensions, input_type -> Cohere's input_type,
# Titan's one input per request (200 pipelined rows = 200 requests) and
# Cohere's coalescing (200 pipelined rows in a few requests), a wrong
# secret -> LL001 with the secret nowhere.
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
my $node = new_node('embed_bedrock');
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION llm_gateway');
$node->safe_psql('postgres', qq{
	SELECT llm.add_provider('br', 'bedrock', '$url', 'us-east-1');
	SELECT llm.set_credential('br', '{"access_key_id": "AKIDEXAMPLE", "secret_access_key": "$secret"}');
	SELECT llm.add_route('titan', 'br', 'amazon.titan-embed-text-v2:0', options => '{"dimensions": 4}');
	SELECT llm.add_route('cohere', 'br', 'cohere.embed-english-v3');
	SELECT llm.add_provider('badbr', 'bedrock', '$url', 'us-east-1');
	SELECT llm.set_credential('badbr', '{"access_key_id": "AKIDEXAMPLE", "secret_access_key": "$wrong"}');
	SELECT llm.add_route('bad', 'badbr', 'cohere.embed-english-v3', 0, 1, '{"max_attempts": 1}');});

sub last_request { return $mock->get('/_mock/requests?last=1')->{requests}[0]; }

my $titan_path = '/model/amazon.titan-embed-text-v2%3A0/invoke';
my $cohere_path = '/model/cohere.embed-english-v3/invoke';

# --- Titan v2: the exact vector of the route's dimension, signed
my ($ret, $out, $err) = $node->psql('postgres', q{SELECT llm_embed('titan', 'hello titan') = } . mock_embedding(q{'hello titan'}, 4));
is($out, 't', 'Titan: llm_embed returns the exact vector') or diag($err);
my $r = last_request();
is($r->{path}, $titan_path, "sent to InvokeModel, the version's ':' as %3A");
is_deeply($r->{body}, { inputText => 'hello titan', dimensions => 4, normalize => JSON::PP::true },
	'the Titan body: inputText, dimensions, normalize');
is($r->{aws_auth}{verified}, JSON::PP::true, 'the mock recomputed the same signature');
is(join(',', map { $r->{aws_auth}{$_} } qw(access_key region service SignedHeaders)),
	'AKIDEXAMPLE,us-east-1,bedrock,content-type;host;x-amz-date', 'credential scope and signed headers');
is($node->safe_psql('postgres', q{SELECT status || ' ' || input_tokens || ' ' || output_tokens FROM llm.requests
	WHERE alias = 'titan' ORDER BY id DESC LIMIT 1}), 'ok 2 0', "its log row: ok, Titan's inputTextTokenCount");

# dimensions from the call's options
is($node->safe_psql('postgres', q{SELECT llm_embed('titan', 'x', '{"dimensions": 3}') = } . mock_embedding(q{'x'}, 3)),
	't', 'Titan: the dimensions option gives a vector of 3');
is(last_request()->{body}{dimensions}, 3, 'and Titan was asked for 3');

# Titan takes one input per request: an array call of two is refused, nothing sent
$mock->reset;
($ret, $out, $err) = $node->psql('postgres', q{\set VERBOSITY verbose
	SELECT * FROM llm_embed('titan', ARRAY['a', 'b'])});
like($err, qr/54000: the call has 2 inputs, more than provider "br" takes in one request \(1\)/,
	'Titan: an array call of two inputs is refused (one input per request)');
is($mock->get('/_mock/stats')->{requests}, 0, 'and nothing was sent');

# --- Cohere: the array form, input order, input_type mapped
is($node->safe_psql('postgres', q{
	SELECT string_agg(e.ordinality || ':' || (e.embedding = } . mock_embedding(q{t.input}, 8) . q{)::text, ',' ORDER BY e.ordinality)
	  FROM llm_embed('cohere', ARRAY['one', 'two two', 'three'], '{"input_type": "query"}') e
	  JOIN unnest(ARRAY['one', 'two two', 'three']) WITH ORDINALITY t(input, n) ON t.n = e.ordinality}),
	'1:true,2:true,3:true', 'Cohere: one exact vector per input, in order');
$r = last_request();
is($r->{path}, $cohere_path, 'sent to the Cohere model\'s InvokeModel');
is_deeply($r->{body}, { texts => ['one', 'two two', 'three'], input_type => 'search_query', embedding_types => ['float'] },
	'the Cohere body: texts, input_type query -> search_query, float');
is($r->{aws_auth}{verified}, JSON::PP::true, 'signature verified');
is($node->safe_psql('postgres', q{SELECT input_tokens FROM llm.requests WHERE alias = 'cohere' ORDER BY id DESC LIMIT 1}),
	'4', "Cohere's tokens from the x-amzn-bedrock-input-token-count header (4 words)");
is($node->safe_psql('postgres', q{SELECT llm_embed('cohere', 'doc', '{"input_type": "document"}') = } . mock_embedding(q{'doc'}, 8)),
	't', 'Cohere: a single input');
is(last_request()->{body}{input_type}, 'search_document', 'input_type document -> search_document');
$node->safe_psql('postgres', q{SELECT llm_embed('cohere', 'plain')});
is(last_request()->{body}{input_type}, 'search_document', 'no input_type -> search_document');

# --- pipelined: Titan one request per row, Cohere coalesced
$node->safe_psql('postgres', q{CREATE TABLE docs AS SELECT i, 'doc ' || i AS body FROM generate_series(1, 200) i});
like($node->safe_psql('postgres', q{EXPLAIN (COSTS OFF) SELECT i, llm_embed('titan', body) FROM docs}),
	qr/LLM Pipeline/, 'llm_embed is pipelined');
$mock->reset;
$node->safe_psql('postgres', q{CREATE TABLE t_out AS SELECT i, body, llm_embed('titan', body) AS v FROM docs});
is($mock->get('/_mock/stats')->{by_path}{$titan_path}, 200, 'Titan: 200 pipelined rows = 200 requests (one input each)');
is($node->safe_psql('postgres', q{SELECT count(*) FROM t_out WHERE v = } . mock_embedding('body', 4)),
	'200', 'every Titan row got the vector of its own text');
$mock->reset;
$node->safe_psql('postgres', q{CREATE TABLE c_out AS SELECT i, body, llm_embed('cohere', body) AS v FROM docs});
my $n = $mock->get('/_mock/stats')->{by_path}{$cohere_path} // 0;
cmp_ok($n, '>=', 3, "Cohere: 200 pipelined rows in $n requests (at least 3: 96 texts at most)");
cmp_ok($n, '<=', 20, 'and at most 20');
my $max = 0;
for my $q (@{ $mock->get('/_mock/requests?path=/model/')->{requests} })
{
	my $k = scalar @{ $q->{body}{texts} };
	$max = $k if $k > $max;
}
cmp_ok($max, '<=', 96, "no Cohere request carried more than 96 texts ($max)");
cmp_ok($max, '>', 1, 'and they were coalesced');
is($node->safe_psql('postgres', q{SELECT count(*) FROM c_out WHERE v = } . mock_embedding('body', 8)),
	'200', 'every Cohere row got the vector of its own text');
is($node->safe_psql('postgres', q{SELECT count(*) FROM llm.requests WHERE alias = 'cohere' AND status = 'ok'
	AND request_body::text LIKE '%doc %'}), '200', 'one log row per call');
is($node->safe_psql('postgres', q{SELECT sum(input_tokens) FROM llm.requests WHERE alias = 'cohere' AND status = 'ok'
	AND request_body::text LIKE '%doc %'}), '400', 'and their tokens add up to the header counts (2 words each)');

# --- a wrong secret: LL001, the secret in no error or log row
($ret, $out, $err) = $node->psql('postgres', q{\set VERBOSITY verbose
	SELECT llm_embed('bad', 'refused')});
like($err, qr/LL001: .*signature we calculated does not match/, 'a wrong secret fails with LL001 and Bedrock\'s message');
is(last_request()->{aws_auth}{verified}, JSON::PP::false, 'the mock did not verify it');
unlike($err, qr/\Q$wrong\E/, 'the secret is not in the error');
is($node->safe_psql('postgres', q{SELECT count(*) FROM llm.requests WHERE alias = 'bad'
	AND (row_to_json(requests)::text LIKE '%WRONGsecret%')}), '0', 'nor in the log');
is($node->safe_psql('postgres', q{SELECT status || ' ' || error_code FROM llm.requests WHERE alias = 'bad' ORDER BY id DESC LIMIT 1}),
	'error LL001', 'its log row: error LL001');

# --- an unsupported model: a clear error, nothing sent
$node->safe_psql('postgres', q{SELECT llm.add_route('v1', 'br', 'amazon.titan-embed-text-v1')});
$mock->reset;
($ret, $out, $err) = $node->psql('postgres', q{\set VERBOSITY verbose
	SELECT llm_embed('v1', 'x')});
like($err, qr/0A000: bedrock embeddings support the model families amazon\.titan-embed-text-v2\* and cohere\.embed-\*, not "amazon\.titan-embed-text-v1"/,
	'another model id fails naming the supported families');
is($mock->get('/_mock/stats')->{requests}, 0, 'and nothing was sent');

$node->stop;
$mock->stop;
done_testing();
