/* sender.c -- the benchmark's UDP flood: sendmmsg in batches, paced or flat out.
 *
 * Usage: sender DST_IP DST_PORT RATE_PPS SECONDS [PAYLOAD_BYTES=18]
 *
 * RATE_PPS 0 sends as fast as it can for SECONDS; otherwise by time t it has
 * sent RATE_PPS * t datagrams (CLOCK_MONOTONIC, small batches, nanosleep in
 * between), RATE_PPS * SECONDS in all.  Batches rotate over NSOCK connected
 * sockets, so the traffic has NSOCK flows (distinct ephemeral source ports).
 * SIGINT/SIGTERM end it early.  At exit it prints one integer on stdout: the
 * datagrams sendmmsg reported as sent.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define BATCH 64
#define NSOCK 16
#define MAX_PAYLOAD 1472

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_s(double s)
{
	struct timespec ts;

	if (s <= 0)
		return;
	ts.tv_sec = (time_t)s;
	ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
	nanosleep(&ts, NULL); /* EINTR: the loop re-checks the clock and `stop` */
}

static int parse_num(const char *text, const char *what, double lo, double hi, double *out)
{
	char *end;
	double v;

	errno = 0;
	v = strtod(text, &end);
	if (errno || end == text || *end || v < lo || v > hi) {
		fprintf(stderr, "sender: bad %s: %s\n", what, text);
		return -1;
	}
	*out = v;
	return 0;
}

int main(int argc, char **argv)
{
	static char payload[MAX_PAYLOAD];
	struct mmsghdr msgs[BATCH];
	struct iovec iov;
	struct sockaddr_in dst;
	struct sigaction sa;
	double port, rate, seconds, size = 18, start, elapsed;
	uint64_t sent = 0, total = 0, due, want;
	int socks[NSOCK], i, n, next = 0;

	if (argc < 5 || argc > 6) {
		fprintf(stderr, "usage: %s DST_IP DST_PORT RATE_PPS SECONDS [PAYLOAD_BYTES=18]\n", argv[0]);
		return 2;
	}
	memset(&dst, 0, sizeof(dst));
	dst.sin_family = AF_INET;
	if (inet_pton(AF_INET, argv[1], &dst.sin_addr) != 1) {
		fprintf(stderr, "sender: bad IPv4 address: %s\n", argv[1]);
		return 2;
	}
	if (parse_num(argv[2], "port", 1, 65535, &port) || parse_num(argv[3], "rate", 0, 1e9, &rate) ||
	    parse_num(argv[4], "seconds", 0, 1e6, &seconds) ||
	    (argc == 6 && parse_num(argv[5], "payload size", 0, MAX_PAYLOAD, &size)))
		return 2;
	dst.sin_port = htons((uint16_t)port);
	rate = (double)(uint64_t)rate;
	if (rate > 0)
		total = (uint64_t)(rate * seconds);

	for (i = 0; i < NSOCK; i++) {
		socks[i] = socket(AF_INET, SOCK_DGRAM, 0);
		if (socks[i] < 0 || connect(socks[i], (struct sockaddr *)&dst, sizeof(dst)) < 0) {
			perror("sender: socket/connect");
			return 1;
		}
	}
	memset(payload, 'x', sizeof(payload));
	iov.iov_base = payload;
	iov.iov_len = (size_t)size;
	memset(msgs, 0, sizeof(msgs));
	for (i = 0; i < BATCH; i++) {
		msgs[i].msg_hdr.msg_iov = &iov;
		msgs[i].msg_hdr.msg_iovlen = 1;
	}
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	start = now_s();
	while (!stop) {
		elapsed = now_s() - start;
		if (rate <= 0) {
			if (elapsed >= seconds)
				break;
			want = BATCH;
		} else {
			if (sent >= total)
				break;
			due = elapsed >= seconds ? total : (uint64_t)(rate * elapsed);
			if (due <= sent) {
				/* ahead of schedule: sleep until a small batch is due */
				uint64_t chunk = (uint64_t)(rate / 2000) + 1;

				if (chunk > BATCH)
					chunk = BATCH;
				sleep_s((double)(sent + chunk) / rate - elapsed);
				continue;
			}
			want = due - sent < BATCH ? due - sent : BATCH;
		}
		n = sendmmsg(socks[next], msgs, (unsigned int)want, 0);
		next = (next + 1) % NSOCK;
		if (n > 0)
			sent += (uint64_t)n;
		else if (n < 0 && errno != EINTR && errno != ENOBUFS && errno != EAGAIN &&
			 errno != ECONNREFUSED) {
			perror("sender: sendmmsg");
			break;
		}
	}
	for (i = 0; i < NSOCK; i++)
		close(socks[i]);
	printf("%llu\n", (unsigned long long)sent);
	return 0;
}
