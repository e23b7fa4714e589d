# Embeddings end to end through the worker and the mock provider: exact
# vectors, the array form's order, the dimensions option, coalescing of a
# pipelined statement's calls into few provider requests with one log row
# per call and exact token shares, the dimension rule at add_route and at
# answer time, fallback from a failing target, and a kind without
# embeddings.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use Time::HiRes qw(usleep);
use LlmGatewayTest;

my $mock = start_mock();
my $node = gateway_node('embed', $mock, 'openai');
my $url = $mock->url;

sub last_request
{
	my $r = $mock->get('/_mock/requests?last=1')->{requests};
	return $r->[-1];
}

sub embed_requests
{
	return $mock->get('/_mock/stats')->{by_path}{'/v1/embeddings'} // 0;
}

$node->safe_psql('postgres', q{SELECT llm.add_route('e', 'mock', 'emb', options => '{"dimensions": 8}')});

# one input: the exact vector, real[] of the route's dimension
is($node->safe_psql('postgres', q{SELECT llm_embed('e', 'hello world') = } . mock_embedding(q{'hello world'}, 8)),
	't', 'llm_embed returns the exact vector');
my $req = last_request();
is($req->{path}, '/v1/embeddings', 'sent to the embeddings endpoint');
is_deeply($req->{body}, { model => 'emb', input => ['hello world'], encoding_format => 'float', dimensions => 8 },
	'the request body: model, input array, float, the route\'s dimensions');
is($node->safe_psql('postgres', q{SELECT status || ' ' || input_tokens || ' ' || output_tokens || ' ' || (request_body->'embed'->'input')::text
	FROM llm.requests WHERE alias = 'e' ORDER BY id DESC LIMIT 1}),
	'ok 2 0 ["hello world"]', 'its log row: ok, the provider\'s 2 tokens, the input');

# a quota on output tokens does not hold embedding calls back: they
# reserve and use no output (before, each reserved 4096 and was refused)
$node->safe_psql('postgres', q{SELECT llm.set_quota('e_out', 'output_tokens', 10, 'day', alias => 'e')});
is($node->safe_psql('postgres', q{SELECT count(llm_embed('e', 'quota ' || i)) FROM generate_series(1, 3) i}),
	'3', 'an output-token quota of 10 admits embedding calls');
is($node->safe_psql('postgres', q{SELECT used || '/' || reserved FROM llm.quota_status WHERE quota = 'e_out'}),
	'0/0', 'and counts no output tokens for them');
$node->safe_psql('postgres', q{SELECT llm.drop_quota('e_out')});

# dimensions option: sent, and the vector has that size
is($node->safe_psql('postgres', q{SELECT llm_embed('e', 'x', '{"dimensions": 3}') = } . mock_embedding(q{'x'}, 3)),
	't', 'dimensions option: a vector of 3');
is(last_request()->{body}{dimensions}, 3, 'and the provider was asked for 3');

# input_type is accepted and not sent to OpenAI (its models take none)
is($node->safe_psql('postgres', q{SELECT llm_embed('e', 'q', '{"input_type": "query"}') = } . mock_embedding(q{'q'}, 8)),
	't', 'input_type query: the same vector from OpenAI');
ok(!exists last_request()->{body}{input_type}, 'and no input_type in the request');

# azure_openai: the deployment URL with api-version, the key as api-key
$node->safe_psql('postgres', qq{
	SELECT llm.add_provider('az', 'azure_openai', '$url', options => '{"api_version": "2024-10-21"}');
	SELECT llm.set_credential('az', 'azkey');
	SELECT llm.add_route('az', 'az', 'my-emb-d4', options => '{"dimensions": 4}');});
is($node->safe_psql('postgres', q{SELECT llm_embed('az', 'azure text') = } . mock_embedding(q{'azure text'}, 4)),
	't', 'azure_openai embeddings through the deployment endpoint');
$req = last_request();
is($req->{path} . '?' . $req->{query} . ' ' . $req->{headers}{'api-key'}, '/openai/deployments/my-emb-d4/embeddings?api-version=2024-10-21 azkey',
	'sent to the deployment URL with api-version and the api-key header');

