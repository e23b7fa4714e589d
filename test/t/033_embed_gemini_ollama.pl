# Embeddings of the gemini (batchEmbedContents) and ollama (/api/embed)
# kinds end to end through the worker and the mock provider: exact vectors,
# the request bodies (taskType, outputDimensionality, dimensions), the
# tokens logged, a pipelined 200-row statement coalesced into few requests
# within each kind's batch limit with order kept, the array form, and an
# alias falling over from a failing gemini target to ollama.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use LlmGatewayTest;

my $mock = start_mock();
my $node = gateway_node('embgo', $mock, 'gemini');
my $url = $mock->url;

sub last_request
{
	my $r = $mock->get('/_mock/requests?last=1')->{requests};
	return $r->[-1];
}

my $gpath = '/v1beta/models/gem-emb:batchEmbedContents';

$node->safe_psql('postgres', qq{
	SELECT llm.set_credential('mock', 'gemkey');
	SELECT llm.add_route('g', 'mock', 'gem-emb', options => '{"dimensions": 8}');
	SELECT llm.add_provider('ol', 'ollama', '$url', options => '{"keep_alive": "1m"}');
	SELECT llm.add_route('o', 'ol', 'ollama-emb', options => '{"dimensions": 8}');});

# ---- gemini ----
is($node->safe_psql('postgres', q{SELECT llm_embed('g', 'hello world') = } . mock_embedding(q{'hello world'}, 8)),
	't', 'gemini: llm_embed returns the exact vector');
my $req = last_request();
is($req->{path}, $gpath, 'sent to models/{model}:batchEmbedContents');
is($req->{headers}{'x-goog-api-key'}, 'gemkey', 'with the key as x-goog-api-key');
is_deeply($req->{body}, { requests => [ { model => 'models/gem-emb', content => { parts => [ { text => 'hello world' } ] },
	outputDimensionality => 8 } ] }, 'the body: one request naming the model, the route\'s size, no taskType');
# Gemini counts no tokens for embeddings: ceil(11 bytes / 4) = 3 is logged
is($node->safe_psql('postgres', q{SELECT status || ' ' || input_tokens || ' ' || output_tokens || ' ' || provider
	FROM llm.requests WHERE alias = 'g' ORDER BY id DESC LIMIT 1}),
	'ok 3 0 mock', 'its log row: ok, the estimated 3 input tokens, no output');

is($node->safe_psql('postgres', q{SELECT llm_embed('g', 'q', '{"input_type": "query", "dimensions": 5}') = } . mock_embedding(q{'q'}, 5)),
	't', 'gemini: input_type query and dimensions 5');
is_deeply([ @{ last_request()->{body}{requests}[0] }{qw(taskType outputDimensionality)} ], [ 'RETRIEVAL_QUERY', 5 ],
	'sent as taskType RETRIEVAL_QUERY and outputDimensionality 5');
$node->safe_psql('postgres', q{SELECT llm_embed('g', 'd', '{"input_type": "document"}')});
is(last_request()->{body}{requests}[0]{taskType}, 'RETRIEVAL_DOCUMENT', 'document -> RETRIEVAL_DOCUMENT');

is($node->safe_psql('postgres', q{
	SELECT string_agg(ordinality || ':' || (embedding = } . mock_embedding(q{t.input}, 8) . q{)::text, ',' ORDER BY ordinality)
	  FROM llm_embed('g', ARRAY['one', 'two two', 'three']) e
	  JOIN unnest(ARRAY['one', 'two two', 'three']) WITH ORDINALITY t(input, n) ON t.n = e.ordinality}),
	'1:true,2:true,3:true', 'gemini: llm_embed(text[]) in one request, rows in input order');
is(scalar @{ last_request()->{body}{requests} }, 3, 'one batchEmbedContents request of 3');

# ---- ollama ----
is($node->safe_psql('postgres', q{SELECT llm_embed('o', 'hello world', '{"input_type": "query"}') = } . mock_embedding(q{'hello world'}, 8)),
	't', 'ollama: llm_embed returns the exact vector');
$req = last_request();
is($req->{path}, '/api/embed', 'sent to /api/embed');
is_deeply($req->{body}, { model => 'ollama-emb', input => ['hello world'], dimensions => 8, keep_alive => '1m' },
	'the body: model, input array, dimensions, keep_alive; no input_type');
