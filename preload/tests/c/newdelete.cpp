// C++'s operator new and delete under LD_PRELOAD: they are the library's own (not
// libstdc++'s wrappers), blocks hold their contents and alignment, every form of delete takes
// them back, and running out of memory still reaches the new-handler and std::bad_alloc.
#include <dlfcn.h>
#include <malloc.h>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <new>
#include <thread>
#include <vector>

static int failures;
#define CHECK(c)                                                                  \
    do {                                                                          \
        if (!(c)) {                                                               \
            std::fprintf(stderr, "newdelete.cpp:%d: check failed: %s\n", __LINE__, #c); \
            failures++;                                                           \
        }                                                                         \
    } while (0)

// Which loaded object defines `name` for this process.
static const char *definer(const char *name) {
    void *f = dlsym(RTLD_DEFAULT, name);
    Dl_info info;
    if (!f || !dladdr(f, &info) || !info.dli_fname) return "";
    return info.dli_fname;
}

struct alignas(64) Line { unsigned char b[64]; };
struct alignas(4096) Page4k { unsigned char b[100]; };
struct Sized { long a, b, c; };

static int handler_calls;
static void handler() {
    handler_calls++;
    std::set_new_handler(nullptr);  // the next failure throws
}

int main() {
    const char *names[] = {"_Znwm", "_Znam", "_ZdlPv", "_ZdaPv", "_ZdlPvm",
                           "_ZnwmSt11align_val_t", "_ZdlPvSt11align_val_t",
                           "_ZnwmRKSt9nothrow_t"};
    for (const char *n : names) {
        const char *lib = definer(n);
        if (!std::strstr(lib, "tieralloc")) {
            std::fprintf(stderr, "%s comes from '%s'\n", n, lib);
            failures++;
        }
    }

    // Every size: 16-aligned, ours (malloc_usable_size answers), contents kept.
    std::vector<unsigned char *> keep;
    for (size_t n = 0; n < 5000; n += 7) {
        unsigned char *p = new unsigned char[n];
        CHECK(((uintptr_t)p & 15) == 0);
        CHECK(malloc_usable_size(p) >= (n ? n : 1));
        std::memset(p, (int)(n & 0xff), n);
        keep.push_back(p);
    }
    for (size_t i = 0; i < keep.size(); i++) {
        size_t n = i * 7;
        for (size_t j = 0; j < n; j++)
            if (keep[i][j] != (unsigned char)(n & 0xff)) { CHECK(!"contents"); break; }
        delete[] keep[i];
    }
    // new of 0 bytes: unique.
    char *z1 = new char[0], *z2 = new char[0];
    CHECK(z1 && z2 && z1 != z2);
    delete[] z1;
    delete[] z2;

    // Sized delete, scalar new.
    for (int i = 0; i < 1000; i++) {
        Sized *s = new Sized{i, 2L * i, 3L * i};
        CHECK(s->c == 3L * i);
        delete s;
    }
    // Over-aligned types go through the align_val_t forms.
    for (int i = 0; i < 100; i++) {
        Line *l = new Line;
        Page4k *p = new Page4k;
        Line *la = new Line[3];
        CHECK(((uintptr_t)l & 63) == 0 && ((uintptr_t)la & 63) == 0);
        CHECK(((uintptr_t)p & 4095) == 0);
        l->b[63] = 1;
        p->b[99] = 2;
        delete l;
        delete p;
        delete[] la;
    }
    // nothrow forms, and nothrow delete.
    int *nt = new (std::nothrow) int[100];
    CHECK(nt != nullptr);
    operator delete[](nt, std::nothrow);
    CHECK(new (std::nothrow) char[(size_t)1 << 62] == nullptr);
    CHECK(operator new((size_t)1 << 62, std::align_val_t(64), std::nothrow) == nullptr);

    // Out of memory: bad_alloc, after the new-handler had its turn.
    bool thrown = false;
    try {
        volatile char *big = new char[(size_t)1 << 62];
        big[0] = 1;
    } catch (const std::bad_alloc &) {
        thrown = true;
    }
    CHECK(thrown);
    std::set_new_handler(handler);
    thrown = false;
    try {
        void *big = operator new((size_t)1 << 62);
        operator delete(big);
    } catch (const std::bad_alloc &) {
        thrown = true;
    }
    CHECK(thrown && handler_calls == 1);
    // An alignment above what the library serves (2 MiB) also ends in bad_alloc.
    thrown = false;
    try {
        void *p = operator new(100, std::align_val_t((size_t)4 << 20));
        operator delete(p, std::align_val_t((size_t)4 << 20));
    } catch (const std::bad_alloc &) {
        thrown = true;
    }
    CHECK(thrown);

    // Objects made on one thread, deleted on another.
    std::vector<std::vector<int> *> made;
    std::thread t([&] {
        for (int i = 0; i < 20000; i++) made.push_back(new std::vector<int>(i % 50, i));
    });
    t.join();
    std::thread u([&] {
        for (size_t i = 0; i < made.size(); i++) {
            CHECK(made[i]->size() == i % 50);
            delete made[i];
        }
    });
    u.join();

    if (failures) return 1;
    std::puts("newdelete ok");
    return 0;
}
