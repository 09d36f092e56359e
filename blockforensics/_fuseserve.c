/* A read-only FUSE server in C for byte plans (blockforensics/formats/byteplan.py).
 *
 * The mount is a flat directory of files, each a table of segments in file order:
 * zeros, bytes of a metadata blob, or a run of an image file (fd, byte offset).  A read
 * is served by libfuse 3's multi-threaded low-level loop with no Python: the image
 * bytes are read (pread) straight into the reply buffer, every stored block they touch
 * is checked against its stored digest (CRC-32 or SHA-256/128) in that buffer, and the
 * buffer goes to the kernel in one write (fuse_reply_buf): one copy in, one copy out.
 * A block is checked once (a bitmap per image file remembers it), so the kernel's
 * read-ahead and re-reads do not hash again.  A block that fails is EIO for the read,
 * with one line on stderr naming the image and the block.  The kernel keeps what it
 * read (keep_cache): the files never change while mounted.
 *
 * Measured against the alternatives (benchmarks/README.md, session 13): replying from
 * the image files by splice once their blocks were checked, and checking in a mapping
 * of the image files and replying from it (no copy here), were no faster; direct_io
 * (no page cache for the served files) was, but loses the kernel's cache of them and
 * shared mappings of them.
 *
 *   serve(mountpoint, files, sources, *, foreground=True, on_open=None) -> int
 *     files     list of (name, size, starts, kinds, offsets, blob): starts int64 and
 *               offsets int64 (file and source bytes), kinds int32 (>= 0: a source,
 *               -1 zeros, -2 the blob), segments tiling [0, size) from starts[0] == 0
 *     sources   list of (fd, name, block_size, offsets, positions, digests, crc): the
 *               stored blocks to check in that file, ascending offsets (int64), their
 *               disk positions (int64, for messages), 16-byte digests, crc (uint8, 1:
 *               CRC-32 form, else SHA-256/128)
 *     on_open   called (with the GIL) at the first open of a file
 *     Returns 0 once unmounted (fusermount3 -u, or SIGINT/SIGTERM/SIGHUP, which unmount);
 *     else fuse_main's statuses: 1 bad options, 3 setup failed, 4 mount failed,
 *     5 daemonising failed, 6 signal handlers failed, 7 the loop failed.
 */
#define PY_SSIZE_T_CLEAN
#define FUSE_USE_VERSION 314
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <fuse_lowlevel.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "_crc32.h"

#define DIGEST_SIZE 16
#define ZEROS (-1)
#define METADATA (-2)
#define MAX_READ (1 << 20)
#define TIMEOUT 86400.0 /* seconds the kernel may keep names and attributes: nothing changes */

struct source {
    int fd;
    const char *name;
    int64_t block_size;
    Py_ssize_t n;               /* stored blocks to check */
    const int64_t *offsets;     /* ascending */
    const int64_t *positions;
    const unsigned char *digests; /* n * DIGEST_SIZE */
    const unsigned char *crc;
    _Atomic uint64_t *checked;  /* a bit per block: its digest matched */
};

struct file {
    const char *name;
    int64_t size;
    Py_ssize_t n;               /* segments */
    const int64_t *starts;
    const int32_t *kinds;
    const int64_t *offsets;
    const char *blob;
    Py_ssize_t blob_len;
};

struct server {
    struct file *files;
    Py_ssize_t n_files;
    struct source *sources;
    Py_ssize_t n_sources;
    PyObject *on_open;
    atomic_int opened;
    struct timespec mtime;
};

static EVP_MD *sha256_md;
static pthread_key_t buffers_key;

/* A worker thread's reply buffer and its buffer for whole blocks. */
struct buffers {
    char *reply;
    size_t reply_cap;
    char *block;
    size_t block_cap;
};

