/* A read-only FUSE server in C for byte plans (blockforensics/formats/byteplan.py).
 *
 * The mount is a flat directory of files, each a table of segments in file order:
 * zeros, bytes of a metadata blob, or a run of an image file (fd, byte offset).  libfuse
 * 3 mounts and unmounts (fusermount3 for others than root); the kernel's protocol
 * (<linux/fuse.h>) is spoken here, by a few worker threads reading /dev/fuse, with no
 * Python: libfuse 3.14 cannot negotiate FUSE_DIRECT_IO_ALLOW_MMAP (protocol 7.39).
 *
 * Where the kernel offers that flag (Linux >= 6.6) the files are opened with
 * FOPEN_DIRECT_IO: a reader's read() goes to the server as requests of up to 1 MiB (4 MiB
 * where fs.fuse.max_pages_limit allows; files say so as their st_blksize), and
 * the reply lands in the reader's buffer, with no copy in the page cache; mappings
 * (MAP_SHARED) still work, through the page cache.  Elsewhere (or direct=False) the
 * kernel caches the files (FOPEN_KEEP_CACHE: they never change while mounted).
 *
 * A stored block is found by its disk position: each segment of an image file says which
 * disk byte it starts at, and the image's list of the blocks it supplies (ascending
 * positions, as the chain's index holds them) is searched for those of the read.  The
 * plans may be mapped from a file (their spill): the pages of those mappings (`mapped`)
 * are dropped from the server's every DROP_EVERY reads (and every CHECKED_SEGMENTS segments
 * while the plans are checked before serving), so its RSS does not grow with the number
 * of stored blocks or segments either.
 *
 * A read of 64 KiB or more: every stored block it touches is checked against its stored
 * digest (CRC-32 or SHA-256/128) in a read-only mapping of the image file, and the reply
 * goes to the kernel in one writev from the mapping (no copy here; the mapped pages are
 * dropped from the server's after it, out to huge-page bounds: its RSS stays that of the
 * requests in flight).  A smaller read (or one the mappings cannot
 * serve) is read (pread) into the worker's buffer and checked there.  A block is checked
 * once (a bitmap per image file remembers it), so re-reads do not hash again.  A block
 * that fails is EIO for the whole request, with one line on stderr naming the image and
 * the block.
 *
 * Measured against the alternatives (benchmarks/README.md, sessions 13 and 14).
 *
 *   serve(mountpoint, files, sources, *, mapped=(), foreground=True, on_open=None,
 *         direct=True) -> int
 *     files     list of (name, size, starts, kinds, offsets, disks, blob): starts,
 *               offsets and disks int64 (file, source and disk bytes: a source segment's
 *               first byte is that disk byte), kinds int32 (>= 0: a source, -1 zeros, -2
 *               the blob), segments tiling [0, size) from starts[0] == 0
 *     sources   list of (fd, name, block_size, positions, digests, crc): the stored
 *               blocks to check in that file, ascending disk positions (int64), 16-byte
 *               digests, crc (uint8, 1: CRC-32 form, else SHA-256/128)
 *     mapped    read-only shared file mappings (the plans' arrays lie in them) whose
 *               pages may be dropped
 *     on_open   called (with the GIL) at the first open of a file
 *     direct    serve the files for direct I/O where the kernel maps such files
 *     Returns 0 once unmounted (fusermount3 -u, or SIGINT/SIGTERM/SIGHUP, which unmount);
 *     else fuse_main's statuses: 1 bad options, 3 setup failed (threads, memory),
 *     4 mount failed, 5 daemonising failed, 6 signal handlers failed, 7 reading
 *     /dev/fuse failed.
 */
#define PY_SSIZE_T_CLEAN
#define FUSE_USE_VERSION 314
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <linux/fuse.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#include "_crc32.h"

#define DIGEST_SIZE 16
#define ZEROS (-1)
#define METADATA (-2)
/* bytes of the largest READ request: 1 MiB (256 pages, the kernel's default
 * fs.fuse.max_pages_limit), up to 4 MiB where an operator raised that limit */
#define MAX_READ (4 << 20)
#define TIMEOUT 86400.0 /* seconds the kernel may keep names and attributes: nothing changes */

struct source {
    int fd;
    const char *name;
    int64_t block_size;
    Py_ssize_t n;               /* stored blocks to check */
    const int64_t *positions;   /* ascending */
    const unsigned char *digests; /* n * DIGEST_SIZE */
    const unsigned char *crc;
    _Atomic uint64_t *checked;  /* a bit per block: its digest matched */
    const char *map;            /* a read-only shared mapping of the file (NULL: none) */
    int64_t map_size;           /* bytes mapped: the file's size when serving began */
};

struct file {
    const char *name;
    int64_t size;
    Py_ssize_t n;               /* segments */
    const int64_t *starts;
    const int32_t *kinds;
    const int64_t *offsets;
    const int64_t *disks;
    const char *blob;
    Py_ssize_t blob_len;
};

struct server {
    struct file *files;
    Py_ssize_t n_files;
    struct source *sources;
    Py_ssize_t n_sources;
    Py_buffer *mapped;          /* mappings whose pages are dropped every DROP_EVERY reads */
    Py_ssize_t n_mapped;
    atomic_uint_fast64_t reads;
    atomic_uint_fast64_t failed;  /* reads that failed their check (answered EIO) */
    PyObject *on_open;
    atomic_int opened;
    int fd;                     /* /dev/fuse of the mount (the workers' own descriptor) */
    atomic_int ending;          /* set once serving ends: a worker left behind stops */
    int stuck;                  /* workers still in a request when serving ended */
    int wake_fd;                /* write end of the pipe that wakes run()'s thread */
    int want_direct;            /* serve the files with FOPEN_DIRECT_IO where mappable */
    atomic_int direct;          /* ... and the kernel agreed (INIT) */
    atomic_int status;          /* run()'s status once the workers end: 0, 3 or 7 */
    uint16_t max_pages;         /* pages of a READ request: what the kernel allows */
    struct timespec mtime;
};

static EVP_MD *sha256_md;
static pthread_key_t buffers_key;

/* A worker thread's reply buffer and its buffer for whole blocks. */
struct buffers {
    char *request;
    size_t request_cap;
    char *reply;
    size_t reply_cap;
    char *block;
    size_t block_cap;
    EVP_MD_CTX *md;  /* SHA-256's context: a fault mid-hash jumps out of it, nothing leaks */
};

static void free_buffers(void *p)
{
    struct buffers *b = p;
    free(b->request);
    free(b->reply);
    free(b->block);
    EVP_MD_CTX_free(b->md);
    free(b);
}

