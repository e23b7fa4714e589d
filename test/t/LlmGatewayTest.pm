# LlmGatewayTest: helpers shared by the TAP suites.
#
# new_node(NAME, CONF) creates a cluster with llm_gateway preloaded and a
# master key file (master_key_file(NODE));
# start_mock(ARGS) starts the bundled mock provider on a free loopback port
# and returns an object with ->port, ->url, ->get(PATH), ->post(PATH, BODY)
# and ->stop.
package LlmGatewayTest;

use strict;
use warnings;

use Exporter 'import';
use File::Basename qw(dirname);
use File::Spec;
use HTTP::Tiny;
use JSON::PP;
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Time::HiRes qw(usleep);

our @EXPORT = qw(new_node start_mock gateway_node master_key_file crash_marks_unknown mock_embedding);

my $mock_script =
  File::Spec->rel2abs(File::Spec->catfile(dirname(__FILE__), '..', 'mock', 'mock_provider.py'));

# crash_marks_unknown(NODE, BG, LIKE): an immediate shutdown (a crash) while
# the background session BG's call hangs, a restart, then true once that
# call's row (request body LIKE the pattern) is marked unknown.
sub crash_marks_unknown
{
	my ($node, $bg, $like) = @_;
	$node->stop('immediate');
	eval { $bg->quit };
	$node->start;
	return $node->poll_query_until('postgres',
		"SELECT status = 'unknown' FROM llm.requests WHERE request_body::text LIKE '$like'");
}

# A cluster with the library preloaded and the worker serving 'postgres'.
sub new_node
{
	my ($name, $extra_conf) = @_;
	my $node = PostgreSQL::Test::Cluster->new($name);
	$node->init;
	$node->append_conf('postgresql.conf', "shared_preload_libraries = 'llm_gateway'\n");
	# the master key that encrypts llm.credentials: 32 random bytes as hex,
	# mode 0600 (master_key_file(NODE) gives its path)
	my $keyfile = master_key_file($node);
	open(my $rnd, '<:raw', '/dev/urandom') or die "/dev/urandom: $!";
	read($rnd, my $bytes, 32) == 32 or die 'short read from /dev/urandom';
	close $rnd;
	open(my $kh, '>', $keyfile) or die "$keyfile: $!";
	print $kh unpack('H*', $bytes), "\n";
	close $kh;
	chmod(0600, $keyfile) or die "chmod $keyfile: $!";
	$node->append_conf('postgresql.conf', "llm.master_key_file = '$keyfile'\n");
	$node->append_conf('postgresql.conf', $extra_conf) if defined $extra_conf;
	return $node;
}

# gateway_node(NAME, MOCK, KIND, EXTRA_CONF): a started preloaded cluster with
# the extension and route alias "m" to the mock as a provider of KIND
# (anthropic or openai).
sub gateway_node
{
	my ($name, $mock, $kind, $extra_conf) = @_;
	my $node = new_node($name, $extra_conf);
	my $url = $kind eq 'openai' ? $mock->url . '/v1' : $mock->url;
	$node->start;
	$node->safe_psql('postgres', 'CREATE EXTENSION llm_gateway');
	$node->safe_psql('postgres', qq{
		SELECT llm.add_provider('mock', '$kind', '$url');
		SELECT llm.set_credential('mock', 'k');
		SELECT llm.add_route('m', 'mock', '$kind-mock');});
	return $node;
}

# mock_embedding(TEXT_SQL, DIM): the mock provider's vector of a text
# (test/mock/README.md) as a SQL real[] expression, for exact comparisons.
sub mock_embedding
{
	my ($text_sql, $dim) = @_;
	return qq{(SELECT array_agg(((((get_byte(sha256(convert_to($text_sql, 'UTF8')), k % 32) + k) % 256) / 256.0) - 0.5)::real ORDER BY k)
	            FROM generate_series(0, $dim - 1) k)};
}

# Where new_node put NODE's master key file.
sub master_key_file
{
	my ($node) = @_;
	return $node->basedir . '/master.key';
}

sub start_mock
{
	my (@args) = @_;
	my $portfile = "${PostgreSQL::Test::Utils::tmp_check}/mock.$$." . int(rand(1e9)) . ".port";
	my $log = "${PostgreSQL::Test::Utils::log_path}/mock_provider.log";
	my $pid = fork();
	die "fork failed: $!" unless defined $pid;
	if ($pid == 0)
	{
		open(STDOUT, '>>', $log) or die;
		open(STDERR, '>&', \*STDOUT) or die;
		exec('python3', $mock_script, '--port', '0', '--port-file', $portfile, '--quiet', @args)
		  or die "exec: $!";
	}
	# the mock writes its port file once it listens
	for (my $i = 0; $i < 200 && !-s $portfile; $i++)
	{
		die "mock provider exited early, see $log" if waitpid($pid, 1) == $pid;
		usleep(50_000);
	}
	die "mock provider did not start, see $log" unless -s $portfile;
	open(my $fh, '<', $portfile) or die;
	my $port = <$fh>;
	close $fh;
	unlink $portfile;
	chomp $port;
	return bless { pid => $pid, port => $port, http => HTTP::Tiny->new(timeout => 30) },
	  'LlmGatewayTest::Mock';
}

package LlmGatewayTest::Mock;

use JSON::PP;

sub port { return $_[0]->{port}; }
sub url  { return "http://127.0.0.1:$_[0]->{port}"; }

sub get
{
	my ($self, $path) = @_;
	my $r = $self->{http}->get($self->url . $path);
	die "GET $path: $r->{status} $r->{content}" unless $r->{success};
	return decode_json($r->{content});
}

# post(PATH, BODY_HASHREF, HEADERS_HASHREF): returns the HTTP::Tiny response.
sub post
{
	my ($self, $path, $body, $headers) = @_;
	return $self->{http}->post(
		$self->url . $path,
		{
			headers => { 'content-type' => 'application/json', %{ $headers // {} } },
			content => encode_json($body // {})
		});
}

sub reset { my ($self) = @_; $self->post('/_mock/reset'); return; }

sub stop
{
	my ($self) = @_;
	return unless $self->{pid};
	kill 'TERM', $self->{pid};
	waitpid($self->{pid}, 0);
	$self->{pid} = undef;
	return;
}

sub DESTROY { my ($self) = @_; $self->stop; return; }

1;
