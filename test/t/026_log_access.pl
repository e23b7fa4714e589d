# Who sees which log rows, and for how long: row-level security on
# llm.requests (a llm_user reads its own calls, llm_admin all, others
# nothing), the worker logging with it on, llm.log_retention applied by the
# worker, and llm.purge_requests for admins.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use LlmGatewayTest;

my $mock = start_mock();
my $node = gateway_node('log_access', $mock, 'openai');

$node->safe_psql('postgres', q{
CREATE ROLE alice LOGIN IN ROLE llm_user;
CREATE ROLE bob LOGIN IN ROLE llm_user;
CREATE ROLE team IN ROLE llm_user;
CREATE ROLE dave LOGIN IN ROLE team;
CREATE ROLE carol LOGIN IN ROLE llm_admin;
CREATE ROLE nobody LOGIN;
});

sub as_role
{
	my ($role, $sql) = @_;
	return $node->safe_psql('postgres', $sql, extra_params => [ '-U', $role ]);
}

sub psql_as
{
	my ($role, $sql) = @_;
	my ($ret, $out, $err) = $node->psql('postgres', $sql,
		extra_params => defined $role ? [ '-U', $role ] : []);
	return ($ret, $out, $err);
}

# calls: alice 2 ok + 1 error, bob 1 ok + 1 cancelled, dave (via group team) 1
is(as_role('alice', q{SELECT llm_complete('m', 'alice secret one')}), 'mock reply to: alice secret one', 'alice calls');
as_role('alice', q{SELECT llm_complete('m', 'alice secret two')});
as_role('alice', q{SELECT llm_complete('m', 'alice failing [[mock:status=400]]', '{"on_error": "null"}')});
as_role('bob', q{SELECT llm_complete('m', 'bob secret')});
my ($ret) = psql_as('bob', q{SET statement_timeout = '300ms'; SELECT llm_complete('m', 'bob hang [[mock:hang]]')});
isnt($ret, 0, 'bob\'s hanging call is cancelled by statement_timeout');
as_role('dave', q{SELECT llm_complete('m', 'dave secret')});
$node->poll_query_until('postgres',
	q{SELECT count(*) = 0 FROM llm.requests WHERE status = 'pending'})
  or die 'rows never completed';

# the worker logs with RLS on: ok, error and cancelled rows, with bodies
is($node->safe_psql('postgres',
		q{SELECT string_agg(role_name || ':' || status, ',' ORDER BY id) FROM llm.requests}),
	'alice:ok,alice:ok,alice:error,bob:ok,bob:cancelled,dave:ok',
	'the worker wrote and completed every row (ok, error, cancelled) with row-level security on');
is($node->safe_psql('postgres',
		q{SELECT relrowsecurity FROM pg_class WHERE oid = 'llm.requests'::regclass}),
	't', 'llm.requests has row-level security enabled');
is($node->safe_psql('postgres', q{
	SELECT string_agg(polname || ':' || polcmd::text || ':' || pg_get_userbyid(polroles[1]), ',' ORDER BY polname)
	  FROM pg_policy WHERE polrelid = 'llm.requests'::regclass}),
	'admin_all:r:llm_admin,own_rows:r:llm_user,worker_all:*:llm_gateway_worker',
	'its policies: read own rows, admins read all, the worker does all');
is($node->safe_psql('postgres', q{SELECT rolbypassrls FROM pg_roles WHERE rolname = 'llm_gateway_worker'}),
	'f', 'the worker role does not bypass row-level security');

# each llm_user sees exactly its own rows, bodies included
is(as_role('alice', q{SELECT count(*) || ' ' || string_agg(status, ',' ORDER BY id) FROM llm.requests}),
	'3 ok,ok,error', 'alice sees her three rows');
is(as_role('alice', q{SELECT count(*) FROM llm.requests
		WHERE request_body::text LIKE '%alice secret%' AND response_body LIKE '%alice secret%'}),
	'2', 'with her request and response bodies');