/* Grow *buf to hold n bytes; 0 if out of memory. */
static int reserve(char **buf, size_t *cap, size_t n)
{
    if (*cap >= n)
        return 1;
    char *grown = realloc(*buf, n);
    if (grown == NULL)
        return 0;
    *buf = grown;
    *cap = n;
    return 1;
}

static struct buffers *thread_buffers(void)
{
    struct buffers *b = pthread_getspecific(buffers_key);
    if (b == NULL && (b = calloc(1, sizeof *b)) != NULL)
        pthread_setspecific(buffers_key, b);
    return b;
}

/* Read exactly n bytes at offset of fd; 0 on a short read or an error. */
static int pread_all(int fd, char *dst, size_t n, int64_t offset)
{
    while (n) {
        ssize_t got = pread(fd, dst, n, (off_t)offset);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return 0;
        dst += got;
        n -= (size_t)got;
        offset += got;
    }
    return 1;
}

static int digest_matches(const struct source *s, Py_ssize_t i, const unsigned char *p,
                          struct buffers *b)
{
    unsigned char got[EVP_MAX_MD_SIZE] = {0};
    if (s->crc[i]) {
        uint32_t crc = crc32_span(p, (size_t)s->block_size);
        for (int k = 0; k < 4; k++)
            got[k] = (unsigned char)(crc >> (8 * k));
    } else if ((b->md == NULL && (b->md = EVP_MD_CTX_new()) == NULL)
               || !EVP_DigestInit_ex(b->md, sha256_md, NULL)
               || !EVP_DigestUpdate(b->md, p, (size_t)s->block_size)
               || !EVP_DigestFinal_ex(b->md, got, NULL)) {
        return 0;
    }
    return memcmp(got, s->digests + i * DIGEST_SIZE, DIGEST_SIZE) == 0;
}

static int is_checked(const struct source *s, Py_ssize_t i)
{
    return (atomic_load_explicit(&s->checked[i / 64], memory_order_relaxed) >> (i % 64)) & 1;
}