# the array form keeps input order, even when the provider answers out of order
is($node->safe_psql('postgres', q{
	SELECT string_agg(ordinality || ':' || (embedding = } . mock_embedding(q{t.input}, 8) . q{)::text, ',' ORDER BY ordinality)
	  FROM llm_embed('e', ARRAY['one', 'two two', 'three [[mock:embed_reverse]]']) e
	  JOIN unnest(ARRAY['one', 'two two', 'three [[mock:embed_reverse]]']) WITH ORDINALITY t(input, n) ON t.n = e.ordinality}),
	'1:true,2:true,3:true', 'llm_embed(text[]) returns one row per input in order, the answer reordered by index');

# coalescing: a pipelined statement over 1,000 rows makes few provider requests
$node->safe_psql('postgres', q{CREATE TABLE docs AS
	SELECT i, repeat('w ', i % 4) || 'doc ' || i AS body FROM generate_series(1, 1000) i});
$mock->reset;
like($node->safe_psql('postgres', q{EXPLAIN (COSTS OFF) SELECT i, llm_embed('e', body) FROM docs}),
	qr/LLM Pipeline/, 'llm_embed is pipelined');
$node->safe_psql('postgres', q{CREATE TABLE out AS SELECT i, body, llm_embed('e', body) AS v FROM docs});
my $n = embed_requests();
cmp_ok($n, '<=', 100, "1,000 pipelined calls made $n provider requests (<= 100)");
cmp_ok($n, '>=', 1, 'and at least one');
is($node->safe_psql('postgres', q{SELECT count(*) FROM out WHERE v = } . mock_embedding('body', 8)),
	'1000', 'every row got the vector of its own text');
# the provider's usage: the words of each input (mock), summed over every request
my $words = 0;
$words += scalar(() = (('w ' x ($_ % 4)) . "doc $_") =~ /\S+/g) for 1 .. 1000;
is($node->safe_psql('postgres', q{SELECT count(*) || ' ' || sum(input_tokens) FROM llm.requests
	WHERE alias = 'e' AND status = 'ok' AND request_body::text LIKE '%doc %'}),
	"1000 $words", 'one log row per call, and their tokens add up to the provider\'s usage exactly');
is($node->safe_psql('postgres', q{SELECT count(*) FROM llm.requests
	WHERE alias = 'e' AND request_body::text LIKE '%doc %' AND (input_tokens < 1 OR attempts <> 1)}),
	'0', 'each row has its share (>= 1 token here) and one attempt');

# the dimension rule when a target is added
my ($rc, $out, $err) = $node->psql('postgres',
	q{SELECT llm.add_route('e', 'mock', 'emb-d12', options => '{"dimensions": 12}')});
like($err, qr/targets of alias "e" must agree on the embedding dimension: 12 here, 8 for target/,
	'a target of another dimension is refused at add_route');
($rc, $out, $err) = $node->psql('postgres', q{\set VERBOSITY verbose
	SELECT llm.add_route('e', 'mock', 'emb-d12', options => '{"dimensions": 12}')});
like($err, qr/LL016/, 'with SQLSTATE LL016');

# ... and at answer time: a provider that ignores the size asked for
($rc, $out, $err) = $node->psql('postgres', q{\set VERBOSITY verbose
	SELECT llm_embed('e', 'odd [[mock:embed_dim=5]]')});
like($err, qr/LL016: provider "mock" answered HTTP 200 with an answer the gateway cannot use: the provider returned embeddings of dimension 5, not the 8 asked for/,
	'a vector of another size than the route\'s fails with LL016');
is($node->safe_psql('postgres', q{SELECT status || ' ' || error_code FROM llm.requests WHERE request_body::text LIKE '%embed_dim=5%'}),
	'error LL016', 'and its log row says so');

# fallback: the first target fails (500 from a provider whose header makes the mock fail)
$node->safe_psql('postgres', qq{
	SELECT llm.add_provider('failing', 'openai', '$url/v1', options => '{"headers": {"x-mock": "status=500"}}');
	SELECT llm.set_credential('failing', 'k');
	SELECT llm.add_route('f', 'failing', 'emb', priority => 0, options => '{"max_attempts": 1}');
	SELECT llm.add_route('f', 'mock', 'emb', priority => 1);});
is($node->safe_psql('postgres', q{SELECT llm_embed('f', 'fall over') = } . mock_embedding(q{'fall over'}, 8)),
	't', 'an alias whose first target fails falls over to the next');