is(as_role('alice', q{SELECT count(*) FROM llm.requests WHERE role_name <> current_user
		OR request_body::text LIKE '%bob%' OR request_body::text LIKE '%dave%'}),
	'0', 'and nothing of bob\'s or dave\'s');
is(as_role('bob', q{SELECT count(*) || ' ' || string_agg(status, ',' ORDER BY id) FROM llm.requests}),
	'2 ok,cancelled', 'bob sees his two rows');
is(as_role('bob', q{SELECT count(*) FROM llm.requests WHERE request_body::text LIKE '%alice%'}),
	'0', 'and no body of alice\'s');
# a group's member sees its own rows, not its group's; the group's own
# calls (SET ROLE team) are the group's
is(as_role('dave', q{SELECT string_agg(role_name, ',') FROM llm.requests}),
	'dave', 'dave (member of group team) sees his own row');
as_role('dave', q{SET ROLE team; SELECT llm_complete('m', 'as the group')});
is(as_role('dave', q{SELECT count(*) FROM llm.requests}), '1', 'but not the group\'s call');
is(as_role('dave', q{SET ROLE team; SELECT string_agg(role_name, ',') FROM llm.requests}),
	'team', 'which he sees as the group (SET ROLE team)');
# a function that leaks its arguments sees only the rows the policy lets through
my ($r2, $o2, $e2) = psql_as('alice', q{
	CREATE FUNCTION pg_temp.peek(text) RETURNS bool LANGUAGE plpgsql COST 0.0001
		AS $$ BEGIN RAISE NOTICE 'peek: %', $1; RETURN true; END $$;
	SELECT count(*) FROM llm.requests WHERE pg_temp.peek(request_body::text);});
is($o2, '3', 'a leaky function in a WHERE clause');
unlike($e2, qr/bob secret|dave secret/, 'sees no other role\'s body');
$node->safe_psql('postgres', 'ANALYZE llm.requests');
is(as_role('alice', q{SELECT count(*) FROM pg_stats WHERE schemaname = 'llm' AND tablename = 'requests'}),
	'0', 'pg_stats shows llm_user no statistics (most common values) of the log');
is(as_role('carol', q{SELECT count(*) > 0 FROM pg_stats WHERE schemaname = 'llm' AND tablename = 'requests'}),
	'f', 'nor llm_admin (row-level security applies to it too)');

# llm_admin sees all; a role outside llm_user and llm_admin gets 42501
is(as_role('carol', q{SELECT count(*) FROM llm.requests}), '7', 'llm_admin sees every row');
my ($r3, $o3, $e3) = psql_as('nobody', q{\set VERBOSITY verbose
	SELECT count(*) FROM llm.requests});
isnt($r3, 0, 'a non-member cannot read the log');
like($e3, qr/42501: permission denied for schema llm/, 'with 42501 (no usage of schema llm)');
$node->safe_psql('postgres', q{GRANT USAGE ON SCHEMA llm TO nobody});
($r3, $o3, $e3) = psql_as('nobody', q{\set VERBOSITY verbose
	SELECT count(*) FROM llm.requests});
like($e3, qr/42501: permission denied for table requests/, 'nor with usage of the schema: 42501 on the table');
# llm_user reads but cannot change or delete rows, its own included
($r3, $o3, $e3) = psql_as('alice', q{\set VERBOSITY verbose
	DELETE FROM llm.requests});
like($e3, qr/42501: permission denied for table requests/, 'llm_user cannot delete log rows');
($r3, $o3, $e3) = psql_as('alice', q{\set VERBOSITY verbose
	UPDATE llm.requests SET response_body = 'x'});
like($e3, qr/42501: permission denied for table requests/, 'nor update them');

# purge_requests: refused to llm_user; for admins it deletes old non-pending rows
($r3, $o3, $e3) = psql_as('alice', q{\set VERBOSITY verbose
	SELECT llm.purge_requests('1 day')});
like($e3, qr/42501: permission denied for function purge_requests/, 'llm.purge_requests is refused to llm_user');
$node->safe_psql('postgres', q{
	UPDATE llm.requests SET created_at = now() - interval '3 days'
	 WHERE request_body::text LIKE '%alice secret one%' OR request_body::text LIKE '%bob secret%';
	INSERT INTO llm.requests (created_at, status, alias, role_name)
	  VALUES (now() - interval '3 days', 'pending', 'm', 'old-pending');});
