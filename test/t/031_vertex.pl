# The vertex kind end to end: a service-account key (a throwaway RSA key
# made here) is the credential; the worker signs an RS256 JWT, gets an
# access token from the mock's token endpoint (which checks the signature
# with the public key), and calls the Vertex generateContent path with it.
# One token serves many calls; a token near expiry is refreshed while calls
# go on with the current one; a key the endpoint refuses fails with LL001,
# leaves no key material in llm.requests or the server log, and falls over.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use JSON::PP;
use MIME::Base64 qw(decode_base64);
use Time::HiRes qw(usleep time);
use LlmGatewayTest;

my $dir = PostgreSQL::Test::Utils::tempdir();
sub make_key
{
	my ($name) = @_;
	system('openssl', 'genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048',
		'-out', "$dir/$name.pem", '-quiet') == 0
	  or system('openssl', 'genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048',
		'-out', "$dir/$name.pem") == 0 or die 'openssl genpkey failed';
	my $pem = slurp_file("$dir/$name.pem");
	my $pub = `openssl pkey -in $dir/$name.pem -pubout`;
	return ($pem, $pub);
}
my ($pem, $pub) = make_key('good');
my ($other_pem, undef) = make_key('other');

my $mock = start_mock();
my $url = $mock->url;
sub configure_mock
{
	my (%cfg) = @_;
	my $r = $mock->post('/_mock/config', { vertex_public_key => $pub, %cfg });
	die "config: $r->{content}" unless $r->{success};
}
configure_mock();

sub sa_json
{
	my ($key, $kid) = @_;
	return JSON::PP->new->canonical->encode({
		type => 'service_account', project_id => 'proj-test', private_key_id => $kid,
		private_key => $key, client_email => 'gw@proj-test.iam.gserviceaccount.com',
		client_id => '1', token_uri => 'https://oauth2.googleapis.com/token' });
}
my $sa = sa_json($pem, 'kid-good');
my $sa_bad = sa_json($other_pem, 'kid-other');

my $node = new_node('vertex');
$node->start;
$node->safe_psql('postgres', 'CREATE EXTENSION llm_gateway');
my $opts = qq({"token_url": "$url/token"});
# log_statement = all (the test clusters' default) would log the keys with this statement
$node->safe_psql('postgres', qq{
	SET log_statement = 'none';
	SELECT llm.add_provider('vx', 'vertex', '$url', 'us-central1', '$opts');
	SELECT llm.set_credential('vx', \$sa\$$sa\$sa\$);
	SELECT llm.add_route('v', 'vx', 'gemini-2.0-flash');
	SELECT llm.add_provider('vx2', 'vertex', '$url', 'europe-west4', '{"token_url": "$url/token", "project": "other-proj"}');
	SELECT llm.set_credential('vx2', \$sa\$$sa\$sa\$);
	SELECT llm.add_route('v2', 'vx2', 'gemini-2.0-flash');
	SELECT llm.add_provider('vxbad', 'vertex', '$url', 'us-central1', '$opts');
	SELECT llm.set_credential('vxbad', \$sa\$$sa_bad\$sa\$);
	SELECT llm.add_route('bad', 'vxbad', 'gemini-2.0-flash');
	SELECT llm.add_provider('anth', 'anthropic', '$url');
	SELECT llm.set_credential('anth', 'k');
	SELECT llm.add_route('fb', 'vxbad', 'gemini-2.0-flash', 0);
	SELECT llm.add_route('fb', 'anth', 'claude-fallback', 1);
	SELECT llm.add_route('a', 'anth', 'claude-plain');
	SELECT llm.add_provider('vxslow', 'vertex', '$url', 'us-central1', '$opts');
	SELECT llm.set_credential('vxslow', \$sa\$$sa\$sa\$);
	SELECT llm.add_route('slow', 'vxslow', 'gemini-2.0-flash');
	SELECT llm.add_provider('vxmeta', 'vertex', '$url', 'us-central1', '{"token_url": "http://169.254.169.254/token"}');
	SELECT llm.set_credential('vxmeta', \$sa\$$sa\$sa\$);
	SELECT llm.add_route('meta', 'vxmeta', 'gemini-2.0-flash');});

sub last_request { return $mock->get('/_mock/requests?last=1')->{requests}[0]; }
sub stats { return $mock->get('/_mock/stats'); }
sub b64url_json
{
	my ($s) = @_;
	$s =~ tr{-_}{+/};
	$s .= '=' x (-length($s) % 4);
	return decode_json(decode_base64($s));
}