/* The first stored block of s at disk position `position` or after. */
static Py_ssize_t first_block(const struct source *s, int64_t position)
{
    Py_ssize_t lo = 0, hi = s->n;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (s->positions[mid] < position)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Check the stored blocks of s that bytes offset .. offset+n (held at dst: a buffer, or
 * s's mapping; disk bytes disk .. disk+n) touch; a block only partly in them is checked whole in s's mapping when
 * dst is that mapping (else read whole into the thread's block buffer: a buffer's reader
 * leaves the mapping alone), and its part copied to a buffer dst (so what is replied is
 * what was checked).  Returns -1 when all match, else the index of the first that does not
 * (or cannot be read); *unreadable set for that. */
static Py_ssize_t check_blocks(struct source *s, int64_t offset, int64_t disk, size_t n,
                               char *dst, struct buffers *b, int *unreadable)
{
    int in_map = s->map != NULL && dst == s->map + offset;
    int64_t bs = s->block_size, end = offset + (int64_t)n;
    int64_t last = (disk + (int64_t)n + bs - 1) / bs;  /* past the last block touched */
    *unreadable = 0;
    for (Py_ssize_t i = first_block(s, disk / bs); i < s->n && s->positions[i] < last; i++) {
        if (is_checked(s, i))
            continue;
        int64_t at = offset + s->positions[i] * bs - disk;  /* the block's first byte */
        int inside = at >= offset && at + bs <= end;
        const unsigned char *p;
        if (inside) {
            p = (const unsigned char *)dst + (at - offset);
        } else if (in_map && at >= 0 && at + bs <= s->map_size) {
            p = (const unsigned char *)s->map + at;
        } else {
            if (!reserve(&b->block, &b->block_cap, (size_t)bs)
                || !pread_all(s->fd, b->block, (size_t)bs, at)) {
                *unreadable = 1;
                return i;
            }
            p = (const unsigned char *)b->block;
        }
        if (!digest_matches(s, i, p, b))
            return i;
        if (!inside && !in_map) {
            int64_t from = at > offset ? at : offset, to = at + bs < end ? at + bs : end;
            memcpy(dst + (from - offset), p + (from - at), (size_t)(to - from));
        }
        atomic_fetch_or_explicit(&s->checked[i / 64], (uint64_t)1 << (i % 64),
                                 memory_order_relaxed);
    }
    return -1;
}

/* The segment of f holding byte `offset`. */
static Py_ssize_t segment_at(const struct file *f, int64_t offset)
{
    Py_ssize_t lo = 0, hi = f->n;  /* the last start <= offset */
    while (hi - lo > 1) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (f->starts[mid] <= offset)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

static int64_t segment_end(const struct file *f, Py_ssize_t k)
{
    return k + 1 < f->n ? f->starts[k + 1] : f->size;
}

/* ------------------------------------------------------------ the FUSE protocol */

/* Later than bookworm's <linux/fuse.h> (protocol 7.38): from the kernel's
 * include/uapi/linux/fuse.h, 7.39 (Linux 6.6), a flags2 bit of INIT: mappings
 * (MAP_SHARED) of files opened with FOPEN_DIRECT_IO, through the page cache. */
#ifndef FUSE_DIRECT_IO_ALLOW_MMAP
#define FUSE_DIRECT_IO_ALLOW_MMAP (1ULL << 36)
#endif

#define MAX_WRITE (32 << 10)  /* bytes of a WRITE the kernel may send (none: read-only) */
/* a request buffer: the kernel wants >= in header + write_in + max_write, >= 8192 */
#define REQUEST_SIZE (MAX_WRITE + 4096)
#define MAX_PAGES (MAX_READ / 4096)
#define HUGE_PAGE (2 << 20)  /* bytes of a PMD mapping (x86-64, arm64 with 4 KiB pages) */
#define PAGES_LIMIT "/proc/sys/fs/fuse/max_pages_limit"  /* Linux >= 6.5; else 256 */
/* INIT flags asked for, when offered: parallel reads (read-ahead, direct I/O) and lookups,
 * 1 MiB requests, flags2 */
#define WANTED ((uint64_t)FUSE_ASYNC_READ | FUSE_ASYNC_DIO | FUSE_PARALLEL_DIROPS \
                | FUSE_MAX_PAGES | FUSE_INIT_EXT)
#define WORKERS 4  /* threads reading requests (read-ahead sends several at once) */
/* seconds the workers have to end their requests once serving ends; a worker still in one
 * then (a read of a hung image file) is left behind, and the mount unmounted all the same */
#define ENDING_TIMEOUT 2
#define MAX_PIECES 256  /* pieces of a reply sent from the mappings (more: copied) */
/* bytes of the smallest read replied from the mappings: below, mapping and dropping the
 * pages cost more than the copy (4 KiB reads, direct: 15 us a request by pread, 20 us
 * mapped; from 64 KiB on, the same or faster) */
#define MAPPED_MIN (64 << 10)
/* READ requests between two drops of the plans' mapped pages: at most some 10 pages each
 * (the segments' and the blocks' searches), so a few MiB of the plans stay mapped */
#define DROP_EVERY 256
/* segments checked when serving begins between two such drops (28 bytes each: 7 MiB) */
#define CHECKED_SEGMENTS (1 << 18)
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22  /* Linux 5.14, <linux/mman.h> */
#endif

static char zeros[MAX_READ];  /* never written */

/* Where a worker touching an image's mapping goes back to when the touch faults (SIGBUS:
 * the image file was cut shorter, or its pages cannot be read, since it was mapped);
 * NULL outside such touches.  Initial-exec: read in the handler without allocating. */
static __thread sigjmp_buf *volatile fault_jump __attribute__((tls_model("initial-exec")));

/* The signals caught while serving: those that unmount, then SIGBUS.  The first serve()
 * call running sets the handlers, the last restores the actions before. */
static const int caught[] = {SIGINT, SIGTERM, SIGHUP, SIGBUS};
#define N_CAUGHT (sizeof caught / sizeof *caught)
#define MAX_SERVING 64  /* serve() calls running at once in a process */
static struct sigaction before[N_CAUGHT];
static atomic_int wake_fds[MAX_SERVING];  /* each running serve()'s wake-up pipe: write
                                           * end + 1 (0: a free slot) */
static pthread_mutex_t signals_lock = PTHREAD_MUTEX_INITIALIZER;
static int n_serving;

/* SIGBUS: back to the guarded touch's caller, which falls back to pread; anywhere else,
 * the action before serving (the fault repeats when this returns, or is raised again). */
static void fault(int sig, siginfo_t *info, void *context)
{
    (void)context;
    if (fault_jump != NULL)
        siglongjmp(*fault_jump, 1);
    sigaction(sig, &before[N_CAUGHT - 1], NULL);
    if (info->si_code <= 0)  /* sent, not a fault */
        raise(sig);
}

/* Wake a serve() call's thread (write end `fd` of its pipe), which unmounts. */
static void wake(int fd, int sig)
{
    int saved = errno;
    char byte = (char)sig;
    ssize_t written = write(fd, &byte, 1);  /* a full pipe is awake already */
    (void)written;
    errno = saved;
}

/* SIGINT, SIGTERM, SIGHUP: every serve() call running unmounts. */
static void wake_all(int sig)
{
    for (int i = 0; i < MAX_SERVING; i++) {
        int fd = atomic_load(&wake_fds[i]);
        if (fd)
            wake(fd - 1, sig);
    }
}

/* Register the write end `fd` of a serve() call's wake-up pipe, setting the handlers if
 * it is the first running; its slot, or -1 (too many, or sigaction failed). */
static int hold_signals(int fd)
{
    struct sigaction act = {.sa_handler = wake_all, .sa_flags = SA_RESTART};
    /* SA_NODEFER: SIGBUS stays unblocked after a jump out of the handler */
    struct sigaction bus = {.sa_sigaction = fault, .sa_flags = SA_SIGINFO | SA_NODEFER};
    sigemptyset(&act.sa_mask);
    sigemptyset(&bus.sa_mask);
    pthread_mutex_lock(&signals_lock);
    int slot = 0;
    while (slot < MAX_SERVING && atomic_load(&wake_fds[slot]))
        slot++;
    if (slot == MAX_SERVING)
        slot = -1;
    if (slot >= 0 && n_serving == 0) {
        size_t n = 0;
        while (n < N_CAUGHT
               && sigaction(caught[n], caught[n] == SIGBUS ? &bus : &act, &before[n]) == 0)
            n++;
        if (n < N_CAUGHT) {
            while (n--)
                sigaction(caught[n], &before[n], NULL);
            slot = -1;
        }
    }
    if (slot >= 0) {
        atomic_store(&wake_fds[slot], fd + 1);
        n_serving++;
    }
    pthread_mutex_unlock(&signals_lock);
    return slot;
}

/* Free `slot`; the last serve() call running restores the actions before. */
static void release_signals(int slot)
{
    pthread_mutex_lock(&signals_lock);
    atomic_store(&wake_fds[slot], 0);
    if (--n_serving == 0) {
        for (size_t n = 0; n < N_CAUGHT; n++)
            sigaction(caught[n], &before[n], NULL);
    }
    pthread_mutex_unlock(&signals_lock);
}

/* Send the reply to request `unique`: an error (> 0), or size bytes of data. */
static void reply(const struct server *srv, uint64_t unique, int error, const void *data,
                  size_t size)
{
    if (error)
        size = 0;
    struct fuse_out_header out = {.len = (uint32_t)(sizeof out + size), .error = -error,
                                  .unique = unique};
    struct iovec iov[2] = {{&out, sizeof out}, {(void *)data, size}};
    /* ENOENT: the request was interrupted; nothing else is the server's to mend */
    while (writev(srv->fd, iov, size ? 2 : 1) < 0 && errno == EINTR)
        ;
}

static const struct file *file_of(const struct server *srv, uint64_t ino)
{
    return ino >= 2 && ino - 2 < (uint64_t)srv->n_files ? &srv->files[ino - 2] : NULL;
}

/* The attributes of inode ino (1 the root, 2.. the files); 0 if there is none. */
static int fill_attr(const struct server *srv, uint64_t ino, struct fuse_attr *a)
{
    const struct file *f = file_of(srv, ino);
    if (ino != FUSE_ROOT_ID && f == NULL)
        return 0;
    memset(a, 0, sizeof *a);
    a->ino = ino;
    a->atime = a->mtime = a->ctime = (uint64_t)srv->mtime.tv_sec;
    a->atimensec = a->mtimensec = a->ctimensec = (uint32_t)srv->mtime.tv_nsec;
    a->mode = f == NULL ? S_IFDIR | 0555 : S_IFREG | 0444;
    a->nlink = f == NULL ? 2 : 1;
    if (f != NULL) {
        a->size = (uint64_t)f->size;
        a->blocks = (uint64_t)(f->size + 511) / 512;
        /* st_blksize: readers sizing their buffers by it (cat, cp: 128 KiB by default)
         * read a request's worth at a time */
        a->blksize = (uint32_t)srv->max_pages * 4096;
    }
    return 1;
}

static void do_init(struct server *srv, uint64_t unique, const struct fuse_init_in *in)
{
    struct fuse_init_out out = {.major = FUSE_KERNEL_VERSION,
                                .minor = FUSE_KERNEL_MINOR_VERSION};
    if (in->major != FUSE_KERNEL_VERSION) {  /* newer: the kernel asks again in ours */
        reply(srv, unique, in->major < FUSE_KERNEL_VERSION ? EPROTO : 0, &out, sizeof out);
        return;
    }
    if (in->minor < out.minor)
        out.minor = in->minor;
    uint64_t offered = in->flags;
    if (offered & FUSE_INIT_EXT)
        offered |= (uint64_t)in->flags2 << 32;
    uint64_t want = WANTED | (srv->want_direct ? FUSE_DIRECT_IO_ALLOW_MMAP : 0);
    uint64_t flags = offered & want;
    /* direct I/O only where shared mappings of the files still work */
    atomic_store(&srv->direct, (flags & FUSE_DIRECT_IO_ALLOW_MMAP) != 0);
    out.flags = (uint32_t)flags;
    out.flags2 = (uint32_t)(flags >> 32);
    out.max_readahead = in->max_readahead;
    out.max_write = MAX_WRITE;
    out.max_pages = srv->max_pages;
    out.time_gran = 1;
    reply(srv, unique, 0, &out, sizeof out);
}

static void do_lookup(struct server *srv, const struct fuse_in_header *in, const char *name)
{
    for (Py_ssize_t i = 0; in->nodeid == FUSE_ROOT_ID && i < srv->n_files; i++) {
        if (strcmp(srv->files[i].name, name) == 0) {
            struct fuse_entry_out out = {.nodeid = (uint64_t)i + 2, .entry_valid = TIMEOUT,
                                         .attr_valid = TIMEOUT};
            fill_attr(srv, out.nodeid, &out.attr);
            reply(srv, in->unique, 0, &out, sizeof out);
            return;
        }
    }
    reply(srv, in->unique, ENOENT, NULL, 0);
}

static void do_getattr(struct server *srv, const struct fuse_in_header *in)
{
    struct fuse_attr_out out = {.attr_valid = TIMEOUT};
    int found = fill_attr(srv, in->nodeid, &out.attr);
    reply(srv, in->unique, found ? 0 : ENOENT, &out, sizeof out);
}

static void do_open(struct server *srv, const struct fuse_in_header *in,
                    const struct fuse_open_in *arg)
{
    if (file_of(srv, in->nodeid) == NULL) {
        reply(srv, in->unique, in->nodeid == FUSE_ROOT_ID ? EISDIR : ENOENT, NULL, 0);
        return;
    }
    if ((arg->flags & O_ACCMODE) != O_RDONLY) {
        reply(srv, in->unique, EROFS, NULL, 0);
        return;
    }
    if (srv->on_open != NULL && !atomic_exchange(&srv->opened, 1)) {
        PyGILState_STATE gil = PyGILState_Ensure();
        PyObject *done = PyObject_CallNoArgs(srv->on_open);
        if (done == NULL)
            PyErr_WriteUnraisable(srv->on_open);
        Py_XDECREF(done);
        PyGILState_Release(gil);
    }
    /* the files never change while mounted: what the kernel cached (read, or mapped in
     * direct mode) stays valid */
    struct fuse_open_out out = {.open_flags = FOPEN_KEEP_CACHE
                                              | (atomic_load(&srv->direct) ? FOPEN_DIRECT_IO : 0)};
    reply(srv, in->unique, 0, &out, sizeof out);
}

static void do_opendir(struct server *srv, const struct fuse_in_header *in)
{
    struct fuse_open_out out = {0};
    reply(srv, in->unique, in->nodeid == FUSE_ROOT_ID ? 0 : ENOTDIR, &out, sizeof out);
}

static void do_readdir(struct server *srv, const struct fuse_in_header *in,
                       const struct fuse_read_in *arg, struct buffers *b)
{
    if (in->nodeid != FUSE_ROOT_ID) {
        reply(srv, in->unique, ENOTDIR, NULL, 0);
        return;
    }
    if (!reserve(&b->reply, &b->reply_cap, arg->size)) {
        reply(srv, in->unique, ENOMEM, NULL, 0);
        return;
    }
    size_t used = 0;
    /* entry k: ".", "..", then the files; an entry's offset is the next one's number */
    for (uint64_t k = arg->offset; k < (uint64_t)srv->n_files + 2; k++) {
        const char *name = k == 0 ? "." : k == 1 ? ".." : srv->files[k - 2].name;
        size_t length = strlen(name), need = FUSE_DIRENT_ALIGN(FUSE_NAME_OFFSET + length);
        if (need > arg->size - used)
            break;
        struct fuse_dirent *d = (struct fuse_dirent *)(b->reply + used);
        memset(d, 0, need);
        d->ino = k < 2 ? FUSE_ROOT_ID : k;
        d->off = k + 1;
        d->namelen = (uint32_t)length;
        d->type = k < 2 ? DT_DIR : DT_REG;
        memcpy(d->name, name, length);
        used += need;
    }
    reply(srv, in->unique, 0, b->reply, used);
}

static void do_statfs(struct server *srv, const struct fuse_in_header *in)
{
    struct fuse_statfs_out out = {.st = {.files = (uint64_t)srv->n_files, .bsize = 512,
                                         .frsize = 512, .namelen = 255}};
    reply(srv, in->unique, 0, &out, sizeof out);
}

/* One stderr line for a read of s at byte `at` that failed, counted in srv->failed: block
 * `bad` does not match its digest or cannot be read (bad < 0: the read met the file's
 * end). */
static void report(struct server *srv, const struct source *s, int64_t at, Py_ssize_t bad,
                   int unreadable)
{
    atomic_fetch_add(&srv->failed, 1);
    if (bad < 0)
        fprintf(stderr, "blockforensics: error: %s: truncated payload at byte %lld\n",
                s->name, (long long)at);
    else
        fprintf(stderr, "blockforensics: error: %s: block %lld: %s\n", s->name,
                (long long)s->positions[bad],
                unreadable ? "stored bytes cannot be read"
                           : "stored bytes do not match their digest");
    fflush(stderr);
}

/* Page-aligned span around bytes at .. at+n of a mapping: *start, returned length. */
static size_t page_span(const char *map, int64_t at, size_t n, char **start)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), from = (uintptr_t)(map + at);
    uintptr_t first = from & ~(page - 1), last = (from + n + page - 1) & ~(page - 1);
    *start = (char *)first;
    return last - first;
}

