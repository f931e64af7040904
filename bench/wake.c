/* The C reference of bench/loops.py's paused wakeups: epoll_wait on an empty epoll with a
 * timeout, WAKEUPS times; prints the thread's CPU nanoseconds per wakeup.
 *
 *     wake PAUSE_MS WAKEUPS
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <time.h>

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: wake PAUSE_MS WAKEUPS\n");
        return 2;
    }
    int pause = atoi(argv[1]), wakeups = atoi(argv[2]);
    int ep = epoll_create1(0);
    if (ep < 0 || wakeups <= 0) {
        perror("wake");
        return 1;
    }
    struct epoll_event event;
    struct timespec start, end;
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &start);
    for (int i = 0; i < wakeups; i++)
        epoll_wait(ep, &event, 1, pause);
    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &end);
    double spent = (end.tv_sec - start.tv_sec) * 1e9 + (end.tv_nsec - start.tv_nsec);
    printf("%.0f\n", spent / wakeups);
    return 0;
}
