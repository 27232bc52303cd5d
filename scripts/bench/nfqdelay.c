/* nfqdelay: hold every packet of one netfilter queue for a fixed time, then
 * let it through, in the order it came. With iptables rules that send a TCP
 * port's packets on lo to the queue (both directions), connections to that
 * port see a round trip of twice the delay, in the kernel's own TCP: the
 * stand-in for `tc netem delay` on kernels built without sch_netem.
 *
 * Usage: nfqdelay QUEUE_NUM DELAY_MS
 * Runs until SIGTERM/SIGINT; then lets every held packet through at once.
 * Only packets' metadata cross to user space (NFQNL_COPY_META), so the cost
 * is a netlink message per packet, not a copy of its bytes.
 *
 * Built by scripts/bench-sync.sh: cc -O2 -o nfqdelay nfqdelay.c
 * -lnetfilter_queue -lnfnetlink (Debian: libnetfilter-queue-dev). */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <sys/socket.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include <linux/netfilter.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

/* Packets held at once: enough for a 20 ms round trip at several GiB/s
 * with 64 KiB loopback segments, and the kernel's queue is set to match. */
#define CAP (1u << 16)

static struct {
	uint32_t id;
	uint64_t due_ns;
} held[CAP];
static uint32_t head, tail; /* held[head..tail) in arrival order */
static uint64_t delay_ns;
static volatile sig_atomic_t stop;
static unsigned long long overflows;

static uint64_t now_ns(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg,
		     struct nfq_data *nfa, void *data)
{
	(void)msg;
	(void)data;
	struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
	if (!ph)
		return 0;
	uint32_t id = ntohl(ph->packet_id);
	if (tail - head == CAP) {
		/* Full: let this one through now (counted, reported at exit)
		 * rather than drop it. */
		overflows++;
		return nfq_set_verdict(qh, id, NF_ACCEPT, 0, NULL);
	}
	held[tail % CAP].id = id;
	held[tail % CAP].due_ns = now_ns() + delay_ns;
	tail++;
	return 0;
}

static void release_due(struct nfq_q_handle *qh, int all)
{
	uint64_t now = now_ns();
	while (head != tail && (all || held[head % CAP].due_ns <= now)) {
		nfq_set_verdict(qh, held[head % CAP].id, NF_ACCEPT, 0, NULL);
		head++;
	}
}

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

int main(int argc, char **argv)
{
	if (argc != 3) {
		fprintf(stderr, "usage: nfqdelay QUEUE_NUM DELAY_MS\n");
		return 2;
	}
	int qnum = atoi(argv[1]);
	delay_ns = (uint64_t)strtoull(argv[2], NULL, 10) * 1000000u;
	struct sigaction sa;
	memset(&sa, 0, sizeof sa);
	sa.sa_handler = on_signal;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	struct nfq_handle *h = nfq_open();
	if (!h) {
		perror("nfq_open");
		return 1;
	}
	struct nfq_q_handle *qh = nfq_create_queue(h, qnum, on_packet, NULL);
	if (!qh) {
		perror("nfq_create_queue");
		return 1;
	}
	if (nfq_set_mode(qh, NFQNL_COPY_META, 0) < 0) {
		perror("nfq_set_mode");
		return 1;
	}
	if (nfq_set_queue_maxlen(qh, CAP) < 0)
		perror("nfq_set_queue_maxlen");
	/* Room in the netlink socket for a burst of queued packets' messages. */
	nfnl_rcvbufsiz(nfq_nfnlh(h), 64u << 20);
	int fd = nfq_fd(h);
	char buf[65536];
	printf("nfqdelay: queue %d, %s ms each way\n", qnum, argv[2]);
	fflush(stdout);
	while (!stop) {
		release_due(qh, 0);
		struct timespec ts, *tp = NULL;
		if (head != tail) {
			uint64_t due = held[head % CAP].due_ns, now = now_ns();
			uint64_t wait = due > now ? due - now : 0;
			ts.tv_sec = (time_t)(wait / 1000000000u);
			ts.tv_nsec = (long)(wait % 1000000000u);
			tp = &ts;
		}
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int n = ppoll(&p, 1, tp, NULL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("poll");
			break;
		}
		if (n > 0) {
			/* Everything waiting, so arrivals keep their order. */
			for (;;) {
				ssize_t r = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
				if (r < 0) {
					if (errno == ENOBUFS) {
						fprintf(stderr, "nfqdelay: netlink buffer overrun\n");
						continue;
					}
					break;
				}
				nfq_handle_packet(h, buf, (int)r);
			}
		}
	}
	release_due(qh, 1);
	if (overflows)
		fprintf(stderr, "nfqdelay: %llu packets passed undelayed (queue full)\n", overflows);
	nfq_destroy_queue(qh);
	nfq_close(h);
	return 0;
}