/* Drop from the server's page tables what reading bytes at .. at+n of s's mapping may have
 * mapped: the stored blocks around them (a block partly read is checked whole), out to
 * huge-page bounds (a fault maps a 2 MiB folio of the page cache whole, and dropping part
 * of it would leave the rest mapped).  The page cache keeps them: the server's RSS does
 * not grow with what it served.  Pages other workers mapped there fault in again. */
static void drop_mapped(const struct source *s, int64_t at, size_t n)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), huge = HUGE_PAGE;
    uintptr_t base = (uintptr_t)s->map;  /* page-aligned */
    uintptr_t last = (base + (uintptr_t)s->map_size + page - 1) & ~(page - 1);
    uintptr_t from = base + (uintptr_t)(at > s->block_size ? at - s->block_size : 0);
    uintptr_t to = base + (uintptr_t)at + n + (uintptr_t)s->block_size;
    from = from & ~(huge - 1);
    to = (to + huge - 1) & ~(huge - 1);
    from = from < base ? base : from;
    to = to > last ? last : to;
    madvise((void *)from, to - from, MADV_DONTNEED);
}

/* drop_mapped() for the pieces 1 .. n-1 of a reply from the mappings (owner: their
 * sources, NULL for the zeros and the blob). */
static void drop_pieces(const struct iovec *iov, struct source *const *owner, int n)
{
    for (int i = 1; i < n; i++) {
        if (owner[i] != NULL)
            drop_mapped(owner[i], (const char *)iov[i].iov_base - owner[i]->map, iov[i].iov_len);
    }
}

