# Usage rollups: llm.usage and llm.usage_daily, kept by the worker in the
# transactions that complete rows of llm.requests, equal sums over the log
# (exact for counts, tokens and cost; latency percentiles within the
# histogram's 2^(1/8)); a worker restart and a crash mid-way count the
# calls they leave as unknown, once; a role sees only its own usage.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use LlmGatewayTest;

my $mock = start_mock();
my $node = gateway_node('usage', $mock, 'anthropic');
$node->safe_psql('postgres', q{
	SELECT llm.add_route('priced', 'mock', 'priced-model', 0, 1,
	       '{"price_input": 3, "price_output": 15, "price_cache_read": 0.3}');
	CREATE ROLE alice LOGIN IN ROLE llm_user;
	CREATE ROLE bob LOGIN IN ROLE llm_user;
	CREATE ROLE carol LOGIN IN ROLE llm_admin;});

# the merge and percentile functions
is($node->safe_psql('postgres', q{SELECT llm._usage_hist_add('{1,2}', '{0,0,3}')
	|| llm._usage_hist_add(NULL, '{4}') || llm._usage_hist_add('{}', '{}')}), '{1,2,3,4}',
	'histograms add element-wise, of any lengths');
is($node->safe_psql('postgres', q{SELECT llm._usage_counts_add('{"LL": 2, "57": 1}', '{"LL": -2, "08": 3}')}),
	'{"08": 3, "57": 1}', 'error classes add, a zero sum drops its class');
is($node->safe_psql('postgres', q{SELECT round(llm._usage_percentile('{1,0,0,0,0,0,2,0,0,0,1}', q)::numeric, 6)
	FROM unnest('{0.25,0.5,0.75,1}'::float8[]) q}),
	join("\n", map { sprintf('%.6f', $_) } 0.5, map { 2**(($_ + 0.5) / 4) } (5, 5, 9)),
	'percentiles: nearest rank, the bucket\'s geometric middle');

# a mix of calls by ROLE: ok with several latencies and cache reads on
# both aliases, provider errors (LL class), a timeout (LL), cancelled (57)
sub calls
{
	my ($role, $tag) = @_;
	my @sql;
	for my $i (1 .. 12)
	{
		my $alias = $i % 2 ? 'm' : 'priced';
		my $lat = (3, 20, 45, 110, 160, 250)[ $i % 6 ];
		push @sql, "SELECT llm_complete('$alias', '$tag ok $i [[mock:latency=$lat,cache=$i]]');";
	}
	push @sql, "SELECT llm_complete('m', '$tag bad [[mock:status=400]]');";
	push @sql, "SELECT llm_complete('priced', '$tag auth [[mock:status=401]]');";
	push @sql, qq{SELECT llm_complete('priced', '$tag slow [[mock:latency=3000]]', '{"timeout_ms": 200}');};
	push @sql, "SET statement_timeout = '200ms'; SELECT llm_complete('m', '$tag hang [[mock:hang]]'); RESET statement_timeout;";
	for my $s (@sql)
	{
		$node->psql('postgres', "SET ROLE $role; $s");
	}
	return;
}

# rows of llm.usage that differ from sums over the log (both ways)
my $hourly_diff = q{
WITH log AS (
  SELECT date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
         role_name, alias, provider, upstream_model,
         count(*) AS calls,
         count(*) FILTER (WHERE status = 'ok') AS ok,
         count(*) FILTER (WHERE status = 'error') AS errors,
         count(*) FILTER (WHERE status = 'cancelled') AS cancelled,
         count(*) FILTER (WHERE status = 'timeout') AS timeouts,
         count(*) FILTER (WHERE status = 'unknown') AS unknown,
         coalesce(sum(input_tokens), 0) AS input_tokens,
         coalesce(sum(output_tokens), 0) AS output_tokens,
         coalesce(sum(cache_read_tokens), 0) AS cache_read_tokens,
         coalesce(sum(cache_write_tokens), 0) AS cache_write_tokens,
         coalesce(sum(cost_usd), 0) AS cost_usd,
         (SELECT coalesce(jsonb_object_agg(c, n), '{}') FROM
            (SELECT left(e, 2) AS c, count(*) AS n FROM unnest(array_agg(error_code)) AS e
              WHERE e IS NOT NULL GROUP BY 1) AS x) AS error_classes
    FROM llm.requests WHERE status <> 'pending'
   GROUP BY 1, 2, 3, 4, 5),
u AS (SELECT hour, role_name, alias, provider, upstream_model, calls, ok, errors, cancelled,
             timeouts, unknown, input_tokens, output_tokens, cache_read_tokens,
             cache_write_tokens, cost_usd, error_classes FROM llm.usage)
SELECT count(*) FROM ((TABLE log EXCEPT TABLE u) UNION ALL (TABLE u EXCEPT TABLE log)) AS d};