# --- the first call fetches a token, then calls Vertex with it
my ($ret, $out, $err) = $node->psql('postgres', q{SELECT llm_complete('v', 'hello vertex')});
is($out, 'mock reply to: hello vertex', 'a call through a service-account key is answered') or diag($err);
is(stats()->{token_requests}, 1, 'one token request');
my $r = last_request();
is($r->{path}, '/v1/projects/proj-test/locations/us-central1/publishers/google/models/gemini-2.0-flash:generateContent',
	"the Vertex path, with the key's project_id and the provider's region");
is($r->{headers}{authorization}, 'Bearer ya29.mock-1', 'the call carries the issued access token');
is($r->{headers}{'x-goog-api-key'}, undef, 'and no Gemini API key header');

# the token request: form fields and the JWT the worker signed
my ($tr) = grep { $_->{path} eq '/token' } @{ $mock->get('/_mock/requests')->{requests} };
my %form = map { my ($k, $v) = split /=/, $_, 2; ($k => $v) } split /&/, $tr->{body};
is($form{grant_type}, 'urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer', 'the JWT bearer grant');
is($tr->{headers}{'content-type'}, 'application/x-www-form-urlencoded', 'sent as a form');
my ($h64, $c64) = split /\./, $form{assertion};
is_deeply(b64url_json($h64), { alg => 'RS256', typ => 'JWT', kid => 'kid-good' }, 'JWT header');
my $claims = b64url_json($c64);
is(join(' ', map { $claims->{$_} } qw(iss sub aud scope)),
	"gw\@proj-test.iam.gserviceaccount.com gw\@proj-test.iam.gserviceaccount.com $url/token https://www.googleapis.com/auth/cloud-platform",
	'JWT claims: iss = sub = client_email, aud = the endpoint used (provider option token_url), cloud-platform scope');
is($claims->{exp} - $claims->{iat}, 3600, 'a one-hour assertion');
my $jwt = $form{assertion};

# --- 20 further calls reuse the token
for my $i (1 .. 20)
{
	$out = $node->safe_psql('postgres', "SELECT llm_complete('v', 'again $i')");
	die "call $i: $out" unless $out eq "mock reply to: again $i";
}
is(stats()->{token_requests}, 1, '20 further calls reuse the cached token');
is(last_request()->{headers}{authorization}, 'Bearer ya29.mock-1', 'the same token');

# --- a token close to expiry: refreshed while calls keep being answered.
# expires_in 302 with the 300 s refresh margin: a refresh is due 2 s after issue.
configure_mock(vertex_token_expires_in => 302);
$out = $node->safe_psql('postgres', q{SELECT llm_complete('v2', 'first')});
my $issued_by = time();	# the token was issued before this
is($out, 'mock reply to: first', 'provider vx2: answered');
is(stats()->{token_requests}, 2, 'its own token (cache per provider and credential)');
$r = last_request();
is($r->{headers}{authorization}, 'Bearer ya29.mock-2', 'vx2 uses token 2');
like($r->{path}, qr{^/v1/projects/other-proj/locations/europe-west4/}, 'provider option project overrides the key\'s project_id');
# the passage of time is the point here: wait until the refresh is due
# (2 s after the token was issued), no longer
usleep(50_000) while time() < $issued_by + 2.1;
$out = $node->safe_psql('postgres', q{SELECT llm_complete('v2', 'during refresh')});
is($out, 'mock reply to: during refresh', 'a call while the refresh is due is answered');
my @during = @{ $mock->get('/_mock/requests?path=/v1/projects/other-proj')->{requests} };
is($during[-1]{headers}{authorization}, 'Bearer ya29.mock-2', 'with the current token (the refresh is off the call path)');
for (my $i = 0; $i < 100 && stats()->{tokens_issued} < 3; $i++) { usleep(50_000); }
is(stats()->{tokens_issued}, 3, 'a refresh fetched a new token');
$out = $node->safe_psql('postgres', q{SELECT llm_complete('v2', 'after refresh')});
is($out, 'mock reply to: after refresh', 'answered after the refresh');
my @v2 = @{ $mock->get('/_mock/requests?path=/v1/projects/other-proj')->{requests} };
is($v2[-1]{headers}{authorization}, 'Bearer ya29.mock-3', 'with the new token');
configure_mock();