/* Reply to a read of bytes offset .. end of f from the image files' mappings, the blob and
 * a page of zeros, with no copy here; each mapped run is faulted in at once before its
 * blocks are checked, and dropped from this process's pages after the reply (the page
 * cache keeps it: the server's RSS does not grow with what it served).  0 when a piece
 * cannot be so (no mapping, past the mapped size or the file's end, too many pieces):
 * nothing was sent. */
static int reply_mapped(struct server *srv, uint64_t unique, const struct file *f,
                        int64_t offset, int64_t end, struct buffers *b)
{
    struct fuse_out_header out = {.len = (uint32_t)(sizeof out + (size_t)(end - offset)),
                                  .unique = unique};
    struct iovec iov[MAX_PIECES + 1] = {{&out, sizeof out}};
    struct source *owner[MAX_PIECES + 1] = {NULL};
    int64_t disk[MAX_PIECES + 1];
    int n = 1;
    for (Py_ssize_t k = segment_at(f, offset); k < f->n && f->starts[k] < end; k++, n++) {
        int64_t from = offset > f->starts[k] ? offset : f->starts[k];
        int64_t to = end < segment_end(f, k) ? end : segment_end(f, k);
        int64_t at = f->offsets[k] + from - f->starts[k];
        struct source *s = f->kinds[k] >= 0 ? &srv->sources[f->kinds[k]] : NULL;
        if (n > MAX_PIECES || (s != NULL && (s->map == NULL || at + (to - from) > s->map_size)))
            return 0;
        iov[n].iov_len = (size_t)(to - from);
        iov[n].iov_base = f->kinds[k] == ZEROS ? (void *)zeros
                          : f->kinds[k] == METADATA ? (void *)(f->blob + at)
                                                    : (void *)(s->map + at);
        owner[n] = s;
        disk[n] = f->disks[k] + from - f->starts[k];
    }
    /* a fault in the mappings (the file cut shorter or unreadable since it was mapped):
     * nothing was sent, the pread path answers (and says what failed); the pieces
     * populated up to then are dropped, as after a reply */
    sigjmp_buf jump;
    volatile int populated = 1;  /* pieces 1 .. populated may be mapped */
    if (sigsetjmp(jump, 0)) {
        fault_jump = NULL;
        drop_pieces(iov, owner, populated + 1);
        return 0;
    }
    fault_jump = &jump;
    for (int i = 1; i < n; i++, populated = i) {
        struct source *s = owner[i];
        if (s == NULL)
            continue;
        int64_t at = (const char *)iov[i].iov_base - s->map;
        char *start;
        size_t span = page_span(s->map, at, iov[i].iov_len, &start);
        /* at once, else a fault per 16 pages; an error but EINVAL (Linux < 5.14): the
         * file is shorter now (EFAULT) or unreadable (EIO): the pread path says which */
        if (madvise(start, span, MADV_POPULATE_READ) != 0 && errno != EINVAL) {
            fault_jump = NULL;
            drop_pieces(iov, owner, i + 1);
            return 0;
        }
        int unreadable;
        Py_ssize_t bad = check_blocks(s, at, disk[i], iov[i].iov_len, iov[i].iov_base, b,
                                      &unreadable);
        if (bad >= 0) {
            fault_jump = NULL;
            report(srv, s, at, bad, unreadable);
            reply(srv, unique, EIO, NULL, 0);
            drop_pieces(iov, owner, i + 1);
            return 1;
        }
    }
    fault_jump = NULL;
    /* the kernel copies from the mappings: a page lost since is EFAULT here, and the
     * kernel ends the request with EIO */
    int sent;
    while ((sent = (int)writev(srv->fd, iov, n)) < 0 && errno == EINTR)
        ;
    for (int i = 1; sent < 0 && errno == EFAULT && i < n; i++) {
        if (owner[i] != NULL) {
            report(srv, owner[i], (const char *)iov[i].iov_base - owner[i]->map, -1, 1);
            break;
        }
    }
    drop_pieces(iov, owner, n);
    return 1;
}

/* Fill dst with bytes offset .. offset+n of f (all inside it), every stored block among
 * them checked; 0 after a failure (one stderr line said which). */
static int read_range(struct server *srv, const struct file *f, int64_t offset, size_t n,
                      char *dst, struct buffers *b)
{
    int64_t end = offset + (int64_t)n;
    for (Py_ssize_t k = segment_at(f, offset); k < f->n && f->starts[k] < end; k++) {
        int64_t from = offset > f->starts[k] ? offset : f->starts[k];
        int64_t to = end < segment_end(f, k) ? end : segment_end(f, k);
        int64_t at = f->offsets[k] + from - f->starts[k];
        char *piece = dst + (from - offset);
        size_t length = (size_t)(to - from);
        if (f->kinds[k] == ZEROS) {
            memset(piece, 0, length);
            continue;
        }
        if (f->kinds[k] == METADATA) {
            memcpy(piece, f->blob + at, length);
            continue;
        }
        struct source *s = &srv->sources[f->kinds[k]];
        int unreadable = !pread_all(s->fd, piece, length, at);
        Py_ssize_t bad = unreadable ? -1 : check_blocks(s, at, f->disks[k] + from - f->starts[k],
                                                        length, piece, b, &unreadable);
        if (unreadable || bad >= 0) {
            report(srv, s, at, bad, unreadable);
            return 0;
        }
    }
    return 1;
}