is($node->safe_psql('postgres', q{SELECT provider || ' ' || attempts || ' ' || (attempts_detail->0->>'http_status')
	FROM llm.requests WHERE alias = 'f' ORDER BY id DESC LIMIT 1}),
	'mock 2 500', 'logged: answered by mock after a 500 from the first target');

# a failed batch fails each of its calls as a single call would: 200 pipelined
# calls, coalesced, get a 500 from the first target and each falls over
$mock->reset;
$node->safe_psql('postgres', q{CREATE TABLE fo AS SELECT i, llm_embed('f', 'fo ' || i) AS v FROM generate_series(1, 200) i});
is($node->safe_psql('postgres', q{SELECT count(*) FROM fo WHERE v = } . mock_embedding(q{'fo ' || i}, 8)),
	'200', 'all 200 calls of failed batches fell over and got their own vectors');
# (the calls of the first failed batch each report the failure to the
# breaker, as single calls would, so it opens and the later calls go
# straight to the second target)
is($node->safe_psql('postgres', q{SELECT count(*) || ' ' || bool_and(attempts = 1 OR attempts_detail->0->>'http_status' = '500')
	   || ' ' || (count(*) FILTER (WHERE attempts = 2) > 0)
	FROM llm.requests WHERE alias = 'f' AND request_body::text LIKE '%"fo %' AND status = 'ok' AND provider = 'mock'}),
	'200 true true', 'each with its own row answered by the second target, those of failed batches after their 500');
my $fo = $mock->get('/_mock/stats')->{requests};
cmp_ok($fo, '<=', 40, "in $fo provider requests, both targets together");

# on_error null: a failed call is NULL
is($node->safe_psql('postgres', q{SELECT llm_embed('e', 'x [[mock:status=400]]', '{"on_error": "null"}') IS NULL}),
	't', 'on_error null makes a failed embedding NULL');

# a kind without embeddings: refused at add_route when the target declares a dimension ...
$node->safe_psql('postgres', qq{SELECT llm.add_provider('anth', 'anthropic', '$url');
	SELECT llm.set_credential('anth', 'k');});
($rc, $out, $err) = $node->psql('postgres', q{SELECT llm.add_route('a', 'anth', 'claude', options => '{"dimensions": 8}')});
like($err, qr/provider "anth" \(kind anthropic\) has no embeddings/, 'an embedding target on a kind without embeddings is refused at add_route');
# ... and a clear error at call time otherwise, with nothing sent
$node->safe_psql('postgres', q{SELECT llm.add_route('a', 'anth', 'claude')});
$mock->reset;
($rc, $out, $err) = $node->psql('postgres', q{\set VERBOSITY verbose
	SELECT llm_embed('a', 'x')});
like($err, qr/0A000: provider "anth" \(kind anthropic\) has no embeddings, but alias "a" routes an embedding call to it/,
	'an embedding call routed to a kind without embeddings fails clearly');
is($mock->get('/_mock/stats')->{requests}, 0, 'and nothing was sent');

# provider option embed_batch_size caps a request's inputs, for coalesced
# calls and for the array form
$node->safe_psql('postgres', qq{
	SELECT llm.add_provider('small', 'openai', '$url/v1', options => '{"embed_batch_size": 4}');
	SELECT llm.set_credential('small', 'k');
	SELECT llm.add_route('s', 'small', 'emb');});
$mock->reset;
$node->safe_psql('postgres', q{CREATE TABLE so AS SELECT i, llm_embed('s', 'so ' || i) AS v FROM generate_series(1, 40) i});
my @sizes = map { scalar @{ $_->{body}{input} } } @{ $mock->get('/_mock/requests?path=/v1/embeddings')->{requests} };
is(scalar(grep { $_ > 4 } @sizes), 0, 'embed_batch_size 4: no request carried more than 4 inputs (' . join(',', @sizes) . ')');
cmp_ok(scalar(@sizes), '>=', 10, 'so 40 calls took at least 10 requests');
is($node->safe_psql('postgres', q{SELECT count(*) FROM so WHERE v = } . mock_embedding(q{'so ' || i}, 8)), '40', 'each with its own vector');
($rc, $out, $err) = $node->psql('postgres', q{\set VERBOSITY verbose
	SELECT * FROM llm_embed('s', ARRAY['a', 'b', 'c', 'd', 'e'])});
