/*
 * curl_client: the baseline of the overhead benchmark.
 *
 * Sends N sequential POSTs with one keep-alive libcurl handle, the way an
 * ideal in-process client would, and prints the median and p99 latency in
 * microseconds.  run-bench.sh compares llm_messages against these figures
 * in the same run.
 *
 *   curl_client URL BODY_FILE N [HEADER...]
 */
#include <curl/curl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static size_t
discard(char *ptr, size_t size, size_t nmemb, void *userdata)
{
	(void) ptr;
	(void) userdata;
	return size * nmemb;
}

static int
cmp_double(const void *a, const void *b)
{
	double		x = *(const double *) a;
	double		y = *(const double *) b;

	return (x > y) - (x < y);
}

static double
now_us(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e6 + ts.tv_nsec / 1e3;
}

int
main(int argc, char **argv)
{
	CURL	   *h;
	struct curl_slist *headers = NULL;
	FILE	   *f;
	char	   *body;
	long		len;
	int			n,
				i;
	double	   *lat;

	if (argc < 4)
	{
		fprintf(stderr, "usage: %s URL BODY_FILE N [HEADER...]\n", argv[0]);
		return 2;
	}
	f = fopen(argv[2], "rb");
	if (f == NULL)
	{
		perror(argv[2]);
		return 2;
	}
	fseek(f, 0, SEEK_END);
	len = ftell(f);
	fseek(f, 0, SEEK_SET);
	body = malloc(len + 1);
	if (fread(body, 1, len, f) != (size_t) len)
		return 2;
	fclose(f);
	n = atoi(argv[3]);
	lat = malloc(sizeof(double) * n);

	curl_global_init(CURL_GLOBAL_DEFAULT);
	h = curl_easy_init();
	headers = curl_slist_append(headers, "content-type: application/json");
	headers = curl_slist_append(headers, "Expect:");
	for (i = 4; i < argc; i++)
		headers = curl_slist_append(headers, argv[i]);
	curl_easy_setopt(h, CURLOPT_URL, argv[1]);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE, len);
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard);
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);

	for (i = 0; i < n; i++)
	{
		double		t0 = now_us();
		long		status = 0;

		if (curl_easy_perform(h) != CURLE_OK)
		{
			fprintf(stderr, "request %d failed\n", i);
			return 1;
		}
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status);
		if (status != 200)
		{
			fprintf(stderr, "request %d: HTTP %ld\n", i, status);
			return 1;
		}
		lat[i] = now_us() - t0;
	}
	if (getenv("LAT_FILE"))
	{
		FILE	   *out = fopen(getenv("LAT_FILE"), "a");

		if (out == NULL)
		{
			perror(getenv("LAT_FILE"));
			return 2;
		}
		for (i = 0; i < n; i++)
			fprintf(out, "%.1f\n", lat[i]);
		fclose(out);
	}
	qsort(lat, n, sizeof(double), cmp_double);
	printf("%.1f %.1f\n", lat[n / 2], lat[(int) (n * 0.99)]);
	curl_slist_free_all(headers);
	curl_easy_cleanup(h);
	curl_global_cleanup();
	free(body);
	free(lat);
	return 0;
}