static void drop_all(struct server *srv);

/* Drop the pages of the plans' mappings from the server's page tables (the page cache
 * keeps them; a worker using one maps it again at its next touch): every DROP_EVERY reads,
 * so that what the reads mapped of the plans does not pile up. */
static void drop_plans(struct server *srv)
{
    if (atomic_fetch_add(&srv->reads, 1) % DROP_EVERY == DROP_EVERY - 1)
        drop_all(srv);
}

/* Drop every page of the plans' mappings from the server's page tables. */
static void drop_all(struct server *srv)
{
    uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE);
    for (Py_ssize_t i = 0; i < srv->n_mapped; i++) {
        uintptr_t from = (uintptr_t)srv->mapped[i].buf & ~(page - 1);
        uintptr_t to = ((uintptr_t)srv->mapped[i].buf + (uintptr_t)srv->mapped[i].len + page - 1)
                       & ~(page - 1);  /* a mapping's last page is whole */
        madvise((void *)from, to - from, MADV_DONTNEED);
    }
}

static void do_read(struct server *srv, const struct fuse_in_header *in,
                    const struct fuse_read_in *arg, struct buffers *b)
{
    const struct file *f = file_of(srv, in->nodeid);
    if (f == NULL) {
        reply(srv, in->unique, in->nodeid == FUSE_ROOT_ID ? EISDIR : ENOENT, NULL, 0);
        return;
    }
    int64_t offset = (int64_t)arg->offset, end = offset + (int64_t)arg->size;
    if (offset < 0 || end > f->size)
        end = f->size;
    if (offset < 0 || offset >= end) {
        reply(srv, in->unique, offset < 0 ? EINVAL : 0, NULL, 0);
        return;
    }
    size_t n = (size_t)(end - offset);
    if (n >= MAPPED_MIN && reply_mapped(srv, in->unique, f, offset, end, b)) {
        drop_plans(srv);
        return;
    }
    if (!reserve(&b->reply, &b->reply_cap, n)) {
        reply(srv, in->unique, ENOMEM, NULL, 0);
        return;
    }
    int done = read_range(srv, f, offset, n, b->reply, b);
    reply(srv, in->unique, done ? 0 : EIO, b->reply, n);
    drop_plans(srv);
}

/* Answer one request of `size` bytes (its header says as much). */
static void dispatch(struct server *srv, struct buffers *b, size_t size)
{
    const struct fuse_in_header *in = (const struct fuse_in_header *)b->request;
    const char *arg = b->request + sizeof *in;
    size_t arg_size = size - sizeof *in;
    size_t need = 0;  /* bytes of the opcode's argument */
    switch (in->opcode) {
    case FUSE_INIT:
        need = offsetof(struct fuse_init_in, flags2);
        break;
    case FUSE_OPEN:
        need = sizeof(struct fuse_open_in);
        break;
    case FUSE_READ:
    case FUSE_READDIR:
        need = sizeof(struct fuse_read_in);
        break;
    case FUSE_LOOKUP:
        need = 1;
        break;
    }
    if (arg_size < need || (in->opcode == FUSE_LOOKUP && arg[arg_size - 1] != '\0')) {
        reply(srv, in->unique, EINVAL, NULL, 0);
        return;
    }
    switch (in->opcode) {
    case FUSE_INIT: {
        struct fuse_init_in init = {0};
        memcpy(&init, arg, arg_size < sizeof init ? arg_size : sizeof init);
        do_init(srv, in->unique, &init);
        break;
    }
    case FUSE_LOOKUP:
        do_lookup(srv, in, arg);
        break;
    case FUSE_GETATTR:
        do_getattr(srv, in);
        break;
    case FUSE_OPEN:
        do_open(srv, in, (const struct fuse_open_in *)arg);
        break;
    case FUSE_READ:
        do_read(srv, in, (const struct fuse_read_in *)arg, b);
        break;
    case FUSE_OPENDIR:
        do_opendir(srv, in);
        break;
    case FUSE_READDIR:
        do_readdir(srv, in, (const struct fuse_read_in *)arg, b);
        break;
    case FUSE_STATFS:
        do_statfs(srv, in);
        break;
    case FUSE_RELEASE:
    case FUSE_RELEASEDIR:
    case FUSE_FLUSH:
    case FUSE_DESTROY:
        reply(srv, in->unique, 0, NULL, 0);
        break;
    case FUSE_FORGET:  /* no reply: nothing is forgotten (the inodes are fixed) */
    case FUSE_BATCH_FORGET:
    case FUSE_INTERRUPT:  /* requests are short: let them finish */
    case FUSE_NOTIFY_REPLY:
        break;
    default:
        reply(srv, in->unique, ENOSYS, NULL, 0);
    }
}

/* A worker: read requests from /dev/fuse and answer them until the mount ends (ENODEV),
 * or until cancelled while it waits for one. */
static void *work(void *arg)
{
    struct server *srv = arg;
    pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
    struct buffers *b = thread_buffers();
    if (b == NULL || !reserve(&b->request, &b->request_cap, REQUEST_SIZE)) {
        atomic_store(&srv->status, 3);
    } else {
        while (!atomic_load(&srv->ending)) {
            pthread_setcancelstate(PTHREAD_CANCEL_ENABLE, NULL);
            ssize_t got = read(srv->fd, b->request, REQUEST_SIZE);
            pthread_setcancelstate(PTHREAD_CANCEL_DISABLE, NULL);
            if (got < 0 && (errno == EINTR || errno == EAGAIN || errno == ENOENT))
                continue;  /* ENOENT: a request interrupted before it was read */
            if (got < 0) {
                if (errno != ENODEV)  /* ENODEV: unmounted */
                    atomic_store(&srv->status, 7);
                break;
            }
            if ((size_t)got >= sizeof(struct fuse_in_header)
                && ((const struct fuse_in_header *)b->request)->len == (uint32_t)got)
                dispatch(srv, b, (size_t)got);
        }
    }
    wake(srv->wake_fd, 0);
    return NULL;
}

/* Pages of a READ request to ask for: as many as fs.fuse.max_pages_limit allows, up to
 * MAX_PAGES (256 where it cannot be read: older kernels' fixed limit). */
static uint16_t request_pages(void)
{
    long limit = 256;
    FILE *setting = fopen(PAGES_LIMIT, "re");
    if (setting != NULL) {
        if (fscanf(setting, "%ld", &limit) != 1)
            limit = 256;
        fclose(setting);
    }
    return (uint16_t)(limit < 1 ? 1 : limit > MAX_PAGES ? MAX_PAGES : limit);
}