static void free_buffers(void *p)
{
    struct buffers *b = p;
    free(b->reply);
    free(b->block);
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

static int digest_matches(const struct source *s, Py_ssize_t i, const unsigned char *p)
{
    unsigned char got[EVP_MAX_MD_SIZE] = {0};
    if (s->crc[i]) {
        uint32_t crc = crc32_span(p, (size_t)s->block_size);
        for (int k = 0; k < 4; k++)
            got[k] = (unsigned char)(crc >> (8 * k));
    } else if (!EVP_Digest(p, (size_t)s->block_size, got, NULL, sha256_md, NULL)) {
        return 0;
    }
    return memcmp(got, s->digests + i * DIGEST_SIZE, DIGEST_SIZE) == 0;
}

static int is_checked(const struct source *s, Py_ssize_t i)
{
    return (atomic_load_explicit(&s->checked[i / 64], memory_order_relaxed) >> (i % 64)) & 1;
}

/* The first stored block of s whose bytes end after byte `offset`. */
static Py_ssize_t first_block(const struct source *s, int64_t offset)
{
    Py_ssize_t lo = 0, hi = s->n;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (s->offsets[mid] + s->block_size <= offset)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

/* Check the stored blocks of s that bytes offset .. offset+n (held at dst) touch; a block
 * only partly in them is read whole into the thread's block buffer, checked there, and
 * its part copied to dst (so what is replied is what was checked).  Returns -1 when all
 * match, else the index of the first that does not (or cannot be read); *unreadable set
 * for that. */
static Py_ssize_t check_blocks(struct source *s, int64_t offset, size_t n, char *dst,
                               struct buffers *b, int *unreadable)
{
    int64_t bs = s->block_size, end = offset + (int64_t)n;
    *unreadable = 0;
    for (Py_ssize_t i = first_block(s, offset); i < s->n && s->offsets[i] < end; i++) {
        if (is_checked(s, i))
            continue;
        int64_t at = s->offsets[i];
        const unsigned char *p;
        if (at >= offset && at + bs <= end) {
            p = (const unsigned char *)dst + (at - offset);
        } else {
            if (!reserve(&b->block, &b->block_cap, (size_t)bs)
                || !pread_all(s->fd, b->block, (size_t)bs, at)) {
                *unreadable = 1;
                return i;
            }
            p = (const unsigned char *)b->block;
        }
        if (!digest_matches(s, i, p))
            return i;
        if (p == (const unsigned char *)b->block) {
            int64_t from = at > offset ? at : offset, to = at + bs < end ? at + bs : end;
            memcpy(dst + (from - offset), b->block + (from - at), (size_t)(to - from));
        }
        atomic_fetch_or_explicit(&s->checked[i / 64], (uint64_t)1 << (i % 64),
                                 memory_order_relaxed);
    }
    return -1;
}

static struct server *server_of(fuse_req_t req)
{
    return fuse_req_userdata(req);
}

static struct file *file_of(struct server *srv, fuse_ino_t ino)
{
    return ino >= 2 && ino - 2 < (fuse_ino_t)srv->n_files ? &srv->files[ino - 2] : NULL;
}

static void fill_stat(struct server *srv, fuse_ino_t ino, struct stat *st)
{
    memset(st, 0, sizeof *st);
    st->st_ino = ino;
    st->st_atim = st->st_mtim = st->st_ctim = srv->mtime;
    if (ino == FUSE_ROOT_ID) {
        st->st_mode = S_IFDIR | 0555;
        st->st_nlink = 2;
        return;
    }
    struct file *f = file_of(srv, ino);
    st->st_mode = S_IFREG | 0444;
    st->st_nlink = 1;
    st->st_size = f->size;
    st->st_blocks = (f->size + 511) / 512;
}

static void op_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
    struct server *srv = server_of(req);
    if (parent == FUSE_ROOT_ID) {
        for (Py_ssize_t i = 0; i < srv->n_files; i++) {
            if (strcmp(srv->files[i].name, name) == 0) {
                struct fuse_entry_param e = {.ino = (fuse_ino_t)i + 2,
                                             .attr_timeout = TIMEOUT,
                                             .entry_timeout = TIMEOUT};
                fill_stat(srv, e.ino, &e.attr);
                fuse_reply_entry(req, &e);
                return;
            }
        }
    }
    fuse_reply_err(req, ENOENT);
}

static void op_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct server *srv = server_of(req);
    if (ino != FUSE_ROOT_ID && file_of(srv, ino) == NULL) {
        fuse_reply_err(req, ENOENT);
        return;
    }
    struct stat st;
    fill_stat(srv, ino, &st);
    fuse_reply_attr(req, &st, TIMEOUT);
}

static void op_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                       struct fuse_file_info *fi)
{
    struct server *srv = server_of(req);
    if (ino != FUSE_ROOT_ID) {
        fuse_reply_err(req, ENOTDIR);
        return;
    }
    char *buf = malloc(size ? size : 1);
    if (buf == NULL) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    size_t used = 0;
    /* entry k: ".", "..", then the files; an entry's offset is the next one's number */
    for (off_t k = off; k < srv->n_files + 2; k++) {
        struct stat st = {.st_ino = k < 2 ? FUSE_ROOT_ID : (fuse_ino_t)k,
                          .st_mode = k < 2 ? S_IFDIR : S_IFREG};
        const char *name = k == 0 ? "." : k == 1 ? ".." : srv->files[k - 2].name;
        size_t need = fuse_add_direntry(req, buf + used, size - used, name, &st, k + 1);
        if (need > size - used)
            break;
        used += need;
    }
    fuse_reply_buf(req, buf, used);
    free(buf);
}

