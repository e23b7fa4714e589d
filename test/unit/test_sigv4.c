/*
 * test_sigv4.c: src/common/sigv4.c against published SigV4 test vectors.
 *
 * Built as frontend code (no server needed) by test/unit/run-unit.sh and
 * run by "bash test/run-tests.sh unit".  Prints one line per case and a
 * final "N passed, M failed".
 *
 * Vectors (credentials AKIDEXAMPLE / wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY):
 *   awslabs/aws-c-auth tests/aws-signing-test-suite/v4/<case>/header-signed-request.txt
 *     (us-east-1, service "service", 20150830T123600Z; normalize=true cases)
 *   boto/botocore tests/unit/auth/aws4_testsuite/get-{space,utf8}.{creq,sts,authz}
 *     (us-east-1, service "host", 20110909T233600Z): these two pin the
 *     non-S3 double encoding of an already encoded path.
 *   shared/reference/provider_protocols.md 5.6: post-vanilla's canonical
 *     request hash.
 */
#include "postgres_fe.h"

#include "common/sigv4.h"

#define AKID "AKIDEXAMPLE"
#define SECRET "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"

static int	passed;
static int	failed;

static void
check(const char *name, const char *what, const char *got, const char *want)
{
	if (strcmp(got, want) == 0)
	{
		passed++;
		printf("ok   %s %s\n", name, what);
	}
	else
	{
		failed++;
		printf("FAIL %s %s\n  got:  %s\n  want: %s\n", name, what, got, want);
	}
}

static SigV4Result
sign(const char *method, const char *path, const char *query,
	 const SigV4Header *h, int nh, const char *payload, const char *date,
	 const char *service)
{
	SigV4Request r = {0};
	SigV4Result out;

	r.method = method;
	r.path = path;
	r.query = query;
	r.headers = h;
	r.nheaders = nh;
	r.payload = payload;
	r.payload_len = strlen(payload);
	r.amz_date = date;
	r.region = "us-east-1";
	r.service = service;
	r.access_key_id = AKID;
	r.secret_access_key = SECRET;
	if (!sigv4_sign(&r, &out))
	{
		printf("FAIL sigv4_sign returned false\n");
		exit(1);
	}
	return out;
}

#define D15 "20150830T123600Z"
#define HOST15 {"Host", "example.amazonaws.com"}, {"X-Amz-Date", D15}
#define SIG15(sig) "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=" sig

