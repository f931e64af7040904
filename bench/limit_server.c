/* The limit for the fan-in benchmark: the fastest a log server can answer remote clients.
 *
 *   limit_server PORT
 *
 * Listens on 127.0.0.1:PORT and speaks the server side of audisp-remote's managed protocol
 * (src/auditpy/proto/remote.py: 16-byte little-endian header, magic 0xff0000fe): every
 * MESSAGE or HEARTBEAT frame is answered with an ACK carrying its sequence id, and nothing
 * is written anywhere.  The ACKs for all frames a read brought are sent with one write.
 * One thread, epoll, non-blocking sockets.  On SIGTERM/SIGINT it prints how many MESSAGE
 * frames it received ("frames N") to stdout and exits.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define MAGIC 0xff0000feu
#define HEADER 16
#define MAX_PAYLOAD 8970
#define TYPE_MESSAGE 0u
#define TYPE_HEARTBEAT 1u
#define TYPE_ACK 0x40000000u
#define MAX_FD 65536

struct client {
    size_t have;
    unsigned char buf[HEADER + MAX_PAYLOAD];
};

static struct client *clients[MAX_FD];
static volatile sig_atomic_t stopping;
static unsigned long long frames;

static void on_signal(int signum)
{
    (void)signum;
    stopping = 1;
}

static uint32_t le32(const unsigned char *p)
{
    return p[0] | p[1] << 8 | p[2] << 16 | (uint32_t)p[3] << 24;
}

static void put_le32(unsigned char *p, uint32_t v)
{
    p[0] = v, p[1] = v >> 8, p[2] = v >> 16, p[3] = v >> 24;
}

static void drop(int epfd, int fd)
{
    epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL);
    close(fd);
    free(clients[fd]);
    clients[fd] = NULL;
}

/* Read what the client sent, answer every complete frame; 0 to keep it, -1 to drop it. */
static int serve(int fd)
{
    struct client *c = clients[fd];
    static unsigned char acks[4096 * HEADER];
    for (;;) {
        ssize_t n = read(fd, c->buf + c->have, sizeof c->buf - c->have);
        if (n == 0)
            return -1;
        if (n < 0)
            return errno == EAGAIN || errno == EINTR ? 0 : -1;
        c->have += n;
        size_t off = 0, nacks = 0;
        while (c->have - off >= HEADER) {
            const unsigned char *h = c->buf + off;
            uint32_t type = le32(h + 6), seq = le32(h + 12);
            size_t len = h[10] | h[11] << 8;
            if (le32(h) != MAGIC || len > MAX_PAYLOAD)
                return -1;
            if (c->have - off < HEADER + len)
                break;
            if (type == TYPE_MESSAGE)
                frames++;
            else if (type != TYPE_HEARTBEAT)
                return -1;
            if (nacks < 4096) {
                unsigned char *a = acks + nacks++ * HEADER;
                memset(a, 0, HEADER);
                put_le32(a, MAGIC);
                put_le32(a + 6, TYPE_ACK);
                put_le32(a + 12, seq);
            }
            off += HEADER + len;
        }
        memmove(c->buf, c->buf + off, c->have - off);
        c->have -= off;
        if (nacks && write(fd, acks, nacks * HEADER) != (ssize_t)(nacks * HEADER))
            return -1; /* a client that does not read its ACKs is not one of ours */
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: limit_server PORT\n");
        return 2;
    }
    struct sigaction sa = {.sa_handler = on_signal};
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    int one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1])),
                               .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (bind(lfd, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(lfd, 1024) < 0) {
        perror("listen");
        return 1;
    }
    int epfd = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd};
    epoll_ctl(epfd, EPOLL_CTL_ADD, lfd, &ev);
    struct epoll_event ready[256];
    while (!stopping) {
        int n = epoll_wait(epfd, ready, 256, -1);
        for (int i = 0; i < n; i++) {
            int fd = ready[i].data.fd;
            if (fd != lfd) {
                if (serve(fd) < 0)
                    drop(epfd, fd);
                continue;
            }
            int cfd;
            while ((cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                if (cfd >= MAX_FD || !(clients[cfd] = calloc(1, sizeof(struct client)))) {
                    close(cfd);
                    continue;
                }
                setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                ev = (struct epoll_event){.events = EPOLLIN, .data.fd = cfd};
                epoll_ctl(epfd, EPOLL_CTL_ADD, cfd, &ev);
            }
        }
    }
    printf("frames %llu\n", frames);
    return 0;
}