static void op_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    struct server *srv = server_of(req);
    if (file_of(srv, ino) == NULL) {
        fuse_reply_err(req, ino == FUSE_ROOT_ID ? EISDIR : ENOENT);
        return;
    }
    if ((fi->flags & O_ACCMODE) != O_RDONLY) {
        fuse_reply_err(req, EROFS);
        return;
    }
    fi->keep_cache = 1;  /* the files never change while mounted */
    if (srv->on_open != NULL && !atomic_exchange(&srv->opened, 1)) {
        PyGILState_STATE gil = PyGILState_Ensure();
        PyObject *done = PyObject_CallNoArgs(srv->on_open);
        if (done == NULL)
            PyErr_WriteUnraisable(srv->on_open);
        Py_XDECREF(done);
        PyGILState_Release(gil);
    }
    fuse_reply_open(req, fi);
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

static void op_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                    struct fuse_file_info *fi)
{
    struct server *srv = server_of(req);
    const struct file *f = file_of(srv, ino);
    if (f == NULL || off < 0) {
        fuse_reply_err(req, f == NULL ? ENOENT : EINVAL);
        return;
    }
    int64_t offset = off, end = offset + (int64_t)size;
    if (end > f->size)
        end = f->size;
    if (offset >= end) {
        fuse_reply_buf(req, NULL, 0);
        return;
    }
    struct buffers *b = thread_buffers();
    if (b == NULL || !reserve(&b->reply, &b->reply_cap, (size_t)(end - offset))) {
        fuse_reply_err(req, ENOMEM);
        return;
    }
    for (Py_ssize_t k = segment_at(f, offset); k < f->n && f->starts[k] < end; k++) {
        int64_t from = offset > f->starts[k] ? offset : f->starts[k];
        int64_t to = end < segment_end(f, k) ? end : segment_end(f, k);
        int64_t at = f->offsets[k] + from - f->starts[k];
        char *dst = b->reply + (from - offset);
        size_t n = (size_t)(to - from);
        if (f->kinds[k] == ZEROS) {
            memset(dst, 0, n);
            continue;
        }
        if (f->kinds[k] == METADATA) {
            memcpy(dst, f->blob + at, n);
            continue;
        }
        struct source *s = &srv->sources[f->kinds[k]];
        int unreadable = !pread_all(s->fd, dst, n, at);
        Py_ssize_t bad = unreadable ? -1 : check_blocks(s, at, n, dst, b, &unreadable);
        if (unreadable && bad < 0) {
            fprintf(stderr, "blockforensics: error: %s: truncated payload at byte %lld\n",
                    s->name, (long long)at);
        } else if (bad >= 0) {
            fprintf(stderr, "blockforensics: error: %s: block %lld: %s\n", s->name,
                    (long long)s->positions[bad],
                    unreadable ? "stored bytes cannot be read"
                               : "stored bytes do not match their digest");
        }
        if (unreadable || bad >= 0) {
            fflush(stderr);
            fuse_reply_err(req, EIO);
            return;
        }
    }
    fuse_reply_buf(req, b->reply, (size_t)(end - offset));
}