my $daily_diff = q{
WITH log AS (
  SELECT (created_at AT TIME ZONE 'UTC')::date AS day, role_name, alias, provider, upstream_model,
         count(*) AS calls, count(*) FILTER (WHERE status = 'unknown') AS unknown,
         coalesce(sum(input_tokens), 0) AS input_tokens, coalesce(sum(output_tokens), 0) AS output_tokens,
         coalesce(sum(cache_read_tokens), 0) AS cache_read_tokens, coalesce(sum(cost_usd), 0) AS cost_usd
    FROM llm.requests WHERE status <> 'pending' GROUP BY 1, 2, 3, 4, 5),
u AS (SELECT day, role_name, alias, provider, upstream_model, calls, unknown, input_tokens,
             output_tokens, cache_read_tokens, cost_usd FROM llm.usage_daily)
SELECT count(*) FROM ((TABLE log EXCEPT TABLE u) UNION ALL (TABLE u EXCEPT TABLE log)) AS d};

# percentiles off by more than the histogram's resolution (a factor 2^(1/8))
my $pct_off = q{
WITH log AS (
  SELECT date_trunc('hour', created_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS hour,
         role_name, alias, provider, upstream_model,
         percentile_disc(0.5) WITHIN GROUP (ORDER BY latency_ms) AS p50,
         percentile_disc(0.95) WITHIN GROUP (ORDER BY latency_ms) AS p95,
         percentile_disc(0.99) WITHIN GROUP (ORDER BY latency_ms) AS p99
    FROM llm.requests WHERE status <> 'pending' AND latency_ms IS NOT NULL
   GROUP BY 1, 2, 3, 4, 5)
SELECT count(*) FROM log JOIN llm.usage u USING (hour, role_name, alias, provider, upstream_model),
       LATERAL (VALUES (log.p50, u.latency_p50_ms), (log.p95, u.latency_p95_ms),
                       (log.p99, u.latency_p99_ms)) AS v(truth, est)
 WHERE CASE WHEN truth < 1 THEN est <> 0.5
            ELSE abs(ln(est / truth)) > ln(2) / 8 + 1e-9 END};

sub check_equal
{
	my ($when) = @_;
	$node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM llm.requests WHERE status = 'pending'})
	  or die 'calls stayed pending';
	is($node->safe_psql('postgres', $hourly_diff), '0', "$when: llm.usage equals sums over llm.requests");
	is($node->safe_psql('postgres', $daily_diff), '0', "$when: llm.usage_daily equals sums over llm.requests");
	is($node->safe_psql('postgres', $pct_off), '0', "$when: p50/p95/p99 within 2^(1/8) of the log's");
	return;
}

calls('alice', 'a1');
calls('bob', 'b1');
check_equal('after a mix of calls');
is($node->safe_psql('postgres', q{SELECT count(DISTINCT role_name) || ' ' || count(DISTINCT alias)
	|| ' ' || sum(ok) || ' ' || sum(errors) || ' ' || sum(timeouts) || ' ' || sum(cancelled)
	|| ' ' || (sum(cost_usd) > 0) FROM llm.usage}),
	'2 2 24 4 2 2 true', 'two roles, two aliases; ok, errors, timeouts, cancelled and a cost counted');
is($node->safe_psql('postgres', q{SELECT string_agg(k, ',' ORDER BY k) FROM
	(SELECT DISTINCT jsonb_object_keys(error_classes) AS k FROM llm.usage) AS x}),
	'57,LL', 'errors by SQLSTATE class');

# the worker killed while a call hangs: the next worker marks it unknown and
# it counts once, as unknown; what was completed before is not counted again
my $bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_until(qr/started/, "\\echo started\nSET ROLE alice;\nSELECT llm_complete('m', 'restart [[mock:hang]]');\n");
$node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM llm.requests WHERE status = 'pending'})
  or die 'call never became pending';
my $worker = $node->safe_psql('postgres', 'SELECT worker_pid FROM llm.gateway_status()');
$node->safe_psql('postgres', "SELECT pg_terminate_backend($worker)");
$node->poll_query_until('postgres',
	q{SELECT status = 'unknown' FROM llm.requests WHERE request_body::text LIKE '%restart [[%'})
  or die 'the row was not marked unknown';
eval { $bg->quit };
calls('alice', 'a2');
check_equal('after a worker restart');
is($node->safe_psql('postgres', q{SELECT sum(unknown) FROM llm.usage WHERE role_name = 'alice'}), '1',
	'the call the worker left counts once, as unknown');

# a crash (immediate shutdown) while a call hangs
$bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_until(qr/started/, "\\echo started\nSET ROLE bob;\nSELECT llm_complete('priced', 'crash [[mock:hang]]');\n");
$node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM llm.requests WHERE status = 'pending'})
  or die 'call never became pending';
