# Credentials encrypted at rest, against a real master key file: with the
# right key the provider gets the decrypted secret; with a wrong, missing,
# unsafe or unset key file, or a tampered ciphertext, the call fails with a
# clear error and nothing reaches the provider; the secret never appears in
# the server log or in any table.
use strict;
use warnings;
use FindBin;
use lib $FindBin::Bin;

use File::Copy qw(move);
use PostgreSQL::Test::Cluster;
use PostgreSQL::Test::Utils;
use Test::More;
use Time::HiRes qw(usleep);
use LlmGatewayTest;

sub random_hex
{
	my ($n) = @_;
	open(my $rnd, '<:raw', '/dev/urandom') or die "/dev/urandom: $!";
	read($rnd, my $bytes, $n) == $n or die 'short read from /dev/urandom';
	close $rnd;
	return unpack('H*', $bytes);
}

my $secret = 'sk-tap-SECRET-' . random_hex(12);
my $other_secret = 'sk-tap-OTHER-' . random_hex(12);

my $mock = start_mock();
# no statement logging (the test clusters log every statement by default):
# what is checked is what the gateway itself writes to the log
my $node = gateway_node('credentials', $mock, 'anthropic',
	"log_statement = none\nlog_min_messages = debug1\n");
my $keyfile = master_key_file($node);
my $good_key = slurp_file($keyfile);

