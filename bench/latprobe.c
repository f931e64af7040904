/* Arrival times of the latency benchmark's records (bench/latency.py).
 *
 *   latprobe log LOGFILE KEY OUTFILE   follow LOGFILE (inotify) as the daemon appends to it
 *   latprobe plugin KEY OUTFILE        be a `format = string` plugin: read stdin
 *
 * Each time data arrives, CLOCK_REALTIME is read at once; every complete SYSCALL line with
 * key="KEY" in that data gets that time.  "a0 nanoseconds" goes to OUTFILE for each, a0
 * being the number the load generator gave the call (loadgen stamped), flushed after every
 * read so the benchmark can count them while the run goes on.
 *
 * A plugin of the C auditd starts with its signals blocked: they are unblocked here.  It
 * stops at end of input or on SIGTERM; the log follower on SIGTERM.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <time.h>
#include <unistd.h>

#define BUF (1 << 20)

static volatile sig_atomic_t stopping;
static char marker[128];
static size_t marker_len;
static char data[2 * BUF];
static size_t have;

static void on_signal(int signum)
{
    (void)signum;
    stopping = 1;
}

static unsigned long long now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (unsigned long long)ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

/* Take the complete lines of `data`, stamp the benchmark's ones with `when`. */
static void lines(FILE *out, unsigned long long when)
{
    char *start = data, *end = data + have, *nl;
    while ((nl = memchr(start, '\n', end - start)) != NULL) {
        size_t len = nl - start;
        if (len > 13 && memmem(start, len, "type=SYSCALL ", 13) &&
            memmem(start, len, marker, marker_len)) {
            char *a0 = memmem(start, len, " a0=", 4);
            if (a0)
                fprintf(out, "%llu %llu\n", strtoull(a0 + 4, NULL, 16), when);
        }
        start = nl + 1;
    }
    have = end - start;
    memmove(data, start, have);
    fflush(out);
}

static FILE *open_out(const char *path)
{
    FILE *out = fopen(path, "w");
    if (!out)
        perror(path);
    return out;
}

/* OUTFILE appears once the log is watched: the benchmark waits for it before the load. */
static int follow_log(const char *path, const char *outfile)
{
    int ino = inotify_init1(IN_CLOEXEC);
    if (ino < 0 || inotify_add_watch(ino, path, IN_MODIFY) < 0) {
        perror(path);
        return 1;
    }
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        perror(path);
        return 1;
    }
    lseek(fd, 0, SEEK_END); /* what the log held before the run is not ours */
    FILE *out = open_out(outfile);
    if (!out)
        return 1;
    char events[4096];
    while (!stopping) {
        if (read(ino, events, sizeof events) < 0 && errno == EINTR)
            continue;
        unsigned long long when = now_ns();
        ssize_t n;
        while ((n = read(fd, data + have, BUF)) > 0) {
            have += n;
            if (have >= BUF)
                lines(out, when);
        }
        lines(out, when);
    }
    return fclose(out) != 0;
}

static int plugin(const char *outfile)
{
    FILE *out = open_out(outfile);
    if (!out)
        return 1;
    while (!stopping) {
        ssize_t n = read(0, data + have, BUF);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        unsigned long long when = now_ns();
        have += n;
        lines(out, when);
    }
    return fclose(out) != 0;
}

int main(int argc, char **argv)
{
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: reads return */
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGHUP, SIG_IGN);
    int is_log = argc == 5 && strcmp(argv[1], "log") == 0;
    int is_plugin = argc == 4 && strcmp(argv[1], "plugin") == 0;
    if (!is_log && !is_plugin) {
        fprintf(stderr, "usage: latprobe log LOGFILE KEY OUTFILE | latprobe plugin KEY OUTFILE\n");
        return 2;
    }
    snprintf(marker, sizeof marker, "key=\"%s\"", argv[is_log ? 3 : 2]);
    marker_len = strlen(marker);
    int rc = is_log ? follow_log(argv[2], argv[4]) : plugin(argv[3]);
    return rc;
}