ok(!exists $req->{headers}{authorization}, 'no authorization header without a secret');
is($node->safe_psql('postgres', q{SELECT status || ' ' || input_tokens || ' ' || output_tokens || ' ' || provider
	FROM llm.requests WHERE alias = 'o' ORDER BY id DESC LIMIT 1}),
	'ok 2 0 ol', 'its log row: the provider\'s prompt_eval_count (2 words in the mock)');

# ---- coalescing: 200 pipelined rows per kind ----
$node->safe_psql('postgres', q{CREATE TABLE docs AS SELECT i, 'doc ' || i || repeat(' w', i % 3) AS body FROM generate_series(1, 200) i});
for my $k ([ 'g', $gpath, 'requests', 100 ], [ 'o', '/api/embed', 'input', 128 ])
{
	my ($alias, $path, $key, $limit) = @$k;
	$mock->reset;
	$node->safe_psql('postgres', qq{CREATE TABLE out_$alias AS SELECT i, llm_embed('$alias', body) AS v FROM docs});
	my $sent = $mock->get("/_mock/requests?path=$path")->{requests};
	my @sizes = map { scalar @{ $_->{body}{$key} } } @$sent;
	# Gemini counts no tokens: the worker's estimate, ceil(bytes sent / 4) per request
	if ($alias eq 'g')
	{
		my $est = 0;
		for my $r (@$sent)
		{
			my $bytes = 0;
			$bytes += length($_->{content}{parts}[0]{text}) for @{ $r->{body}{requests} };
			$est += int(($bytes + 3) / 4);
		}
		is($node->safe_psql('postgres', q{SELECT sum(input_tokens) FROM llm.requests WHERE alias = 'g' AND request_body::text LIKE '%doc %'}),
			$est, "g: the rows' tokens add up to ceil(bytes / 4) of each request ($est)");
	}
	my $n = scalar @sizes;
	cmp_ok($n, '>=', 2, "$alias: 200 calls need at least 2 requests (limit $limit): $n (" . join(',', @sizes) . ')');
	cmp_ok($n, '<=', 20, "$alias: and were coalesced into at most 20");
	is(scalar(grep { $_ > $limit } @sizes), 0, "$alias: no request carried more than $limit inputs");
	is((eval { my $s = 0; $s += $_ for @sizes; $s }), 200, "$alias: 200 inputs sent in all");
	is($node->safe_psql('postgres', qq{SELECT count(*) FROM out_$alias JOIN docs USING (i) WHERE v = } . mock_embedding('docs.body', 8)),
		'200', "$alias: every row got the vector of its own text");
	is($node->safe_psql('postgres', qq{SELECT count(*) FROM llm.requests WHERE alias = '$alias' AND status = 'ok'
		AND request_body::text LIKE '%doc %'}), '200', "$alias: one log row per call");
}
# ---- fallback: a failing gemini embedding target falls over to ollama ----
$node->safe_psql('postgres', qq{
	SELECT llm.add_provider('gfail', 'gemini', '$url', options => '{"headers": {"x-mock": "status=503"}}');
	SELECT llm.set_credential('gfail', 'k2');
	SELECT llm.add_route('f', 'gfail', 'gem-emb', priority => 0, options => '{"dimensions": 8, "max_attempts": 1}');
	SELECT llm.add_route('f', 'ol', 'ollama-emb', priority => 1, options => '{"dimensions": 8}');});
$mock->reset;
is($node->safe_psql('postgres', q{SELECT llm_embed('f', 'fall over') = } . mock_embedding(q{'fall over'}, 8)),
	't', 'an alias whose gemini target fails falls over to ollama, same vector');
is($node->safe_psql('postgres', q{SELECT provider || ' ' || attempts || ' ' || (attempts_detail->0->>'http_status')
	FROM llm.requests WHERE alias = 'f' ORDER BY id DESC LIMIT 1}),
	'ol 2 503', 'logged: answered by ol after a 503 from the gemini target');
my $by = $mock->get('/_mock/stats')->{by_path};
is(($by->{$gpath} // 0) . ' ' . ($by->{'/api/embed'} // 0), '1 1', 'one request to each endpoint');

# a target of another dimension cannot join the alias, whatever its kind
my ($rc, $out, $err) = $node->psql('postgres',
	q{SELECT llm.add_route('f', 'ol', 'other-emb', options => '{"dimensions": 12}')});
like($err, qr/must agree on the embedding dimension/, 'the dimension rule holds across kinds');

done_testing();
