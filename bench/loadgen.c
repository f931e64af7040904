/* Load generator for the auditpy benchmark.
 *
 *   loadgen getppid N    N getppid() calls: one audit event (SYSCALL, PROCTITLE, EOE) each
 *                        under a rule that matches this program's exe
 *   loadgen exec N PATH  N fork + execv(PATH): multi-record events under an execve rule
 *   loadgen paced RATE SECONDS
 *                        RATE*SECONDS getppid() calls, RATE a second on average: a load that
 *                        falls behind (held by the kernel) catches up at full speed after
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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
    fprintf(stderr, "usage: loadgen getppid N | loadgen exec N PATH | loadgen paced RATE SECONDS\n");
    return 2;
}
