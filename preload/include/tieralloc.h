/* tieralloc.h: the hot/cold placement hints of libtieralloc_preload.so, for C and C++.
 *
 * Build the library with `cargo build -p tieralloc-preload --release` and run a program with
 * LD_PRELOAD=target/release/libtieralloc_preload.so, or link it against the library.
 *
 * A hint is a byte: 0..127 is cold, 128..255 is hot (tcmalloc's scale: 0 the coldest, 255 the
 * hottest).
 *   cold: on the slowest memory tier (far memory, such as a CXL expander), its node nearest
 *         to the calling thread, when the machine has more than one tier; on the calling
 *         thread's node otherwise.
 *   hot:  on the fastest tier's node nearest to the calling thread (the thread's own node when
 *         it runs on a node of the fastest tier, as on a machine with one tier).
 * A hint never makes an allocation fail: a block that its node cannot take is served as if
 * there were no hint. Every block is released with plain free() / delete / realloc().
 * Far memory is bound with TIERALLOC_FAR_POLICY (bind, the default, or preferred: see
 * docs/tiers.md, "Deciding placement in code").
 */
#ifndef TIERALLOC_H
#define TIERALLOC_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* malloc(size) placed by `hint`; NULL with errno = ENOMEM when memory runs out. */
void *tieralloc_malloc_hinted(size_t size, uint8_t hint);

#ifdef __cplusplus
} /* extern "C" */
#endif

#ifdef __cplusplus
#include <new>

/* tcmalloc's hint type and operators (same names and signatures, so code written for
 * tcmalloc's new_extension.h / malloc_extension.h runs unchanged). A program that also
 * includes tcmalloc's headers defines TIERALLOC_NO_HOT_COLD_DECLS first. */
#ifndef TIERALLOC_NO_HOT_COLD_DECLS
enum class __hot_cold_t : uint8_t;

void *operator new(size_t size, __hot_cold_t hint);
void *operator new(size_t size, const std::nothrow_t &, __hot_cold_t hint) noexcept;
void *operator new[](size_t size, __hot_cold_t hint);
void *operator new[](size_t size, const std::nothrow_t &, __hot_cold_t hint) noexcept;
#if defined(__cpp_aligned_new)
void *operator new(size_t size, std::align_val_t align, __hot_cold_t hint);
void *operator new(size_t size, std::align_val_t align, const std::nothrow_t &,
                   __hot_cold_t hint) noexcept;
void *operator new[](size_t size, std::align_val_t align, __hot_cold_t hint);
void *operator new[](size_t size, std::align_val_t align, const std::nothrow_t &,
                     __hot_cold_t hint) noexcept;
#endif

/* A block and its usable size (at least the size asked for): P0901's size-returning new. */
extern "C" {
struct __sized_ptr_t {
  void *p;
  size_t n;
};
__sized_ptr_t __size_returning_new_hot_cold(size_t size, __hot_cold_t hint);
#if defined(__cpp_aligned_new)
__sized_ptr_t __size_returning_new_aligned_hot_cold(size_t size, std::align_val_t align,
                                                    __hot_cold_t hint);
#endif
}
#endif /* TIERALLOC_NO_HOT_COLD_DECLS */
#endif /* __cplusplus */

#endif /* TIERALLOC_H */