static void op_init(void *userdata, struct fuse_conn_info *conn)
{
    conn->max_read = MAX_READ;
    /* replies are written from our buffer: a splice of it would cost more (measured) */
    conn->want &= ~(unsigned)(FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
}

static const struct fuse_lowlevel_ops operations = {
    .init = op_init,
    .lookup = op_lookup,
    .getattr = op_getattr,
    .readdir = op_readdir,
    .open = op_open,
    .read = op_read,
};

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
        PyObject *offsets, *positions, *digests, *crc;
        long long block_size;
        if (!PyArg_ParseTuple(PyList_GetItem(list, i), "isLOOOO;a source is (fd, name, "
                              "block_size, offsets, positions, digests, crc)", &s->fd, &s->name,
                              &block_size, &offsets, &positions, &digests, &crc))
            return 0;
        s->block_size = block_size;
        s->n = -1;
        if (block_size <= 0 || (s->offsets = hold(h, offsets, 8, &s->n, "offsets")) == NULL
            || (s->positions = hold(h, positions, 8, &s->n, "positions")) == NULL
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
        PyObject *starts, *kinds, *offsets, *blob;
        long long size;
        if (!PyArg_ParseTuple(PyList_GetItem(list, i), "sLOOOO;a file is (name, size, "
                              "starts, kinds, offsets, blob)", &f->name, &size, &starts,
                              &kinds, &offsets, &blob))
            return 0;
        f->size = size;
        f->n = -1;
        if ((f->starts = hold(h, starts, 8, &f->n, "starts")) == NULL
            || (f->kinds = hold(h, kinds, 4, &f->n, "kinds")) == NULL
            || (f->offsets = hold(h, offsets, 8, &f->n, "offsets")) == NULL)
            return 0;
        f->blob_len = -1;
        if ((f->blob = hold(h, blob, 1, &f->blob_len, "blob")) == NULL && PyErr_Occurred())
            return 0;
        for (Py_ssize_t k = 0; k < f->n; k++) {  /* every segment inside what it reads */
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

static void free_server(struct server *srv, struct held *h)
{
    for (Py_ssize_t i = 0; srv->sources && i < srv->n_sources; i++)
        free(srv->sources[i].checked);
    free(srv->sources);
    free(srv->files);
    for (Py_ssize_t i = 0; i < h->n; i++)
        PyBuffer_Release(&h->views[i]);
    free(h->views);
}

/* Mount, serve until unmounted, unmount: fuse_main's statuses. */
static int run(struct server *srv, const char *mountpoint, int foreground)
{
    struct fuse_args args = FUSE_ARGS_INIT(0, NULL);
    int status = 1;
    if (fuse_opt_add_arg(&args, "blockforensics") || fuse_opt_add_arg(&args, "-o")
        || fuse_opt_add_arg(&args, "ro,fsname=blockforensics,subtype=vhd,max_read=1048576"))
        goto done_args;
    struct fuse_session *se = fuse_session_new(&args, &operations, sizeof operations, srv);
    if (se == NULL)
        goto done_args;
    status = 6;
    if (fuse_set_signal_handlers(se) != 0)
        goto done_session;
    status = 4;
    if (fuse_session_mount(se, mountpoint) != 0)
        goto done_signals;
    status = 5;
    if (fuse_daemonize(foreground) != 0)
        goto done_mount;
    struct fuse_loop_config *config = fuse_loop_cfg_create();
    status = 3;
    if (config == NULL)
        goto done_mount;
    fuse_loop_cfg_set_clone_fd(config, 0);
    int ended = fuse_session_loop_mt(se, config);
    fuse_loop_cfg_destroy(config);
    /* libfuse 3.14 ends the loop with the signal's number when a signal unmounts */
    status = ended == 0 || ended == SIGINT || ended == SIGTERM || ended == SIGHUP
             || ended == -SIGINT || ended == -SIGTERM || ended == -SIGHUP ? 0 : 7;
done_mount:
    fuse_session_unmount(se);
done_signals:
    fuse_remove_signal_handlers(se);
done_session:
    fuse_session_destroy(se);
done_args:
    fuse_opt_free_args(&args);
    return status;
}

static PyObject *serve(PyObject *self, PyObject *args, PyObject *kwargs)
{
    static char *keywords[] = {"mountpoint", "files", "sources", "foreground", "on_open",
                               NULL};
    const char *mountpoint;
    PyObject *files, *sources, *on_open = Py_None;
    int foreground = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "sO!O!|$pO", keywords, &mountpoint,
                                     &PyList_Type, &files, &PyList_Type, &sources,
                                     &foreground, &on_open))
        return NULL;
    struct server srv = {.on_open = on_open == Py_None ? NULL : on_open};
    struct held h = {.cap = 4 * (PyList_GET_SIZE(files) + PyList_GET_SIZE(sources))};
    if ((h.views = calloc((size_t)h.cap + 1, sizeof *h.views)) == NULL)
        return PyErr_NoMemory();
    clock_gettime(CLOCK_REALTIME, &srv.mtime);
    int status = -1;
    if (parse_sources(sources, &srv, &h) && parse_files(files, &srv, &h)) {
        Py_BEGIN_ALLOW_THREADS
        status = run(&srv, mountpoint, foreground);
        Py_END_ALLOW_THREADS
    }
    free_server(&srv, &h);
    return status < 0 ? NULL : PyLong_FromLong(status);
}

static PyMethodDef methods[] = {
    {"serve", (PyCFunction)(void (*)(void))serve, METH_VARARGS | METH_KEYWORDS,
     "serve(mountpoint, files, sources, *, foreground=True, on_open=None) -> int: serve byte plans read-only over FUSE until unmounted; 0 then, "
     "else fuse_main's status."},
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
