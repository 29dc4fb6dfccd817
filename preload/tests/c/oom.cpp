/* Out of memory under the drop-in: with the address space capped (RLIMIT_AS), malloc,
 * calloc, realloc, posix_memalign, aligned_alloc and memalign return NULL (posix_memalign:
 * ENOMEM) with errno ENOMEM, a failed realloc leaves its block alone, operator new throws
 * std::bad_alloc and new(nothrow) returns null; nothing crashes. With the cap lifted, every
 * block made before and during the shortage is intact and allocation works again. */
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <malloc.h>
#include <new>
#include <sys/resource.h>

#define CHECK(c)                                                              \
    do {                                                                      \
        if (!(c)) {                                                           \
            fprintf(stderr, "oom: check failed at line %d: %s\n", __LINE__, #c); \
            exit(1);                                                          \
        }                                                                     \
    } while (0)

static size_t vm_size(void) {
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    size_t kb = 0;
    while (f && fgets(line, sizeof line, f))
        if (sscanf(line, "VmSize: %zu kB", &kb) == 1) break;
    if (f) fclose(f);
    return kb * 1024;
}

struct chain { struct chain *next; size_t i; };

/* Where new's results go, so that the compiler cannot elide a new/delete pair. */
static char *volatile sink;

/* Allocates blocks of `size` with `get` until it fails; returns the chain, checks errno. */
static struct chain *fill(size_t size, size_t *n, int *errno_ok) {
    struct chain *head = NULL;
    *n = 0;
    for (;;) {
        errno = 0;
        struct chain *c = (struct chain *)malloc(size);
        if (!c) {
            *errno_ok = errno == ENOMEM;
            return head;
        }
        memset(c, 0x5A, size);
        c->next = head;
        c->i = *n;
        head = c;
        ++*n;
        CHECK(*n < (1u << 26));
    }
}

static void check_free(struct chain *head, size_t n, size_t size) {
    size_t i = n;
    while (head) {
        --i;
        CHECK(head->i == i);
        CHECK(((unsigned char *)head)[size - 1] == 0x5A);
        struct chain *next = head->next;
        free(head);
        head = next;
    }
    CHECK(i == 0);
}

int main(void) {
    char *early = (char *)malloc(5000);
    CHECK(early);
    memset(early, 7, 5000);
    char *re = (char *)malloc(100);
    CHECK(re);
    memset(re, 9, 100);

    struct rlimit old;
    CHECK(getrlimit(RLIMIT_AS, &old) == 0);
    struct rlimit cap = old;
    cap.rlim_cur = vm_size() + (256u << 20);
    CHECK(setrlimit(RLIMIT_AS, &cap) == 0);

    size_t nh, nl, ns;
    int eh = 0, el = 0, es = 0;
    struct chain *huge = fill(64u << 20, &nh, &eh);
    struct chain *large = fill(1u << 20, &nl, &el);
    struct chain *small = fill(64, &ns, &es);
    CHECK(eh && el && es);

    /* Every other entry point fails cleanly too. */
    errno = 0;
    CHECK(calloc(1u << 20, 64) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(realloc(re, 512u << 20) == NULL && errno == ENOMEM);
    CHECK(re[0] == 9 && re[99] == 9);
    void *pa = (void *)1;
    CHECK(posix_memalign(&pa, 1u << 16, 256u << 20) == ENOMEM);
    errno = 0;
    CHECK(aligned_alloc(1u << 20, 256u << 20) == NULL && errno == ENOMEM);
    errno = 0;
    CHECK(memalign(1u << 14, 256u << 20) == NULL && errno == ENOMEM);
    int threw = 0;
    try {
        sink = new char[256u << 20];
        delete[] sink;
    } catch (const std::bad_alloc &) {
        threw = 1;
    }
    CHECK(threw);
    sink = new (std::nothrow) char[256u << 20];
    CHECK(sink == nullptr);
    threw = 0;
    try {
        for (int i = 0; i < 100000; i++) sink = new char[4096];
    } catch (const std::bad_alloc &) {
        threw = 1;
    }
    CHECK(threw);

    CHECK(setrlimit(RLIMIT_AS, &old) == 0);
    check_free(huge, nh, 64u << 20);
    check_free(large, nl, 1u << 20);
    check_free(small, ns, 64);
    for (int i = 0; i < 5000; i++) CHECK(early[i] == 7);
    free(early);
    free(re);
    void *again = malloc(64u << 20);
    CHECK(again);
    memset(again, 1, 64u << 20);
    free(again);
    printf("oom: huge %zu, large %zu, small %zu blocks before NULL\n", nh, nl, ns);
    printf("oom ok\n");
    return 0;
}