/* Mount, serve until unmounted (fusermount3 -u) or a signal, unmount: libfuse mounts and
 * unmounts (fusermount3 for others than root), the protocol is spoken here. */
static int run(struct server *srv, const char *mountpoint, int foreground)
{
    static const struct fuse_lowlevel_ops none;  /* libfuse answers no request */
    struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
    char options[80];
    srv->max_pages = request_pages();
    snprintf(options, sizeof options, "ro,fsname=blockforensics,subtype=vhd,max_read=%d",
             srv->max_pages * 4096);
    int status = 1;
    if (fuse_opt_add_arg(&args, "blockforensics") || fuse_opt_add_arg(&args, "-o")
        || fuse_opt_add_arg(&args, options))
        goto done_args;
    struct fuse_session *se = fuse_session_new(&args, &none, sizeof none, srv);
    if (se == NULL)
        goto done_args;
    status = 4;
    if (fuse_session_mount(se, mountpoint) != 0)
        goto done_session;
    status = 5;
    if (fuse_daemonize(foreground) != 0)
        goto done_mount;
    status = 3;
    int pipe_fds[2];
    if (pipe2(pipe_fds, O_CLOEXEC) != 0)
        goto done_mount;
    srv->wake_fd = pipe_fds[1];
    /* the workers' own descriptor: unmounting closes the session's, and a worker left
     * behind must not write to another file given its number */
    srv->fd = fcntl(fuse_session_fd(se), F_DUPFD_CLOEXEC, 0);
    if (srv->fd < 0) {
        close(pipe_fds[0]);
        close(pipe_fds[1]);
        goto done_mount;
    }
    int slot = hold_signals(srv->wake_fd);
    pthread_t workers[WORKERS];
    int n_workers = 0;
    while (slot >= 0 && n_workers < WORKERS
           && pthread_create(&workers[n_workers], NULL, work, srv) == 0)
        n_workers++;
    if (n_workers) {
        char byte;
        while (read(pipe_fds[0], &byte, 1) < 0 && errno == EINTR)
            ;
        status = atomic_load(&srv->status);
    } else {
        status = slot >= 0 ? 3 : 6;
    }
    /* end the workers (those waiting for a request; those in one finish it, for up to
     * ENDING_TIMEOUT seconds), then unmount: that closes the session's fd, which ends what
     * the kernel still holds of the connection.  A worker still in a request (a read of a
     * hung image file) is left behind with its descriptor, pipe and the server's memory
     * (serve() keeps them): the mount goes all the same, and the worker with the process. */
    atomic_store(&srv->ending, 1);
    for (int i = 0; i < n_workers; i++)
        pthread_cancel(workers[i]);
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += ENDING_TIMEOUT;
    for (int i = 0; i < n_workers; i++) {
        if (pthread_timedjoin_np(workers[i], NULL, &deadline) != 0) {
            pthread_detach(workers[i]);
            srv->stuck++;
        }
    }
    if (slot >= 0)
        release_signals(slot);
    if (srv->stuck) {
        fprintf(stderr, "blockforensics: warning: %d worker%s still in a read after %d s "
                "(a hung image file?): unmounting without %s\n", srv->stuck,
                srv->stuck > 1 ? "s" : "", ENDING_TIMEOUT, srv->stuck > 1 ? "them" : "it");
        fflush(stderr);
    } else {
        close(pipe_fds[0]);
        close(pipe_fds[1]);
        close(srv->fd);
    }
done_mount:
    fuse_session_unmount(se);
done_session:
    fuse_session_destroy(se);
done_args:
    fuse_opt_free_args(&args);
    return status;
}

/* ------------------------------------------------------------ from Python */

/* Buffers held for the whole of serve(): up to `cap`. */
struct held {
    Py_buffer *views;
    Py_ssize_t n, cap;
};

