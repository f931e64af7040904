/* Load generator for the auditpy benchmark.
 *
 *   loadgen getppid N    N getppid() calls: one audit event (SYSCALL, PROCTITLE, EOE) each
 *                        under a rule that matches this program's exe
 *   loadgen exec N PATH  N fork + execv(PATH): multi-record events under an execve rule
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
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
    fprintf(stderr, "usage: loadgen getppid N | loadgen exec N PATH\n");
    return 2;
}