is(as_role('carol', q{SELECT llm.purge_requests('2 days')}), '2',
	'purge_requests returns the number of rows it deleted');
is($node->safe_psql('postgres', q{SELECT count(*) || ' ' || count(*) FILTER (WHERE status = 'pending') FROM llm.requests}),
	'6 1', 'the old pending row and every recent row are kept');
($r3, $o3, $e3) = psql_as('carol', q{\set VERBOSITY verbose
	SELECT llm.purge_requests('-1 day')});
like($e3, qr/22023: older_than must be an interval of zero or more/, 'a negative age is refused');

# retention: rows older than llm.log_retention go, recent and pending ones stay
($r3, $o3, $e3) = psql_as(undef, q{ALTER SYSTEM SET llm.log_retention = 'forever'});
like($e3, qr/invalid value for parameter "llm.log_retention"/, 'llm.log_retention must be an interval');
($r3, $o3, $e3) = psql_as(undef, q{ALTER SYSTEM SET llm.log_retention = '-1 day'});
like($e3, qr/must be positive/, 'and a positive one');
$node->safe_psql('postgres', q{
	UPDATE llm.requests SET created_at = now() - interval '2 days'
	 WHERE request_body::text LIKE '%alice secret two%' OR request_body::text LIKE '%dave secret%';
	UPDATE llm.requests SET created_at = now() - interval '25 hours'
	 WHERE request_body::text LIKE '%alice failing%';
	INSERT INTO llm.requests (created_at, status, alias, role_name)
	  SELECT now() - interval '40 days', 'ok', 'm', 'bulk' FROM generate_series(1, 2500);});
my $keep = $node->safe_psql('postgres', q{SELECT string_agg(id::text, ',' ORDER BY id) FROM llm.requests
	WHERE created_at > now() - interval '1 day' OR status = 'pending'});
# an old row another session holds locked is skipped, not waited for
my $holder = $node->background_psql('postgres');
$holder->query_safe(q{BEGIN; SELECT id FROM llm.requests WHERE request_body::text LIKE '%dave secret%' FOR UPDATE});
$node->safe_psql('postgres', q{ALTER SYSTEM SET llm.log_retention = '1 day'; SELECT pg_reload_conf();});
$node->poll_query_until('postgres', q{SELECT count(*) = 1 FROM llm.requests WHERE created_at < now() - interval '1 day' AND status <> 'pending'})
  or die 'retention never deleted the old rows';
is($node->safe_psql('postgres', q{SELECT role_name FROM llm.requests WHERE created_at < now() - interval '1 day' AND status <> 'pending'}),
	'dave', 'retention deleted the old rows in batches (2500 + 2) but the one held locked');
$holder->query_safe('COMMIT');
$holder->quit;
# a reload with a new value starts a batch at once
$node->safe_psql('postgres', q{ALTER SYSTEM SET llm.log_retention = '23 hours'; SELECT pg_reload_conf();});
$node->poll_query_until('postgres', q{SELECT count(*) = 0 FROM llm.requests WHERE created_at < now() - interval '1 day' AND status <> 'pending'})
  or die 'retention never deleted the row once released';
is($node->safe_psql('postgres', q{SELECT string_agg(id::text, ',' ORDER BY id) FROM llm.requests}),
	$keep, 'then that one: exactly the rows older than the retention went; recent and pending ones are kept');
ok($node->log_contains(qr/could not delete expired rows/) == 0, 'without a failure in the server log');

# calls go on while retention is set; their rows stay
is(as_role('alice', q{SELECT llm_complete('m', 'after retention')}), 'mock reply to: after retention', 'calls go on');
$node->poll_query_until('postgres', q{SELECT status = 'ok' FROM llm.requests WHERE request_body::text LIKE '%after retention%'})
  or die 'row of the new call missing';
ok(1, 'the new call is logged and kept');

$node->stop;
done_testing();
