/* The limit for the benchmark: the fastest a registered audit daemon can be handed records.
 *
 *   limit [-b RCVBUF] [-l LOGFILE] KEY COUNTFILE [STAMPFILE]
 *
 * Registers with the kernel as its audit daemon, reads the record stream with recvmmsg(2),
 * 128 datagrams per call into buffers allocated once, and discards every record: no
 * formatting, no log, no dispatch.  What it reaches is what the kernel (kauditd, netlink)
 * allows, so a daemon's events/s are judged as a share of it.
 *
 * -b sets the receive buffer (default 16 MiB; pyauditd uses 64 KiB while the kernel waits,
 * so the limit is also measured with the buffer a daemon really has).  -l makes it the C
 * writer floor (bench/floors.py): each record becomes a log line "type=NAME msg=PAYLOAD\n"
 * and each batch one write(2) to LOGFILE, the least any audit logger does per record: no
 * event grouping, no serial checks, no flushing, no dispatch.
 *
 * Progress, for the benchmark to poll as it polls a daemon's log: COUNTFILE holds one
 * 64-bit counter (host order, in an mmap, so counting costs no system call) of SYSCALL
 * records whose key is KEY.  With STAMPFILE, each such record's a0 (the load generator
 * numbers its calls there) and its arrival time (CLOCK_REALTIME, ns) are kept and written
 * to STAMPFILE as text at exit: the latency of the kernel's hand-over itself.
 *
 * It changes one kernel setting, the registered pid, and always gives it back: SIGTERM,
 * SIGINT and SIGHUP stop it, and it unregisters (from a second socket, reading on while
 * the kernel answers) before it exits, also after an error once registered.  The benchmark
 * restores enabled, backlog_limit and backlog_wait_time around it as around the daemons.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/netlink.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define SLOTS 128
#define PAYLOAD 8970 /* MAX_AUDIT_MESSAGE_LENGTH */
#define MAX_STAMPS (1 << 22)

static volatile sig_atomic_t stopping;

static void on_signal(int signum)
{
    (void)signum;
    stopping = 1;
}

/* One AUDIT_SET carrying only the pid; returns the kernel's answer (0 or -errno), or
 * -ETIMEDOUT.  `drain`, if not -1, is read and discarded meanwhile: the registered socket
 * keeps receiving records until the kernel has processed the request. */
static int set_pid(int sock, uint32_t pid, int drain)
{
    struct {
        struct nlmsghdr nlh;
        struct audit_status status;
    } req;
    memset(&req, 0, sizeof req);
    req.nlh.nlmsg_len = sizeof req;
    req.nlh.nlmsg_type = AUDIT_SET;
    req.nlh.nlmsg_flags = NLM_F_REQUEST | NLM_F_ACK;
    req.nlh.nlmsg_seq = 1 + pid % 1000;
    req.status.mask = AUDIT_STATUS_PID;
    req.status.pid = pid;
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    if (sendto(sock, &req, sizeof req, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0)
        return -errno;
    static char buf[PAYLOAD + 64];
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        struct pollfd fds[2] = {{.fd = sock, .events = POLLIN}, {.fd = drain, .events = POLLIN}};
        poll(fds, drain >= 0 ? 2 : 1, 100);
        if (drain >= 0 && (fds[1].revents & POLLIN))
            while (recv(drain, buf, sizeof buf, MSG_DONTWAIT) > 0)
                ;
        if (fds[0].revents & POLLIN) {
            ssize_t n = recv(sock, buf, sizeof buf, MSG_DONTWAIT);
            struct nlmsghdr *h = (struct nlmsghdr *)buf;
            if (n >= (ssize_t)(sizeof *h + sizeof(int)) && h->nlmsg_type == NLMSG_ERROR &&
                h->nlmsg_seq == req.nlh.nlmsg_seq)
                return *(int *)NLMSG_DATA(h);
        }
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - start.tv_sec > 5)
            return -ETIMEDOUT;
    }
}

static int open_audit(void)
{
    int sock = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_AUDIT);
    if (sock < 0)
        return -1;
    struct sockaddr_nl local = {.nl_family = AF_NETLINK};
    if (bind(sock, (struct sockaddr *)&local, sizeof local) < 0) {
        close(sock);
        return -1;
    }
    return sock;
}

/* The record type's name as auditd writes it, for the types the benchmarks produce. */
static const char *type_name(unsigned type, char *scratch, size_t size)
{
    switch (type) {
    case AUDIT_SYSCALL: return "SYSCALL";
    case AUDIT_PATH: return "PATH";
    case AUDIT_CWD: return "CWD";
    case AUDIT_EXECVE: return "EXECVE";
    case AUDIT_EOE: return "EOE";
    case AUDIT_PROCTITLE: return "PROCTITLE";
    }
    snprintf(scratch, size, "UNKNOWN[%u]", type);
    return scratch;
}