/* A contiguous buffer of obj of `count` items of `itemsize` bytes (count < 0: any). */
static const void *hold(struct held *h, PyObject *obj, Py_ssize_t itemsize, Py_ssize_t *count,
                        const char *what)
{
    if (h->n >= h->cap) {
        PyErr_SetString(PyExc_ValueError, "more buffers than files and sources hold");
        return NULL;
    }
    Py_buffer *view = &h->views[h->n];
    if (PyObject_GetBuffer(obj, view, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    h->n++;
    if (view->len % itemsize || (*count >= 0 && view->len / itemsize != *count)) {
        PyErr_Format(PyExc_ValueError, "%s: expected %zd items of %zd bytes", what, *count,
                     itemsize);
        return NULL;
    }
    *count = view->len / itemsize;
    return view->buf;
}

static int parse_sources(PyObject *list, struct server *srv, struct held *h)
{
    srv->n_sources = PyList_Size(list);
    srv->sources = calloc((size_t)srv->n_sources + 1, sizeof *srv->sources);
    if (srv->sources == NULL) {
        PyErr_NoMemory();
        return 0;
    }
    for (Py_ssize_t i = 0; i < srv->n_sources; i++) {
        struct source *s = &srv->sources[i];
        PyObject *positions, *digests, *crc;
        long long block_size;
        if (!PyArg_ParseTuple(PyList_GetItem(list, i), "isLOOO;a source is (fd, name, "
                              "block_size, positions, digests, crc)", &s->fd, &s->name,
                              &block_size, &positions, &digests, &crc))
            return 0;
        s->block_size = block_size;
        s->n = -1;
        if (block_size <= 0 || (s->positions = hold(h, positions, 8, &s->n, "positions")) == NULL
            || (s->digests = hold(h, digests, DIGEST_SIZE, &s->n, "digests")) == NULL
            || (s->crc = hold(h, crc, 1, &s->n, "crc")) == NULL) {
            if (!PyErr_Occurred())
                PyErr_SetString(PyExc_ValueError, "block_size must be positive");
            return 0;
        }
        s->checked = calloc((size_t)s->n / 64 + 1, sizeof *s->checked);
        if (s->checked == NULL) {
            PyErr_NoMemory();
            return 0;
        }
        struct stat st;
        if (fstat(s->fd, &st) == 0 && st.st_size > 0) {  /* no mapping: pread */
            void *map = mmap(NULL, (size_t)st.st_size, PROT_READ, MAP_SHARED, s->fd, 0);
            s->map = map == MAP_FAILED ? NULL : map;
            s->map_size = map == MAP_FAILED ? 0 : st.st_size;
        }
    }
    return 1;
}

static int parse_files(PyObject *list, struct server *srv, struct held *h)
{
    srv->n_files = PyList_Size(list);
    srv->files = calloc((size_t)srv->n_files + 1, sizeof *srv->files);
    if (srv->files == NULL) {
        PyErr_NoMemory();
        return 0;
    }
    for (Py_ssize_t i = 0; i < srv->n_files; i++) {
        struct file *f = &srv->files[i];
        PyObject *starts, *kinds, *offsets, *disks, *blob;
        long long size;
        if (!PyArg_ParseTuple(PyList_GetItem(list, i), "sLOOOOO;a file is (name, size, "
                              "starts, kinds, offsets, disks, blob)", &f->name, &size, &starts,
                              &kinds, &offsets, &disks, &blob))
            return 0;
        f->size = size;
        f->n = -1;
        if ((f->starts = hold(h, starts, 8, &f->n, "starts")) == NULL
            || (f->kinds = hold(h, kinds, 4, &f->n, "kinds")) == NULL
            || (f->offsets = hold(h, offsets, 8, &f->n, "offsets")) == NULL
            || (f->disks = hold(h, disks, 8, &f->n, "disks")) == NULL)
            return 0;
        f->blob_len = -1;
        if ((f->blob = hold(h, blob, 1, &f->blob_len, "blob")) == NULL && PyErr_Occurred())
            return 0;
        for (Py_ssize_t k = 0; k < f->n; k++) {  /* every segment inside what it reads */
            if (k % CHECKED_SEGMENTS == CHECKED_SEGMENTS - 1)
                drop_all(srv);  /* what this loop mapped of the plans */
            int64_t length = segment_end(f, k) - f->starts[k];
            int32_t kind = f->kinds[k];
            if (f->starts[0] != 0 || length <= 0 || kind < METADATA || kind >= srv->n_sources
                || (kind == METADATA && (f->offsets[k] < 0
                                         || f->offsets[k] + length > f->blob_len))) {
                PyErr_Format(PyExc_ValueError, "%s: segment %zd is not a valid piece", f->name, k);
                return 0;
            }
        }
        if (f->n == 0 && f->size) {
            PyErr_Format(PyExc_ValueError, "%s: no segments", f->name);
            return 0;
        }
    }
    return 1;
}

/* Hold the mappings of `list` whose pages may be dropped. */
static int parse_mapped(PyObject *list, struct server *srv, struct held *h)
{
    srv->n_mapped = PySequence_Length(list);
    if (srv->n_mapped < 0)
        return 0;
    srv->mapped = calloc((size_t)srv->n_mapped + 1, sizeof *srv->mapped);
    if (srv->mapped == NULL) {
        PyErr_NoMemory();
        return 0;
    }
    for (Py_ssize_t i = 0; i < srv->n_mapped; i++) {
        PyObject *item = PySequence_GetItem(list, i);
        Py_ssize_t count = -1;
        const void *buf = item == NULL ? NULL : hold(h, item, 1, &count, "mapped");
        Py_XDECREF(item);
        if (buf == NULL)
            return 0;
        srv->mapped[i] = h->views[h->n - 1];
    }
    return 1;
}

static void free_server(struct server *srv, struct held *h)
{
    for (Py_ssize_t i = 0; srv->sources && i < srv->n_sources; i++) {
        free(srv->sources[i].checked);
        if (srv->sources[i].map != NULL)
            munmap((void *)srv->sources[i].map, (size_t)srv->sources[i].map_size);
    }
    free(srv->sources);
    free(srv->files);
    free(srv->mapped);
    for (Py_ssize_t i = 0; i < h->n; i++)
        PyBuffer_Release(&h->views[i]);
    free(h->views);
}

static PyObject *serve(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"mountpoint", "files", "sources", "mapped", "foreground",
                               "on_open", "direct", NULL};
    const char *mountpoint;
    PyObject *files, *sources, *mapped = NULL, *on_open = Py_None;
    int foreground = 1, direct = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "sO!O!|$OpOp", keywords, &mountpoint,
                                     &PyList_Type, &files, &PyList_Type, &sources, &mapped,
                                     &foreground, &on_open, &direct))
        return NULL;
    PyObject *no_mappings = PyTuple_New(0);
    if (no_mappings == NULL)
        return NULL;
    mapped = mapped == NULL ? no_mappings : mapped;
    Py_ssize_t n_mapped = PySequence_Length(mapped);
    if (n_mapped < 0) {
        Py_DECREF(no_mappings);
        return NULL;
    }
    /* on the heap: a worker left behind (see run()) keeps using it */
    struct server *srv = calloc(1, sizeof *srv);
    if (srv == NULL) {
        Py_DECREF(no_mappings);
        return PyErr_NoMemory();
    }
    srv->on_open = on_open == Py_None ? NULL : on_open;
    srv->want_direct = direct;
    struct held h = {.cap = 5 * PyList_GET_SIZE(files) + 3 * PyList_GET_SIZE(sources)
                            + n_mapped};
    if ((h.views = calloc((size_t)h.cap + 1, sizeof *h.views)) == NULL) {
        free(srv);
        Py_DECREF(no_mappings);
        return PyErr_NoMemory();
    }
    clock_gettime(CLOCK_REALTIME, &srv->mtime);
    int status = -1;
    unsigned long long failed = 0;
    if (parse_mapped(mapped, srv, &h) && parse_sources(sources, srv, &h)
        && parse_files(files, srv, &h)) {
        drop_all(srv);
        Py_BEGIN_ALLOW_THREADS
        status = run(srv, mountpoint, foreground);
        Py_END_ALLOW_THREADS
        failed = (unsigned long long)atomic_load(&srv->failed);
    }
    if (!srv->stuck) {  /* else kept for the workers left behind, till the process ends */
        free_server(srv, &h);
        free(srv);
    }
    Py_DECREF(no_mappings);
    return status < 0 ? NULL : Py_BuildValue("(iK)", status, failed);
}

static PyMethodDef methods[] = {
    {"serve", (PyCFunction)(void (*)(void))serve, METH_VARARGS | METH_KEYWORDS,
     "serve(mountpoint, files, sources, *, mapped=(), foreground=True, on_open=None, "
     "direct=True) -> int: "
     "serve byte plans read-only over FUSE until unmounted: (0, or else fuse_main's status, "
     "reads that failed their check)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_fuseserve",
    "A read-only FUSE server in C (libfuse 3, multi-threaded) for byte plans.", -1, methods,
};

PyMODINIT_FUNC PyInit__fuseserve(void)
{
    crc32_init();
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    if (sha256_md == NULL) {
        PyErr_SetString(PyExc_ImportError, "libcrypto offers no SHA-256");
        return NULL;
    }
    if (pthread_key_create(&buffers_key, free_buffers) != 0) {
        PyErr_SetString(PyExc_ImportError, "no thread-specific storage");
        return NULL;
    }
    return PyModule_Create(&module);
}
