# Quotas: exactly N calls admitted under a race of sessions and of a
# pipeline, token and cost limits never exceeded by settled usage, a group
# role's quota shared by its members, the refusal's exact fields, warn_at,
# retries and fallbacks counted at what they really cost (reserved at the
# dearest target), a window rolling over, and usage kept across a restart
# and a crash.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use IPC::Run;
use Time::HiRes qw(time);
use LlmGatewayTest;

my $mock = start_mock('--latency-ms', '100');
my $node = gateway_node('quotas', $mock, 'anthropic', "max_connections = 100\n");

# run SQL in one session, going on after errors; (stdout, stderr)
sub session
{
	my ($sql, $db_user) = @_;
	my @conn = defined $db_user ? (connstr => $node->connstr('postgres') . " user=$db_user") : ();
	my ($ret, $out, $err) = $node->psql('postgres', "\\set VERBOSITY verbose\n$sql", on_error_stop => 0, @conn);
	return ($out, $err);
}

sub sql { return $node->safe_psql('postgres', $_[0]); }

sub mock_requests_for
{
	my ($alias_text) = @_;
	my $n = 0;
	for my $r (@{ $mock->get('/_mock/requests')->{requests} })
	{
		my $b = $r->{body};
		next unless ref $b eq 'HASH' && $b->{messages};
		my $c = $b->{messages}[-1]{content};
		$c = join('', map { $_->{text} // '' } @$c) if ref $c eq 'ARRAY';
		$n++ if $c =~ /\Q$alias_text\E/;
	}
	return $n;
}

sql(q{
SELECT llm.add_route('r1', 'mock', 'anthropic-mock');
SELECT llm.add_route('r2', 'mock', 'anthropic-mock');
SELECT llm.add_route('r3', 'mock', 'anthropic-mock');
SELECT llm.add_route('r4', 'mock', 'anthropic-mock', options => '{"price_input": 1000, "price_output": 2000}');
SELECT llm.add_route('r5', 'mock', 'anthropic-mock');
SELECT llm.add_route('r6', 'mock', 'anthropic-mock');
SELECT llm.set_quota('race', 'requests', 10, 'day', alias => 'r1');
SELECT llm.set_quota('pipe', 'requests', 7, 'day', alias => 'r2');
SELECT llm.set_quota('tokens', 'total_tokens', 1000, 'day', alias => 'r3');
SELECT llm.set_quota('cost', 'cost_usd', 1, 'day', alias => 'r4');
});

# --- 40 sessions race a quota of 10 requests --------------------------------
$node->pgbench(
	'--no-vacuum --client=40 --jobs=4 --transactions=3',
	0,
	[qr{processed: 120/120}],
	[qr{^$}],
	'120 calls from 40 sessions race a quota of 10',
	{ '024_race' => q{SELECT llm_complete('r1', 'race ' || :client_id, '{"on_error": "null"}');} });
is(sql(q{SELECT count(*) FILTER (WHERE status = 'ok') || '/' || count(*) FILTER (WHERE error_code = 'LL014')
           FROM llm.requests WHERE alias = 'r1'}), '10/110', 'exactly 10 calls admitted, 110 refused with LL014');
is(mock_requests_for('race '), 10, 'the provider received exactly 10');
is(sql(q{SELECT count(*) FROM llm.requests WHERE alias = 'r1' AND error_code = 'LL014' AND attempts = 0 AND status = 'error'}),
	'110', 'refused calls are logged as errors with no attempt');
is(sql(q{SELECT used || '/' || reserved || '/' || quota_limit FROM llm.quota_status WHERE quota = 'race'}),
	'10/0/10', 'quota_status: used 10, nothing reserved, limit 10');

# --- a pipeline races a quota of 7 -------------------------------------------
sql(q{CREATE TABLE t AS SELECT i AS id, 'pipe row ' || i AS body FROM generate_series(1, 100) i; ANALYZE t;});
my $t0 = time;
my ($out, $err) = session(q{SET llm.statement_concurrency = 64;
SELECT count(x) || '/' || count(*) FROM (SELECT llm_complete('r2', body, '{"on_error": "null"}') AS x FROM t) s;});
my $took = time - $t0;
is($err, '', 'the pipeline runs without error');
is($out, '7/100', 'exactly 7 rows answered, the other 93 NULL');
cmp_ok($took, '<', 5, "quickly ($took s)");
is(mock_requests_for('pipe row'), 7, 'the provider received exactly 7');
is(sql(q{SELECT count(*) FROM llm.requests WHERE alias = 'r2' AND error_code = 'LL014'}), '93', '93 refusals logged');

# --- token and cost limits: settled usage never over ------------------------
$node->pgbench(
	'--no-vacuum --client=32 --jobs=4 --transactions=5',
	0,
	[qr{processed: 160/160}],
	[qr{^$}],
	'160 calls race a token quota and a cost quota',
	{ '024_tokens' => q{SELECT llm_complete('r3', 'tokens ' || :client_id, '{"on_error": "null", "max_tokens": 20}');
SELECT llm_complete('r4', 'cost ' || :client_id, '{"on_error": "null", "max_tokens": 20}');} });
my ($tok_ok, $tok_sum, $tok_refused) = split /\|/, sql(q{
SELECT count(*) FILTER (WHERE status = 'ok'),
       sum(coalesce(input_tokens, 0) + coalesce(output_tokens, 0) + coalesce(cache_read_tokens, 0) + coalesce(cache_write_tokens, 0)),
       count(*) FILTER (WHERE error_code = 'LL014')
  FROM llm.requests WHERE alias = 'r3'});
cmp_ok($tok_sum, '<=', 1000, "settled tokens $tok_sum <= 1000 ($tok_ok calls answered)");
cmp_ok($tok_refused, '>', 0, "and the rest refused ($tok_refused)");
is(sql(q{SELECT used FROM llm.quota_status WHERE quota = 'tokens'}), $tok_sum, 'quota_status used = the sum over the log');
my ($cost_sum, $cost_refused) = split /\|/, sql(q{
SELECT sum(cost_usd), count(*) FILTER (WHERE error_code = 'LL014') FROM llm.requests WHERE alias = 'r4'});
cmp_ok($cost_sum, '<=', 1, "settled cost $cost_sum <= 1 USD");
cmp_ok($cost_refused, '>', 0, "and the rest refused ($cost_refused)");
is(sql(q{SELECT used = (SELECT sum(cost_usd) FROM llm.requests WHERE alias = 'r4') FROM llm.quota_status WHERE quota = 'cost'}),
	't', 'quota_status cost used = the sum of cost_usd');

# --- a group role's quota counts its members together; the refusal ----------
sql(q{
CREATE ROLE team NOLOGIN;
CREATE ROLE alice LOGIN IN ROLE team, llm_user;
CREATE ROLE bob LOGIN IN ROLE team, llm_user;
CREATE ROLE carol LOGIN IN ROLE llm_user;
SELECT llm.set_quota('teamq', 'requests', 3, 'day', role_name => 'team', warn_at => 0.5);
});
my ($from, $to) = split /\|/, sql(q{
SELECT to_char(date_trunc('day', now(), 'UTC') AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS'),
       to_char((date_trunc('day', now(), 'UTC') + interval '1 day') AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS')});
my $notices = '';
for my $who (qw(alice bob alice))
{
	($out, $err) = session(qq{SELECT llm_complete('m', 'team call of $who')}, $who);
	is($out, "mock reply to: team call of $who", "$who: call admitted");
	$notices .= $err;
}
$notices =~ s/\nLOCATION:.*//g;
is($notices, qq{psql:<stdin>:2: NOTICE:  01000: quota "teamq" reached 50% of its limit (2 of 3 with calls in flight) in the window from $from UTC},
	'warn_at: one NOTICE, to the call that crossed it');
($out, $err) = session(q{SELECT llm_complete('m', 'one too many')}, 'bob');
$err =~ s/\nLOCATION:.*//;
is($err, qq{psql:<stdin>:2: ERROR:  LL014: quota "teamq" exceeded: requests of role "team" per day
DETAIL:  Used 3, reserved 0 by calls in flight, this call needs up to 1; the limit is 3 in the window from $from UTC to $to UTC.
HINT:  The window resets at $to UTC; an administrator can raise the limit with llm.set_quota().},
	'the fourth call of the group is refused: exact message, detail and hint');
($out, $err) = session(q{SELECT llm_complete('m', 'carol is not in the team')}, 'carol');
is($err, '', 'a non-member is not limited by the group quota');
($out, $err) = session(q{SELECT string_agg(quota, ',' ORDER BY quota) FROM llm.quota_status}, 'alice');
is("$out$err", 'cost,pipe,race,teamq,tokens', 'a member sees its role\'s quota and the others');
($out, $err) = session(q{SELECT string_agg(quota, ',' ORDER BY quota) FROM llm.quota_status}, 'carol');
is("$out$err", 'cost,pipe,race,tokens', 'a non-member does not see the role\'s quota');
($out, $err) = session(q{SELECT llm.set_quota('x', 'requests', 1, 'day')}, 'alice');
like($err, qr/42501: permission denied for function set_quota/, 'llm_user cannot set quotas');
my $log = slurp_file($node->logfile);
my @warned = ($log =~ /quota "teamq" reached 50% of its limit/g);
is(scalar @warned, 1, 'warn_at logs once per window');

# a raised limit applies to the next call
sql(q{SELECT llm.set_quota('teamq', 'requests', 4, 'day', role_name => 'team')});
($out, $err) = session(q{SELECT llm_complete('m', 'after raise')}, 'bob');
is($err, '', 'the raised limit admits the next call');

# --- a tag value's quota ------------------------------------------------------
sql(q{SELECT llm.set_quota('tagq', 'requests', 1, 'day', tag_key => 'team', tag_value => 'support')});
($out, $err) = session(q{SELECT llm_complete('m', 'support 1', '{"tags": {"team": "support"}}');
SELECT llm_complete('m', 'support 2', '{"tags": {"team": "support", "x": 1}}');
SELECT llm_complete('m', 'sales 1', '{"tags": {"team": "sales"}}');});
is($out, "mock reply to: support 1\nmock reply to: sales 1", 'a tag quota limits only the calls with that tag value');
like($err, qr/LL014: quota "tagq" exceeded: requests of tag team = "support" per day/, 'the second support call is refused');

# --- retries and fallbacks count what they really cost ----------------------
# 'fb' falls over from a dear target nobody answers (port 9) to a cheap one:
# the call reserves at the dear price and settles at the cheap one's real cost
sql(q{SELECT llm.add_provider('down', 'anthropic', 'http://127.0.0.1:9');
SELECT llm.set_credential('down', 'k');
SELECT llm.add_route('fb', 'down', 'dear-model', 0, 1, '{"price_input": 100, "price_output": 100}');
SELECT llm.add_route('fb', 'mock', 'cheap-model', 1, 1, '{"price_input": 1, "price_output": 1}');
SELECT llm.set_quota('fbq', 'cost_usd', 1, 'day', alias => 'fb');
SELECT llm.set_quota('fbn', 'requests', 10, 'day', alias => 'fb');
SELECT llm.add_route('rt', 'mock', 'anthropic-mock');
SELECT llm.set_quota('rtn', 'requests', 10, 'day', alias => 'rt');
SELECT llm.set_quota('rtt', 'total_tokens', 100000, 'day', alias => 'rt');});
($out, $err) = session(q{SELECT llm_complete('fb', 'fallback call', '{"max_tokens": 10}')});
is("$out$err", 'mock reply to: fallback call', 'the call falls over to the cheap target');
is(sql(q{SELECT attempts || ' ' || provider || ' ' || (cost_usd > 0) FROM llm.requests WHERE alias = 'fb'}),
	'3 mock true', 'three attempts logged (two at the dead target), the cheap target answered');
is(sql(q{SELECT q.used = r.cost_usd FROM llm.quota_status q, llm.requests r WHERE q.quota = 'fbq' AND r.alias = 'fb'}),
	't', 'cost quota: settled at the cost the log has (the cheap target), not the dear reservation');
is(sql(q{SELECT used FROM llm.quota_status WHERE quota = 'fbn'}), '1', 'a call that fell over counts one request');
# the dear target bounds the reservation: 0.005 USD is below its worst case
sql(q{SELECT llm.set_quota('fbq', 'cost_usd', 0.005, 'day', alias => 'fb')});
($out, $err) = session(q{SELECT llm_complete('fb', 'second fallback call', '{"max_tokens": 10}')});
# worst case at 100 USD per million: 85 bytes of request JSON + 10 output tokens
# = 0.0095 USD (at the cheap target's price it would be 0.000095)
like($err, qr/LL014: quota "fbq" exceeded: cost_usd of model alias "fb" per day\nDETAIL:  Used 0\.0000\d+ USD, reserved 0 USD by calls in flight, this call needs up to 0\.0095 USD;/,
	'the reservation is at the dearest target the call may fall over to');
# a retried call (the first attempt gets a 503) counts one request and the
# tokens of the attempt that answered
($out, $err) = session(q{SELECT llm_complete('rt', 'retried [[mock:fail_first=1,status=503]]')});
is("$out$err", 'mock reply to: retried', 'the call is answered on its second attempt');
is(sql(q{SELECT attempts FROM llm.requests WHERE alias = 'rt'}), '2', 'two attempts logged');
is(sql(q{SELECT used FROM llm.quota_status WHERE quota = 'rtn'}), '1', 'a retried call counts one request');
is(sql(q{SELECT q.used = r.input_tokens + r.output_tokens FROM llm.quota_status q, llm.requests r WHERE q.quota = 'rtt' AND r.alias = 'rt'}),
	't', 'and the tokens the log has for it');

# pg_dump keeps the quotas (a configuration table of the extension)
my ($dump_out, $dump_err);
IPC::Run::run([ 'pg_dump', '--data-only', '-t', 'llm.quotas', '-d', $node->connstr('postgres') ],
	'>', \$dump_out, '2>', \$dump_err);
like($dump_out, qr/^tagq\ttag\t\\N\t\\N\tteam\tsupport\tday\trequests\t1\t/m, 'pg_dump keeps llm.quotas');

# --- restart and crash keep usage --------------------------------------------
sql(q{SELECT llm.set_quota('durable', 'requests', 5, 'day', alias => 'r5')});
sql(q{SELECT llm_complete('r5', 'durable 1'); SELECT llm_complete('r5', 'durable 2')});
$node->restart(mode => 'fast');
$node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM llm.quota_status WHERE quota = 'durable'})
  or die 'quotas not loaded after restart';
is(sql(q{SELECT used || '/' || reserved FROM llm.quota_status WHERE quota = 'durable'}), '2/0',
	'after a restart: the 2 calls are still counted, once');
my $bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_until(qr/started/, q{\echo started
SELECT llm_complete('r5', 'durable hang [[mock:hang]]');
});
$node->poll_query_until('postgres', q{SELECT reserved = 1 FROM llm.quota_status WHERE quota = 'durable'})
  or die 'the hanging call reserved nothing';
ok(1, 'a call in flight is reserved');
crash_marks_unknown($node, $bg, '%durable hang%') or die 'row not marked unknown';
$node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM llm.quota_status WHERE quota = 'durable'})
  or die 'quotas not loaded after crash';
is(sql(q{SELECT used || '/' || reserved FROM llm.quota_status WHERE quota = 'durable'}), '3/0',
	'after a crash: the unknown call counts at its worst case, no stale reservation');
($out, $err) = session(q{SELECT llm_complete('r5', 'durable 3'); SELECT llm_complete('r5', 'durable 4'); SELECT llm_complete('r5', 'durable 5');});
like($err, qr/LL014: quota "durable" exceeded.*\nDETAIL:  Used 5, reserved 0/, 'two more calls admitted, the third refused');
is(mock_requests_for('durable '), 5, 'the provider saw 4 answered calls and the crashed one');

# --- a minute window rolls over ----------------------------------------------
sql(q{SELECT llm.set_quota('minute', 'requests', 1, 'minute', alias => 'r6')});
# both calls in the first half of a minute, so they fall in one window
$node->poll_query_until('postgres', q{SELECT extract(second FROM clock_timestamp()) < 30}) or die;
($out, $err) = session(q{SELECT llm_complete('r6', 'minute 1'); SELECT llm_complete('r6', 'minute 2');});
like($err, qr/LL014: quota "minute" exceeded/, 'the second call in the minute is refused');
my $start = sql(q{SELECT window_start FROM llm.quota_status WHERE quota = 'minute'});
$node->poll_query_until('postgres', qq{SELECT date_trunc('minute', clock_timestamp()) > '$start'}) or die;
($out, $err) = session(q{SELECT llm_complete('r6', 'minute 3')});
is($err, '', 'in the next minute a call is admitted again');
is(sql(q{SELECT used FROM llm.quota_status WHERE quota = 'minute'}), '1', 'the new window counts only it');

$node->stop;
$mock->stop;
done_testing();