like($err, qr/54000: the call has 5 inputs, more than provider "small" takes in one request \(4\)/,
	'an array of more inputs than the provider takes is refused, unsent');

# ... and so does llm.max_response_bytes: 3000 bytes / (8 dims x 24 bytes) = 15 vectors
$node->append_conf('postgresql.conf', 'llm.max_response_bytes = 3000');
$node->reload;
$mock->reset;
$node->safe_psql('postgres', q{CREATE TABLE rc AS SELECT i, llm_embed('e', 'rc ' || i) AS v FROM generate_series(1, 60) i});
@sizes = map { scalar @{ $_->{body}{input} } } @{ $mock->get('/_mock/requests?path=/v1/embeddings')->{requests} };
is(scalar(grep { $_ > 15 } @sizes), 0, 'llm.max_response_bytes bounds a coalesced batch (' . join(',', @sizes) . ')');
is($node->safe_psql('postgres', q{SELECT count(*) FROM rc WHERE v = } . mock_embedding(q{'rc ' || i}, 8)), '60', 'and every call got its vector');
$node->append_conf('postgresql.conf', 'llm.max_response_bytes = 16MB');
$node->reload;

# calls that leave their batch (statement timeout): before it is sent, and while it is out
$node->append_conf('postgresql.conf', 'llm.embed_batch_wait_ms = 3000');
$node->reload;
$mock->reset;
($rc, $out, $err) = $node->psql('postgres', q{SET statement_timeout = '300ms';
	SELECT i, llm_embed('e', 'held ' || i) FROM generate_series(1, 30) i});
like($err, qr/statement timeout/, 'a statement whose calls wait in an open batch times out');
$node->append_conf('postgresql.conf', 'llm.embed_batch_wait_ms = 5');
$node->reload;
($rc, $out, $err) = $node->psql('postgres', q{SET statement_timeout = '300ms';
	SELECT i, llm_embed('e', 'slow ' || i || ' [[mock:latency=1500]]') FROM generate_series(1, 30) i});
like($err, qr/statement timeout/, 'and one whose batch is out');
my @sent = map { join(' ', @{ $_->{body}{input} }) } @{ $mock->get('/_mock/requests?path=/v1/embeddings')->{requests} };
is(scalar(grep { /held/ } @sent), 0, 'the open batch was never sent');
cmp_ok(scalar(grep { /slow/ } @sent), '>=', 1, 'the other was');
$node->poll_query_until('postgres', q{SELECT count(*) FILTER (WHERE status <> 'cancelled') = 0
	  AND count(*) FILTER (WHERE request_body::text LIKE '%held %') > 0
	  AND count(*) FILTER (WHERE request_body::text LIKE '%slow %') > 0
	FROM llm.requests WHERE request_body::text LIKE '%held %' OR request_body::text LIKE '%slow %'})
  or diag('not every cancelled call was logged as cancelled');
is($node->safe_psql('postgres', q{SELECT string_agg(DISTINCT status, ',') FROM llm.requests
	WHERE request_body::text LIKE '%held %' OR request_body::text LIKE '%slow %'}),
	'cancelled', 'every call that left its batch is logged cancelled');
# the batch that was out comes back to a batch whose calls all left
for (my $i = 0; $i < 200 && $mock->get('/_mock/stats')->{in_flight} > 0; $i++) { usleep(50_000); }
is($mock->get('/_mock/stats')->{in_flight}, 0, 'the batch that was out has finished');
is($node->safe_psql('postgres', q{SELECT llm_embed('e', 'after') = } . mock_embedding(q{'after'}, 8)),
	't', 'the worker serves embeddings after that');

# options are checked before anything is sent
$mock->reset;
($rc, $out, $err) = $node->psql('postgres', q{SELECT llm_embed('e', 'x', '{"max_tokens": 5}')});
like($err, qr/unknown option "max_tokens"/, 'an unknown option is an error');
($rc, $out, $err) = $node->psql('postgres', q{SELECT llm_embed('e', 'x', '{"input_type": "passage"}')});
like($err, qr/option "input_type" must be "query" or "document"/, 'input_type is query or document');
is($mock->get('/_mock/stats')->{requests}, 0, 'none of them was sent');

done_testing();
