/* Thread workloads for the detector tests, built with -O2 against Debian's glibc.
 *
 *   leaker leak RATE SECS     a thread per "message", RATE messages a second, for SECS: each
 *                             thread parks in a futex wait and never ends (the shoryuken leak)
 *   leaker pool N RATE SECS   a healthy pool: RATE messages a second for SECS, each handled by
 *                             a thread that works 20 ms and ends, at most N at once
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static pthread_mutex_t m = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t never = PTHREAD_COND_INITIALIZER;

static void *extend_visibility(void *arg) {
    (void)arg;
    pthread_mutex_lock(&m);
    for (;;) {
        pthread_cond_wait(&never, &m);
    }
    return NULL;
}

static void *handle(void *arg) {
    (void)arg;
    usleep(20000);
    return NULL;
}

static volatile int spawned;

/* Not a tail call (the count after it), so its frame is on the creator's stack. */
__attribute__((noinline)) int tracer_test_message_handler_spawn(void *(*fn)(void *),
                                                                pthread_t *t) {
    int rc = pthread_create(t, NULL, fn, NULL);
    spawned = spawned + 1;
    return rc;
}

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "leak") == 0) {
        int rate = atoi(argv[2]), secs = atoi(argv[3]);
        for (int i = 0; i < rate * secs; i++) {
            pthread_t t;
            if (tracer_test_message_handler_spawn(extend_visibility, &t) != 0) {
                return 1;
            }
            usleep(1000000 / rate);
        }
        return 0;
    }
    if (argc >= 5 && strcmp(argv[1], "pool") == 0) {
        int n = atoi(argv[2]), rate = atoi(argv[3]), secs = atoi(argv[4]);
        pthread_t *t = calloc(n, sizeof *t);
        for (int i = 0; i < rate * secs; i++) {
            int slot = i % n;
            if (i >= n) {
                pthread_join(t[slot], NULL);
            }
            if (tracer_test_message_handler_spawn(handle, &t[slot]) != 0) {
                return 1;
            }
            usleep(1000000 / rate);
        }
        for (int i = 0; i < n && i < rate * secs; i++) {
            pthread_join(t[i], NULL);
        }
        return 0;
    }
    fprintf(stderr, "usage: leaker leak RATE SECS | pool N RATE SECS\n");
    return 2;
}
