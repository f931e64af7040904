/* Load generator for the auditpy benchmark.
 *
 *   loadgen getppid N    N getppid() calls: one audit event (SYSCALL, PROCTITLE, EOE) each
 *                        under a rule that matches this program's exe
 *   loadgen exec N PATH  N fork + execv(PATH): multi-record events under an execve rule
 *   loadgen paced RATE SECONDS
 *                        RATE*SECONDS getppid() calls, RATE a second on average: a load that
 *                        falls behind (held by the kernel) catches up at full speed after
 *   loadgen stamped N RATE STAMPFILE
 *                        N getppid() calls at RATE per second, the i-th with i as its first
 *                        argument (the SYSCALL record's a0 names the call), each preceded by
 *                        reading CLOCK_REALTIME; "i nanoseconds" per call into STAMPFILE
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Calls spaced 1/rate apart on absolute deadlines (no drift), so the daemon sees a steady
 * trickle; the time is read right before the call, and the kernel makes the record as the
 * call returns. */
static int stamped(long n, double rate, const char *path)
{
    unsigned long long *stamps = calloc(n > 0 ? n : 1, sizeof *stamps);
    if (!stamps)
        return 1;
    prctl(PR_SET_TIMERSLACK, 1UL, 0, 0, 0);
    struct timespec next, now;
    clock_gettime(CLOCK_MONOTONIC, &next);
    long step = (long)(1e9 / rate);
    for (long i = 0; i < n; i++) {
        next.tv_nsec += step;
        while (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
        clock_gettime(CLOCK_REALTIME, &now);
        stamps[i] = (unsigned long long)now.tv_sec * 1000000000ULL + now.tv_nsec;
        syscall(SYS_getppid, i, 0, 0, 0);
    }
    FILE *out = fopen(path, "w");
    if (!out)
        return 1;
    for (long i = 0; i < n; i++)
        fprintf(out, "%ld %llu\n", i, stamps[i]);
    return fclose(out) != 0;
}

int main(int argc, char **argv)
{
    if (argc >= 3 && strcmp(argv[1], "getppid") == 0) {
        long n = atol(argv[2]);
        for (long i = 0; i < n; i++)
            getppid();
        return 0;
    }
    if (argc >= 4 && strcmp(argv[1], "exec") == 0) {
        long n = atol(argv[2]);
        for (long i = 0; i < n; i++) {
            pid_t pid = fork();
            if (pid < 0)
                return 1;
            if (pid == 0) {
                char *args[] = {argv[3], "bench-arg", NULL};
                execv(argv[3], args);
                _exit(127);
            }
            waitpid(pid, NULL, 0);
        }
        return 0;
    }
    if (argc >= 5 && strcmp(argv[1], "stamped") == 0)
        return stamped(atol(argv[2]), atof(argv[3]), argv[4]);
    if (argc >= 4 && strcmp(argv[1], "paced") == 0) {
        double rate = atof(argv[2]);
        long n = (long)(rate * atof(argv[3]));
        struct timespec start, now;
        clock_gettime(CLOCK_MONOTONIC, &start);
        long done = 0;
        while (done < n) {
            clock_gettime(CLOCK_MONOTONIC, &now);
            double elapsed = (now.tv_sec - start.tv_sec) + (now.tv_nsec - start.tv_nsec) / 1e9;
            long due = (long)(elapsed * rate);
            if (due > n)
                due = n;
            if (done >= due) {
                struct timespec pause = {0, 200000};
                nanosleep(&pause, NULL);
                continue;
            }
            for (; done < due; done++)
                getppid();
        }
        return 0;
    }
    fprintf(stderr, "usage: loadgen getppid N | loadgen exec N PATH | "
                    "loadgen paced RATE SECONDS | loadgen stamped N RATE STAMPFILE\n");
    return 2;
}
