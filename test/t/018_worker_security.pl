# The worker is privileged code: a hostile database owner must not make it
# run their functions (ALTER DATABASE ... SET search_path), stall it
# (statement_timeout, read-only transactions, lock waits) or get superuser
# rights through it; its transactions run as llm_gateway_worker.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes;
use LlmGatewayTest;

my $mock = start_mock();
my $node = gateway_node('worker_security', $mock, 'openai');

# a database owner who is not a superuser, with a schema of look-alikes of
# every function and operator the worker's SQL could resolve
$node->safe_psql('postgres', q{
	CREATE ROLE dbowner LOGIN;
	CREATE ROLE tester SUPERUSER LOGIN;
	ALTER ROLE tester SET search_path = pg_catalog, public;
	ALTER ROLE tester SET statement_timeout = 0;
	ALTER ROLE tester SET default_transaction_read_only = off;
	ALTER ROLE tester SET role = 'none';
	ALTER DATABASE postgres OWNER TO dbowner;
	GRANT CREATE ON SCHEMA public TO dbowner;
});
$node->safe_psql('postgres', q{
	SET ROLE dbowner;
	CREATE SCHEMA evil;
	CREATE TABLE evil.pwned (who text, what text);
	GRANT ALL ON SCHEMA evil TO PUBLIC;
	GRANT ALL ON evil.pwned TO PUBLIC;
	CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO evil.pwned VALUES (current_user, 'now()');
		BEGIN
			EXECUTE 'ALTER ROLE dbowner SUPERUSER';
		EXCEPTION WHEN OTHERS THEN NULL;
		END;
		RETURN pg_catalog.now();
	END $$;
	CREATE FUNCTION evil.texteq(text, text) RETURNS boolean LANGUAGE plpgsql AS $$
	BEGIN
		INSERT INTO evil.pwned VALUES (current_user, '=');
		BEGIN
			EXECUTE 'ALTER ROLE dbowner SUPERUSER';
		EXCEPTION WHEN OTHERS THEN NULL;
		END;
		RETURN pg_catalog.texteq($1, $2);
	END $$;
	CREATE OPERATOR evil.= (LEFTARG = text, RIGHTARG = text, FUNCTION = evil.texteq);
	ALTER DATABASE postgres SET search_path = evil, pg_catalog, public;
	ALTER DATABASE postgres SET statement_timeout = '1ms';
	ALTER DATABASE postgres SET default_transaction_read_only = on;
	ALTER DATABASE postgres SET lock_timeout = '1h';
	ALTER DATABASE postgres SET synchronous_commit = off;
	ALTER DATABASE postgres SET role = dbowner;
});

# the test's own queries run as a role whose settings override the
# database's (the worker connects as the bootstrap superuser, so the
# database's settings are what it gets)
sub tq
{
	my ($sql) = @_;
	return $node->safe_psql('postgres', $sql, extra_params => [ '-U', 'tester' ]);
}
sub poll
{
	my ($sql) = @_;
	for (1 .. 300)
	{
		return 1 if tq($sql) eq 't';
		Time::HiRes::usleep(100_000);
	}
	return 0;
}

# a row left pending by a worker that exits: the next worker (which applies
# the database's settings when it connects) marks it unknown
my $bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_until(qr/started/, q{\echo started
SET statement_timeout = 0;
SET default_transaction_read_only = off;
SET search_path = pg_catalog, public;
SELECT llm_complete('m', 'pending across exit [[mock:hang]]');
\echo done
});
poll(q{SELECT count(*) = 1 FROM llm.requests WHERE status = 'pending'})
  or die 'call never became pending';
my $pid = tq('SELECT worker_pid FROM llm.gateway_status()');
tq("SELECT pg_terminate_backend($pid)");
$bg->query_until(qr/done/, '');
$bg->quit;
poll(q{SELECT status = 'unknown' FROM llm.requests WHERE request_body::text LIKE '%pending across exit%'})
  or die 'row not marked unknown';
ok(1, 'the new worker marked the row unknown despite the database settings');

# calls keep working: statement_timeout = 1ms and read-only defaults of the
# database do not reach the worker
is(tq(q{SELECT llm_complete('m', 'still works')}),
	'mock reply to: still works', 'calls work under the hostile database settings');
is(tq(q{SELECT status FROM llm.requests WHERE request_body::text LIKE '%still works%'}),
	'ok', 'and their rows are completed');

is(tq(q{SELECT count(*) FROM evil.pwned}),
	'0', 'no look-alike function or operator ran');
is(tq(q{SELECT rolsuper FROM pg_roles WHERE rolname = 'dbowner'}),
	'f', 'the database owner did not become superuser');

# the worker's transactions run as llm_gateway_worker: a trigger a superuser
# adds to llm.requests sees that role, not a superuser
tq(q{
	CREATE TABLE public.trigger_saw (who text, super bool);
	GRANT INSERT ON public.trigger_saw TO llm_gateway_worker;
	CREATE FUNCTION public.note_user() RETURNS trigger LANGUAGE plpgsql
		SET search_path = pg_catalog AS $$
	BEGIN
		INSERT INTO public.trigger_saw
			SELECT current_user, rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user;
		RETURN NEW;
	END $$;
	CREATE TRIGGER note_user BEFORE INSERT ON llm.requests FOR EACH ROW EXECUTE FUNCTION public.note_user();
});
is(tq(q{SELECT llm_complete('m', 'with trigger')}),
	'mock reply to: with trigger', 'a call with a trigger on the log');
is(tq(q{SELECT who || ' ' || super FROM public.trigger_saw LIMIT 1}),
	'llm_gateway_worker false', 'the trigger ran as llm_gateway_worker, not a superuser');

# a pre-existing role of that name that others can use is refused at install
tq(q{
	DROP EXTENSION llm_gateway CASCADE; DROP OWNED BY llm_gateway_worker; DROP ROLE llm_gateway_worker;
	CREATE ROLE llm_gateway_worker LOGIN;});
my ($rc, $out, $err) = $node->psql('postgres', q{CREATE EXTENSION llm_gateway}, extra_params => [ '-U', 'tester' ]);
isnt($rc, 0, 'CREATE EXTENSION fails');
like($err, qr/role llm_gateway_worker exists and can be used by others/, 'with a clear error');

$node->stop;
$mock->stop;
done_testing();