# Replace the key file atomically (a new inode), mode 0600.
sub write_key
{
	my ($content, $mode) = @_;
	my $tmp = "$keyfile.new";
	open(my $fh, '>', $tmp) or die "$tmp: $!";
	print $fh $content;
	close $fh;
	chmod($mode // 0600, $tmp) or die "chmod: $!";
	move($tmp, $keyfile) or die "rename: $!";
	return;
}

# A committed change of a configuration table: the worker reloads its
# route cache (and so reads the key file again) before the next call.
sub touch_config
{
	$node->safe_psql('postgres', q{SELECT llm.set_credential_enabled('mock', 'default', true)});
	return;
}

sub provider_requests { return $mock->get('/_mock/stats')->{requests}; }

# A call: (succeeded, stdout, stderr); errors are shown with their SQLSTATE.
sub call
{
	my ($prompt) = @_;
	my ($ret, $out, $err) =
	  $node->psql('postgres', "\\set VERBOSITY verbose\nSELECT llm_complete('m', '$prompt')");
	return ($ret == 0, $out, $err);
}

# A call that must fail without reaching the provider; returns its error.
sub failing_call
{
	my ($prompt, $what) = @_;
	my $before = provider_requests();
	my ($ok, $out, $err) = call($prompt);
	ok(!$ok, "$what: the call fails");
	is(provider_requests(), $before, "$what: nothing was sent to the provider");
	return $err;
}

# 1. The secret comes from a server-side file, so it is in no SQL text.
my $secret_file = $node->basedir . '/provider.secret';
open(my $sf, '>', $secret_file) or die;
print $sf "$secret\n";
close $sf;
$node->safe_psql('postgres', "SELECT llm.set_credential_from_file('mock', '$secret_file')");

my ($ok, $out, $err) = call('hello');
ok($ok, 'a call works with the right master key') or diag($err);
is($out, 'mock reply to: hello', 'and gets the answer');
is($mock->get('/_mock/requests?last=1')->{requests}[0]{headers}{'x-api-key'},
	$secret, 'the provider received the decrypted secret in x-api-key');

my $cipher_hex = $node->safe_psql('postgres',
	q{SELECT encode(ciphertext, 'hex') FROM llm.credentials WHERE provider = 'mock'});
is(length($cipher_hex), 2 * (29 + length($secret) + 16), 'the table holds header (version 2), ciphertext and tag');
ok(index($cipher_hex, unpack('H*', $secret)) < 0, 'the stored bytes do not contain the secret');
is($node->safe_psql('postgres', q{SELECT key_id = llm.master_key_id() FROM llm.credentials_info}),
	't', 'key_id records the current master key');

# 2. Another master key: detected by its id before decrypting.
write_key(random_hex(32) . "\n");
touch_config();
$err = failing_call('wrong key', 'wrong master key');
like($err, qr/55000: could not decrypt the credential of provider "mock": the master key does not match/,
	'wrong master key: a clear error with SQLSTATE 55000');
like($err, qr/HINT:  Restore the master key file/, 'wrong master key: the hint says what to do');
($ok, $out, $err) = call('wrong key again');
ok(!$ok, 'the error stays until the key is fixed');
like(
	$node->safe_psql('postgres', q{SELECT error_code || ' ' || error FROM llm.requests ORDER BY id DESC LIMIT 1}),
	qr/^55000 could not decrypt the credential of provider "mock": the master key does not match/,
	'the log row records the error');
isnt($node->safe_psql('postgres', 'SELECT llm.master_key_id()'),
	$node->safe_psql('postgres', 'SELECT key_id FROM llm.credentials_info'),
	'llm.master_key_id() shows that the stored credential is under another key');

# 3. The right key back, applied by a configuration reload alone (SIGHUP).
write_key($good_key);
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
my $recovered = 0;
for (my $i = 0; $i < 100 && !$recovered; $i++)
{
	($ok) = call("after reload $i");
	$recovered = 1 if $ok;
	usleep(100_000) unless $ok;
}
ok($recovered, 'after restoring the key and reloading, calls work again');

# 4. A tampered ciphertext: one bit of the encrypted secret flipped.
$node->safe_psql('postgres',
	q{UPDATE llm.credentials SET ciphertext = set_byte(ciphertext, 30, get_byte(ciphertext, 30) # 1)});
$err = failing_call('tampered', 'tampered ciphertext');
like($err,
	qr/55000: could not decrypt the credential of provider "mock": the ciphertext failed authentication \(it was altered or is corrupt\)/,
	'tampered ciphertext: a clear error');
like($err, qr/HINT:  Store the secret again with llm.set_credential/, 'tampered ciphertext: the hint');
$node->safe_psql('postgres', "SELECT llm.set_credential_from_file('mock', '$secret_file')");
($ok, $out, $err) = call('stored again');
ok($ok, 'storing the secret again repairs it') or diag($err);

# 5. A missing key file.
move($keyfile, "$keyfile.away") or die;
touch_config();
$err = failing_call('no key file', 'missing key file');
like($err, qr/55000: could not decrypt the credential of provider "mock": master key file "\Q$keyfile\E" does not exist/,
	'missing key file: the error names the file');
like($err, qr/HINT:  Create a key file .*openssl rand -hex 32/, 'missing key file: the hint says how to create one');
($ok, $out, $err) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT llm.set_credential('mock', '$other_secret')");
like($err, qr/58P01: master key file "\Q$keyfile\E" does not exist/, 'set_credential without a key file: 58P01');
move("$keyfile.away", $keyfile) or die;

# 6. A key file others can read: refused, with the fix.
chmod(0644, $keyfile) or die;
touch_config();
$err = failing_call('readable key', 'group/world-readable key file');
like($err, qr/master key file "\Q$keyfile\E" is accessible by other users/, 'unsafe mode: refused');
like($err, qr/HINT:  Run "chmod 600 \Q$keyfile\E"/, 'unsafe mode: the hint gives the chmod');
($ok, $out, $err) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT llm.set_credential('mock', '$other_secret')");
like($err, qr/55000: master key file .* is accessible by other users.*DETAIL:  Its mode is 0644/s,
	'set_credential refuses it too');
chmod(0600, $keyfile) or die;

# 7. A file that is not a key.
write_key("not a key\n");
touch_config();
$err = failing_call('bad key file', 'malformed key file');
like($err, qr/master key file "\Q$keyfile\E" does not hold a 256-bit key/, 'malformed key file: refused');
write_key($good_key);
touch_config();
($ok, $out, $err) = call('good key again');
ok($ok, 'the good key works again') or diag($err);

# 8. llm.master_key_file unset: no plaintext fallback.
$node->safe_psql('postgres', q{ALTER SYSTEM SET llm.master_key_file = ''});
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');
my $failed = 0;
for (my $i = 0; $i < 100 && !$failed; $i++)
{
	($ok, $out, $err) = call("unset $i");
	$failed = 1 unless $ok;
	usleep(100_000) if $ok;
}
ok($failed, 'with llm.master_key_file unset, calls fail');
like($err, qr/55000: could not decrypt the credential of provider "mock": llm.master_key_file is not set/,
	'unset: a clear error');
failing_call('unset again', 'unset key file');
$node->poll_query_until('postgres', q{SELECT current_setting('llm.master_key_file') = ''})
  or die 'the reload did not reach new sessions';
($ok, $out, $err) = $node->psql('postgres',
	"\\set VERBOSITY verbose\nSELECT llm.set_credential('mock', '$other_secret')");
like($err, qr/55000: llm.master_key_file is not set/, 'set_credential without the setting: 55000');
$node->safe_psql('postgres', 'ALTER SYSTEM RESET llm.master_key_file');
$node->safe_psql('postgres', 'SELECT pg_reload_conf()');

# 9. Errors of set_credential never log the statement (with its secret).
$node->poll_query_until('postgres', q{SELECT current_setting('llm.master_key_file') <> ''})
  or die 'the reload did not reach new sessions';
($ok, $out, $err) = $node->psql('postgres', "SELECT llm.set_credential('no_such_provider', '$other_secret')");
like($err, qr/provider "no_such_provider" does not exist/, 'an unknown provider is an error');
unlike($err, qr/\Q$other_secret\E/, 'which does not show the secret');

# 10. The secret is nowhere: not in the server log, not in any table or view.
$recovered = 0;
for (my $i = 0; $i < 100 && !$recovered; $i++)
{
	($ok) = call("final $i");
	$recovered = 1 if $ok;
	usleep(100_000) unless $ok;
}
ok($recovered, 'calls work at the end');
my $log = slurp_file($node->logfile);
like($log, qr/cannot be used: the master key does not match/, 'the worker logged why a credential was unusable');
for my $s ($secret, $other_secret)
{
	unlike($log, qr/\Q$s\E/, 'the server log does not contain the secret');
	unlike($log, qr/\Q${\ unpack('H*', $s)}\E/i, 'nor its hex form');
}
my @relations = split /\n/, $node->safe_psql('postgres',
	q{SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c
	    JOIN pg_namespace n ON n.oid = c.relnamespace
	   WHERE n.nspname = 'llm' AND c.relkind IN ('r', 'v', 'm') ORDER BY 1});
cmp_ok(scalar(@relations), '>=', 5, 'every table and view of schema llm is searched');
my $found = '';
for my $rel (@relations)
{
	my $rows = $node->safe_psql('postgres', "SELECT t::text FROM $rel AS t");
	for my $s ($secret, $other_secret)
	{
		$found .= " $rel" if index($rows, $s) >= 0 || index(lc($rows), unpack('H*', $s)) >= 0;
	}
}
is($found, '', 'no table or view contains the secret, as text or hex');

$node->stop;
$mock->stop;
done_testing();