int main(int argc, char **argv)
{
    int rcvbuf = 16 << 20; /* as pyauditd's buffer when the kernel does not wait */
    const char *log_path = NULL;
    for (int opt; (opt = getopt(argc, argv, "b:l:")) != -1;) {
        if (opt == 'b')
            rcvbuf = atoi(optarg);
        else if (opt == 'l')
            log_path = optarg;
        else
            return 2;
    }
    argc -= optind - 1;
    argv += optind - 1;
    if (argc < 3 || rcvbuf <= 0) {
        fprintf(stderr, "usage: limit [-b RCVBUF] [-l LOGFILE] KEY COUNTFILE [STAMPFILE]\n");
        return 2;
    }
    int log_fd = -1;
    static char out[SLOTS * (PAYLOAD + 48)];
    if (log_path) {
        log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
        if (log_fd < 0) {
            perror(log_path);
            return 1;
        }
    }
    char marker[128];
    snprintf(marker, sizeof marker, "key=\"%s\"", argv[1]);
    size_t marker_len = strlen(marker);

    int cfd = open(argv[2], O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (cfd < 0 || ftruncate(cfd, sizeof(uint64_t)) < 0) {
        perror(argv[2]);
        return 1;
    }
    volatile uint64_t *counter =
        mmap(NULL, sizeof(uint64_t), PROT_READ | PROT_WRITE, MAP_SHARED, cfd, 0);
    if (counter == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    uint64_t (*stamps)[2] = NULL;
    if (argc > 3) {
        stamps = calloc(MAX_STAMPS, sizeof *stamps);
        if (!stamps)
            return 1;
    }

    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: recvmmsg returns */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);

    int events = open_audit(), control = open_audit();
    if (events < 0 || control < 0) {
        perror("socket");
        return 1;
    }
    if (setsockopt(events, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf) < 0)
        setsockopt(events, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
    int rc = set_pid(events, (uint32_t)getpid(), -1);
    if (rc) {
        fprintf(stderr, "limit: cannot register: %s\n", strerror(-rc));
        return 1;
    }

    static char headers[SLOTS][NLMSG_HDRLEN];
    static char payloads[SLOTS][PAYLOAD];
    static struct iovec iov[SLOTS][2];
    static struct mmsghdr msgs[SLOTS];
    for (int i = 0; i < SLOTS; i++) {
        iov[i][0] = (struct iovec){headers[i], NLMSG_HDRLEN};
        iov[i][1] = (struct iovec){payloads[i], PAYLOAD};
        msgs[i].msg_hdr.msg_iov = iov[i];
        msgs[i].msg_hdr.msg_iovlen = 2;
    }
    uint64_t matched = 0, records = 0;
    size_t nstamps = 0;
    int status = 0;
    while (!stopping) {
        int n = recvmmsg(events, msgs, SLOTS, MSG_WAITFORONE, NULL);
        if (n < 0) {
            if (errno == EINTR || errno == ENOBUFS)
                continue;
            perror("recvmmsg");
            status = 1;
            break;
        }
        struct timespec now;
        if (stamps)
            clock_gettime(CLOCK_REALTIME, &now);
        records += n;
        size_t used = 0;
        for (int i = 0; i < n; i++) {
            const struct nlmsghdr *h = (const struct nlmsghdr *)headers[i];
            if (log_fd >= 0 && msgs[i].msg_len > NLMSG_HDRLEN) {
                char scratch[32];
                size_t len = msgs[i].msg_len - NLMSG_HDRLEN;
                used += (size_t)sprintf(out + used, "type=%s msg=",
                                        type_name(h->nlmsg_type, scratch, sizeof scratch));
                memcpy(out + used, payloads[i], len);
                used += len;
                out[used++] = '\n';
            }
            if (h->nlmsg_type != AUDIT_SYSCALL || msgs[i].msg_len <= NLMSG_HDRLEN)
                continue;
            size_t len = msgs[i].msg_len - NLMSG_HDRLEN;
            if (!memmem(payloads[i], len, marker, marker_len))
                continue;
            matched++;
            if (stamps && nstamps < MAX_STAMPS) {
                const char *a0 = memmem(payloads[i], len, " a0=", 4);
                stamps[nstamps][0] = a0 ? strtoull(a0 + 4, NULL, 16) : UINT64_MAX;
                stamps[nstamps][1] = (uint64_t)now.tv_sec * 1000000000u + now.tv_nsec;
                nstamps++;
            }
        }
        if (used && write(log_fd, out, used) != (ssize_t)used) {
            perror(log_path);
            status = 1;
            break;
        }
        *counter = matched;
    }
    rc = set_pid(control, 0, events);
    if (rc) {
        fprintf(stderr, "limit: cannot unregister: %s\n", strerror(-rc));
        status = 1;
    }
    if (stamps) {
        FILE *out = fopen(argv[3], "w");
        if (!out) {
            perror(argv[3]);
            return 1;
        }
        for (size_t i = 0; i < nstamps; i++)
            fprintf(out, "%llu %llu\n", (unsigned long long)stamps[i][0],
                    (unsigned long long)stamps[i][1]);
        fclose(out);
    }
    fprintf(stderr, "limit: %llu records, %llu with key %s\n", (unsigned long long)records,
            (unsigned long long)matched, argv[1]);
    return status;
}