# --- embeddings on Vertex: :predict with the same token, batched -------------
$node->safe_psql('postgres', q{SELECT llm.add_route('ve', 'vx', 'text-embedding-005', options => '{"dimensions": 6}')});
my $tokens_before = stats()->{token_requests};
is($node->safe_psql('postgres', q{SELECT llm_embed('ve', 'vertex words', '{"input_type": "document"}') = } . mock_embedding(q{'vertex words'}, 6)),
	't', 'llm_embed through vertex returns the exact vector');
$r = last_request();
is($r->{path}, '/v1/projects/proj-test/locations/us-central1/publishers/google/models/text-embedding-005:predict',
	'sent to the model\'s :predict');
is_deeply($r->{body}, { instances => [ { content => 'vertex words', task_type => 'RETRIEVAL_DOCUMENT' } ],
	parameters => { autoTruncate => JSON::PP::false, outputDimensionality => 6 } },
	'instances with the task type, the dimensions, no silent truncation');
is($r->{headers}{authorization}, 'Bearer ya29.mock-1', 'with the cached access token');
is(stats()->{token_requests}, $tokens_before, 'no new token request');
is($node->safe_psql('postgres', q{SELECT input_tokens || ' ' || status FROM llm.requests WHERE alias = 've' ORDER BY id DESC LIMIT 1}),
	'2 ok', "its log row has the prediction's token_count");
my $predicts_before = scalar @{ $mock->get('/_mock/requests?path=/v1/projects/proj-test/locations/us-central1/publishers/google/models/text-embedding-005:predict')->{requests} };
$node->safe_psql('postgres', q{CREATE TABLE vdocs AS SELECT i, 'doc ' || i AS body FROM generate_series(1, 120) i; ANALYZE vdocs;});
is($node->safe_psql('postgres', q{SET llm.statement_concurrency = 64;
	SELECT count(*) FILTER (WHERE e = } . mock_embedding('body', 6) . q{) FROM (SELECT body, llm_embed('ve', body) AS e FROM vdocs) s}),
	'120', '120 pipelined rows: every vector exact');
my $predicts = scalar @{ $mock->get('/_mock/requests?path=/v1/projects/proj-test/locations/us-central1/publishers/google/models/text-embedding-005:predict')->{requests} } - $predicts_before;
cmp_ok($predicts, '<=', 12, "coalesced into $predicts :predict requests");

# --- the fetch does not block the worker: calls parked on one slow token
# fetch (1.5 s) share it, and another kind's call is answered meanwhile
configure_mock(vertex_token_latency_ms => 1500);
my $tokens_before = stats()->{token_requests};
my $hist = sub { qq{'[{"role": "user", "content": "$_[0]"}]'} };
$out = $node->safe_psql('postgres', qq{
SELECT llm_submit('slow', } . $hist->('parked one') . qq{) AS h1 \\gset
SELECT llm_submit('slow', } . $hist->('parked two') . qq{) AS h2 \\gset
SELECT llm_submit('slow', } . $hist->('parked three') . qq{) AS h3 \\gset
SELECT clock_timestamp() AS t0 \\gset
SELECT llm_complete('a', 'meanwhile');
SELECT clock_timestamp() - :'t0' < interval '1 s';
SELECT llm_await(:h1)->'content'->0->>'text';
SELECT llm_await(:h2)->'content'->0->>'text';
SELECT llm_await(:h3)->'content'->0->>'text';
SELECT clock_timestamp() - :'t0' >= interval '1 s';});
is($out, "mock reply to: meanwhile\nt\nmock reply to: parked one\nmock reply to: parked two\nmock reply to: parked three\nt",
	'another call is answered while the token is fetched; the parked calls are answered once it comes');
is(stats()->{token_requests} - $tokens_before, 1, 'three parked calls, one token request');
configure_mock();