int
main(void)
{
	SigV4Result r;
	char		hex[65];

	{
		SigV4Header h[] = {HOST15};

		r = sign("GET", "/", NULL, h, 2, "", D15, "service");
		check("get-vanilla", "creq", r.canonical_request,
			  "GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:" D15 "\n\nhost;x-amz-date\n"
			  "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
		r = sign("POST", "/", NULL, h, 2, "", D15, "service");
		sigv4_sha256_hex(r.canonical_request, strlen(r.canonical_request), hex);
		check("post-vanilla", "creq hash", hex,
			  "553f88c9e4d10fc9e109e2aeb65f030801b70c2f6468faca261d401ae622fc87");
		check("post-vanilla", "authz", r.authorization,
			  SIG15("5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b"));

		r = sign("GET", "/", "Param2=value2&Param1=value1", h, 2, "", D15, "service");
		check("get-vanilla-query-order-key-case", "authz", r.authorization,
			  SIG15("b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500"));

		r = sign("GET", "/", "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz="
				 "-._~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
				 h, 2, "", D15, "service");
		check("get-vanilla-query-unreserved", "authz", r.authorization,
			  SIG15("9c3e54bfcdf0b19771a7f523ee5669cdf59bc7cc0884027167c21bb143a40197"));

		/* the request line carries the raw UTF-8 path: encoded once */
		r = sign("GET", "/\xe1\x88\xb4", NULL, h, 2, "", D15, "service");
		check("get-utf8 (aws-c-auth)", "authz", r.authorization,
			  SIG15("8318018e0b0f223aa2bbf98705b62bb787dc9c0e678f255a891fd03141be5d85"));
	}
	{
		SigV4Header h[] = {HOST15, {"X-Amz-Security-Token",
		"6e86291e8372ff2a2260956d9b8aae1d763fbf315fa00fa31553b73ebf194267"}};

		r = sign("GET", "/", NULL, h, 3, "", D15, "service");
		check("get-vanilla-with-session-token", "authz", r.authorization,
			  "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, "
			  "SignedHeaders=host;x-amz-date;x-amz-security-token, "
			  "Signature=07ec1639c89043aa0e3e2de82b96708f198cceab042d4a97044c66dd9f74e7f8");
	}
	{
		/* botocore's old suite: a Date header instead of X-Amz-Date */
		SigV4Header h[] = {{"Date", "Mon, 09 Sep 2011 23:36:00 GMT"}, {"Host", "host.foo.com"}};

		r = sign("GET", "/%20/foo", NULL, h, 2, "", "20110909T233600Z", "host");
		check("get-space (botocore)", "creq", r.canonical_request,
			  "GET\n/%2520/foo\n\ndate:Mon, 09 Sep 2011 23:36:00 GMT\nhost:host.foo.com\n\ndate;host\n"
			  "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
		check("get-space (botocore)", "sts", r.string_to_sign,
			  "AWS4-HMAC-SHA256\n20110909T233600Z\n20110909/us-east-1/host/aws4_request\n"
			  "35975885599128f8963ce9be7219598b2b5a344321bae304529556c891e9e6ba");
		check("get-space (botocore)", "authz", r.authorization,
			  "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20110909/us-east-1/host/aws4_request, "
			  "SignedHeaders=date;host, "
			  "Signature=2be9e587d1ee1f0fd02128724b86b4358ba3630d39f493b6e06610a19a50779e");

		r = sign("GET", "/%E1%88%B4", NULL, h, 2, "", "20110909T233600Z", "host");
		check("get-utf8 (botocore)", "creq", r.canonical_request,
			  "GET\n/%25E1%2588%25B4\n\ndate:Mon, 09 Sep 2011 23:36:00 GMT\nhost:host.foo.com\n\ndate;host\n"
			  "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
		check("get-utf8 (botocore)", "sts", r.string_to_sign,
			  "AWS4-HMAC-SHA256\n20110909T233600Z\n20110909/us-east-1/host/aws4_request\n"
			  "47f4456c465167f4db3490a68903fe057412e6e030de38f71d9006467eb4922a");
		check("get-utf8 (botocore)", "authz", r.authorization,
			  "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20110909/us-east-1/host/aws4_request, "
			  "SignedHeaders=date;host, "
			  "Signature=57b1eb3df3b16a8479c0097b66c0b261cfd65b829419a3f2c3d05319722490b8");
	}
	{
		/* header canonicalisation: case, order, blanks, repeats; dot segments */
		SigV4Header h[] = {{"My-Header1", "  a   b \t c "}, {"Host", "example.amazonaws.com"},
		{"my-header1", "second"}, {"X-Amz-Date", D15}};

		r = sign("POST", "/a/./b/../c//d/", NULL, h, 4, "", D15, "service");
		check("canonical headers", "creq", r.canonical_request,
			  "POST\n/a/c/d/\n\nhost:example.amazonaws.com\nmy-header1:a b c,second\n"
			  "x-amz-date:" D15 "\n\nhost;my-header1;x-amz-date\n"
			  "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	}
	{
		char		d[17];

		sigv4_amz_date((time_t) 1440938160, d);
		check("amz_date", "format", d, D15);
		check("uri_encode", "label", sigv4_uri_encode("arn:aws:x/y z", 13, false),
			  "arn%3Aaws%3Ax%2Fy%20z");
	}

	printf("%d passed, %d failed\n", passed, failed);
	return failed ? 1 : 0;
}
