# An ERROR while the worker handles one call fails that call, never the
# worker: other calls in flight go on, and the next call is served by the
# same worker.  The ERROR here is a price the numeric code cannot multiply,
# put in place behind the input checks' back (as an old row, or a superuser
# bypassing them, could).
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use LlmGatewayTest;

my $mock = start_mock();
my $node = gateway_node('worker_survives', $mock, 'openai');

$node->safe_psql('postgres', q{
	SELECT llm.add_route('pricey', 'mock', 'openai-mock');
	-- bypass every check on llm.routes to store a price no call can be costed with
	DO $$
	DECLARE c record;
	BEGIN
		FOR c IN SELECT conname FROM pg_constraint
		          WHERE conrelid = 'llm.routes'::regclass AND contype = 'c' LOOP
			EXECUTE format('ALTER TABLE llm.routes DROP CONSTRAINT %I', c.conname);
		END LOOP;
	END $$;
	ALTER TABLE llm.routes DISABLE TRIGGER USER;
	UPDATE llm.routes SET options = '{"price_input": 9e131071}' WHERE alias = 'pricey';
	ALTER TABLE llm.routes ENABLE TRIGGER USER;
	SELECT pg_reload_conf();
});

my $pid = $node->safe_psql('postgres', 'SELECT worker_pid FROM llm.gateway_status()');

# a call of another session in flight meanwhile
my $bg = $node->background_psql('postgres', on_error_stop => 0);
$bg->query_until(qr/started/, q{\echo started
SELECT llm_complete('m', 'slow neighbour [[mock:latency=1500]]');
\echo done
});

my ($rc, $out, $err) = $node->psql('postgres',
	q{\set VERBOSITY verbose
SELECT llm_complete('pricey', 'cost me')});
isnt($rc, 0, 'the call with the uncomputable price fails');
like($err, qr/ERROR:  22023: route option "price_input" of route target \d+ is out of range: the cost of the call cannot be computed/,
	'with a clear SQLSTATE and a message naming the option');

my $bg_out = $bg->query_until(qr/done/, '');
like($bg_out, qr/mock reply to: slow neighbour/, 'the other call in flight was answered');
$bg->quit;

is($node->safe_psql('postgres', 'SELECT worker_pid FROM llm.gateway_status()'), $pid,
	'the same worker still serves');
is($node->safe_psql('postgres', q{SELECT llm_complete('m', 'next')}), 'mock reply to: next',
	'and the next call works');
is($node->safe_psql('postgres',
		q{SELECT status || ' ' || error_code FROM llm.requests WHERE request_body::text LIKE '%cost me%'}),
	'error 22023', 'the failed call is logged with its SQLSTATE');
unlike(slurp_file($node->logfile), qr/terminated by signal|exited with exit code 1/,
	'no worker exit in the server log');

$node->stop;
$mock->stop;
done_testing();
