/* A thread spawner for the creator-stack tests, built with -O2 (no frame pointers) against
 * Debian's glibc: its threads are created by one uniquely named function, which the report
 * must name as their creating site.
 *
 *   spawner THREADS PARK_MS   create THREADS threads that name themselves "tspawn-worker" and
 *                             park PARK_MS in a futex wait, then join them
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static long park_ms;

static void *park(void *arg) {
    (void)arg;
    pthread_setname_np(pthread_self(), "tspawn-worker");
    pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c = PTHREAD_COND_INITIALIZER;
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += park_ms / 1000;
    until.tv_nsec += (park_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec += 1;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&m);
    while (pthread_cond_timedwait(&c, &m, &until) == 0) {
    }
    pthread_mutex_unlock(&m);
    return NULL;
}

__attribute__((noinline)) int tracer_test_spawn_site_q7(pthread_t *t, int n) {
    for (int i = 0; i < n; i++) {
        if (pthread_create(&t[i], NULL, park, NULL) != 0) {
            return i;
        }
    }
    return n;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: spawner THREADS PARK_MS\n");
        return 2;
    }
    int n = atoi(argv[1]);
    park_ms = atol(argv[2]);
    pthread_t *t = calloc(n > 0 ? n : 1, sizeof *t);
    int made = tracer_test_spawn_site_q7(t, n);
    for (int i = 0; i < made; i++) {
        pthread_join(t[i], NULL);
    }
    return made == n ? 0 : 1;
}