crash_marks_unknown($node, $bg, '%crash [[%') or die 'row not marked unknown after the crash';
calls('bob', 'b2');
check_equal('after a crash');
is($node->safe_psql('postgres', q{SELECT sum(unknown) FROM llm.usage}), '2', 'two calls unknown in all');

# row-level security: alice sees her own usage only, carol (llm_admin) all
my $alice_log = $node->safe_psql('postgres',
	q{SELECT count(*) || ' ' || coalesce(sum(input_tokens), 0) FROM llm.requests WHERE role_name = 'alice' AND status <> 'pending'});
is($node->safe_psql('postgres', q{SET ROLE alice;
	SELECT sum(calls) || ' ' || sum(input_tokens) FROM llm.usage;}), $alice_log, 'alice: her own calls and tokens');
is($node->safe_psql('postgres', q{SET ROLE alice;
	SELECT count(*) FROM llm.usage_daily WHERE role_name <> 'alice'}), '0', 'alice sees no other role\'s usage');
is($node->safe_psql('postgres', q{SET ROLE carol;
	SELECT count(DISTINCT role_name) FROM llm.usage_daily}), '2', 'llm_admin sees every role');
my ($ret, $out, $err) = $node->psql('postgres', q{SET ROLE alice; UPDATE llm.usage_hourly SET calls = 0});
like($err, qr/permission denied/, 'users cannot write the rollup');

# the audit row does not depend on the rollup: a trigger that refuses the
# upsert leaves the call uncounted (said in the server log), its row complete
$node->safe_psql('postgres', q{
	CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$
	BEGIN RAISE EXCEPTION 'no rollup today'; END $$;
	CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON llm.usage_hourly
	    FOR EACH ROW EXECUTE FUNCTION refuse();});
my $calls_before = $node->safe_psql('postgres', 'SELECT sum(calls) FROM llm.usage');
my $log_offset = -s $node->logfile;
is($node->safe_psql('postgres', q{SELECT llm_complete('m', 'refused rollup')}),
	'mock reply to: refused rollup', 'a call while the rollup refuses');
ok($node->poll_query_until('postgres',
	q{SELECT status = 'ok' FROM llm.requests WHERE request_body::text LIKE '%refused rollup%'}),
	'its log row is completed');
ok($node->wait_for_log(qr/could not update llm.usage_hourly; 1 finished calls are not counted in llm.usage/,
	$log_offset), 'the server log says the call is not counted');
$node->safe_psql('postgres', 'DROP TRIGGER refuse ON llm.usage_hourly');
$node->safe_psql('postgres', q{SELECT llm_complete('m', 'rollup again')});
$node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM llm.requests WHERE status = 'pending'});
is($node->safe_psql('postgres', 'SELECT sum(calls) FROM llm.usage'), $calls_before + 1,
	'the next call counts again, the refused one not');

# reading needs no scan of the log, and a day is an index scan of the
# rollup: 30 days x 24 hours x 200 groups (the rollup of any number of
# log rows in that many groups; figures made up, so this comes last)
$node->safe_psql('postgres', q{
	INSERT INTO llm.usage_hourly (hour, role_name, alias, provider, upstream_model, calls, ok,
	                              input_tokens, output_tokens, cost_usd, latency_hist)
	SELECT date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval '40 days' + h * interval '1 hour',
	       'r' || g % 20, 'a' || g / 20, 'mock', 'model', 50000, 50000, 5000000, 1000000, 12.5,
	       '{0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,10000,30000,10000}'
	  FROM generate_series(0, 30 * 24 - 1) AS h, generate_series(0, 199) AS g;
	ANALYZE llm.usage_hourly;});
my $day_sql = q{SELECT count(*), sum(calls) FROM llm.usage_daily
	WHERE day = (now() AT TIME ZONE 'UTC')::date - 30};
like($node->safe_psql('postgres', "EXPLAIN $day_sql"), qr/usage_hourly_day/,
	'a day of llm.usage_daily is read through the index on its day');
my $plan = $node->safe_psql('postgres', "EXPLAIN (ANALYZE, TIMING OFF) $day_sql");
my ($ms) = $plan =~ /Execution Time: ([\d.]+) ms/;
is($node->safe_psql('postgres', $day_sql), '200|240000000', 'a day of 240 million calls in 200 groups');
cmp_ok($ms, '<', 200, "read in $ms ms (144,000 rollup rows)");

# reading needs no scan of the log
unlike($node->safe_psql('postgres', q{EXPLAIN SELECT * FROM llm.usage_daily WHERE day = current_date}),
	qr/requests/, 'llm.usage_daily reads only the rollup');

$node->stop;
done_testing();