# --- the outbound policy applies to the token endpoint (a metadata address)
($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT llm_complete('meta', 'x')");
like($err, qr/ERROR:  42501: provider "vxmeta": token endpoint: /, 'a token_url the outbound policy refuses fails the call') or diag($err);

# --- a key the token endpoint refuses: LL001, no key material anywhere
my $before = stats()->{requests};
($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT llm_complete('bad', 'wrong key')");
like($err, qr{ERROR:  LL001: could not get an access token for provider "vxbad": the token endpoint \Q$url\E/token returned HTTP 400: invalid_grant: Invalid JWT Signature\.},
	'a refused key fails with LL001, naming the provider and what the endpoint said') or diag($err);
my @after = @{ $mock->get('/_mock/requests')->{requests} };
is(scalar(grep { $_->{path} =~ m{^/v1/projects/} && $_->{seq} > $before } @after), 0, 'Vertex was not called');
is($node->safe_psql('postgres', q{SELECT status || ' ' || error_code FROM llm.requests WHERE alias = 'bad'}),
	'error LL001', 'the log row says LL001');

# key material: a line of each private key, the JWTs, the access tokens
my @pem_lines = grep { length($_) > 40 } split /\n/, $pem . $other_pem;
my @jwts = map { my ($a) = $_->{body} =~ /assertion=([^&]+)/; $a } grep { $_->{path} eq '/token' } @after;
my @material = ((map { substr($_, 0, 40) } @pem_lines), (map { substr($_, -40) } @jwts), 'ya29.');
my $rows = $node->safe_psql('postgres', q{SELECT string_agg(concat_ws(' ', error, response_body, attempts_detail::text, request_body::text, tags::text), E'\n') FROM llm.requests});
my $log = slurp_file($node->logfile);
my $leaks = 0;
for my $m (@material)
{
	next unless index($rows, $m) >= 0 || index($log, $m) >= 0;
	$leaks++;
	diag("leaked: $m (" . (index($rows, $m) >= 0 ? 'llm.requests' : 'server log') . ')');
}
is($leaks, 0, 'no private key, JWT or access token in llm.requests or the server log');
ok(scalar(@jwts) >= 3, 'checked the JWTs of every token request');

# --- fallback from the refused vertex target to an anthropic one
my $asked = stats()->{token_requests};
($ret, $out, $err) = $node->psql('postgres', q{SELECT llm_complete('fb', 'fall over')});
is($out, 'mock reply to: fall over', 'a refused vertex key falls over to another kind') or diag($err);
is(stats()->{token_requests}, $asked, 'the refusal is remembered (5 s): the refused key is not sent again');
is($node->safe_psql('postgres', q{SELECT provider || ' ' || (attempts_detail->0->>'provider') || ' ' || (attempts_detail->0->>'error_code')
	 FROM llm.requests WHERE alias = 'fb'}),
	'anth vxbad LL001', 'the log row names the answering provider and the refused attempt');

# --- a key replaced under the same label: its cached token is not used
$asked = stats()->{token_requests};
$node->safe_psql('postgres', qq{SET log_statement = 'none'; SELECT llm.set_credential('vx', \$sa\$$sa_bad\$sa\$);});
($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT llm_complete('v', 'new key')");
like($err, qr/ERROR:  LL001: could not get an access token for provider "vx": .*Invalid JWT Signature/, 'a replaced key gets a token of its own (here refused)') or diag($err);
$node->safe_psql('postgres', qq{SET log_statement = 'none'; SELECT llm.set_credential('vx', \$sa\$$sa\$sa\$);});
($ret, $out, $err) = $node->psql('postgres', q{SELECT llm_complete('v', 'key restored')});
is($out, 'mock reply to: key restored', 'the restored key is not held back by the other key\'s refusal') or diag($err);
is(stats()->{token_requests} - $asked, 2, 'one token request per key change');

# --- Vertex refuses the cached token (the mock forgets the tokens it issued):
# the token is dropped and the same target retried once with a fresh one
$mock->reset;
configure_mock();
($ret, $out, $err) = $node->psql('postgres', q{SELECT llm_complete('v', 'after revocation')});
is($out, 'mock reply to: after revocation', 'a revoked token is replaced and the call answered') or diag($err);
is(stats()->{by_status}{401}, 1, 'Vertex refused the old token once');
is(stats()->{token_requests}, 1, 'one new token was fetched');
is($node->safe_psql('postgres', q{SELECT string_agg(coalesce(a->>'http_status', '-') || '/' || coalesce(a->>'error_code', 'ok'), ' ' ORDER BY o)
	 FROM llm.requests r, jsonb_array_elements(r.attempts_detail) WITH ORDINALITY AS x(a, o)
	 WHERE r.id = (SELECT max(id) FROM llm.requests WHERE alias = 'v')}),
	'401/LL001 200/ok', 'two attempts on the same target: the refused token, then the fresh one');

$node->stop;
done_testing();
