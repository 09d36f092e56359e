/* Per-block primitives over a whole batch of blocks per call, without the GIL.
 *
 * Hashing or encrypting a volume block by block through Python costs a call,
 * objects and a GIL round trip per 4 KiB block, which halves the throughput of
 * SHA-256 and AES-GCM and keeps them on one core.  These functions take a
 * batch (byte spans of one buffer), run libcrypto over it
 * with the GIL released, and so let Python threads work on disjoint parts of a
 * batch on every core.  Their only callers are blockforensics/spanhash.py and
 * blockforensics/crypto.py, which also hold the pure-Python equivalents.
 *
 *   sha256_spans(data, offsets, lengths, out) -> None
 *     data      a contiguous readable buffer
 *     offsets   int64 buffer: n span starts in bytes
 *     lengths   int64 buffer: n span lengths in bytes
 *     out       writable, n * keep bytes (1 <= keep <= 32): the first `keep` bytes
 *               of the SHA-256 of each span, back to back
 *
 *   crc32_spans(data, offsets, lengths, out) -> None
 *     data, offsets, lengths as for sha256_spans
 *     out       writable, n * 4 bytes: the CRC-32 (zlib's, IEEE 802.3) of each span as a
 *               little-endian uint32
 *     Spans of 64 bytes or more are folded with carry-less multiplication (PCLMULQDQ)
 *     where the CPU has it, about 4x zlib's speed; zlib finishes each span's last bytes.
 *
 *   aes256gcm_seal_spans(key, nonces, aads, data, offsets, lengths, out, out_offsets)
 *     key       32 bytes
 *     nonces    n * 12 bytes, one nonce per span (never reused under one key)
 *     aads      n * a bytes: each span's associated data (a = len(aads) / n)
 *     data      the plaintexts: span i is lengths[i] bytes from offsets[i] (int64 buffers)
 *     out       writable: nonce || ciphertext || tag of span i (lengths[i] + 28 bytes)
 *               from out_offsets[i] (int64 buffer)
 *
 *   aes256gcm_open_spans(key, aads, sealed, offsets, lengths, out, out_offsets, ok)
 *     sealed    span i, nonce || ciphertext || tag, is lengths[i] bytes from offsets[i]
 *     aads      n * a bytes: each span's associated data
 *     out       writable: the plaintext of span i (lengths[i] - 28 bytes) from
 *               out_offsets[i]; zeros where it fails
 *     ok        writable, n bytes: 1 where the span authenticated, 0 where it did not
 *
 *   sync_file_range(fd, offset, nbytes, flags) -> None
 *     Linux's sync_file_range(2) (os has no binding), without the GIL: with
 *     SYNC_FILE_RANGE_WRITE alone it starts writing a range's dirty pages to disk
 *     and returns without waiting (blockforensics/fileio.py: early writeback).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>
#include <unistd.h>
#include <zlib.h>

#include "_crc32.h"

#define NONCE_SIZE 12
#define TAG_SIZE 16
#define KEY_SIZE 32

static EVP_MD *sha256_md;
static EVP_CIPHER *aes256gcm;

/* True when every span (int64 offsets[i], lengths[i] >= least) lies inside a buffer of
 * `size` bytes; else a ValueError naming `what` is set. */
static int spans_inside(const int64_t *offsets, const int64_t *lengths, Py_ssize_t n,
                        Py_ssize_t size, int64_t least, const char *what)
{
    for (Py_ssize_t i = 0; i < n; i++) {
        if (offsets[i] < 0 || lengths[i] < least || lengths[i] > INT_MAX
            || offsets[i] > size - lengths[i]) {
            PyErr_Format(PyExc_ValueError, "span %zd lies outside %s", i, what);
            return 0;
        }
    }
    return 1;
}

static PyObject *sha256_spans(PyObject *self, PyObject *args)
{
    Py_buffer data, offsets, lengths, out;
    if (!PyArg_ParseTuple(args, "y*y*y*w*", &data, &offsets, &lengths, &out))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = offsets.len / (Py_ssize_t)sizeof(int64_t);
    Py_ssize_t keep = n ? out.len / n : 0;
    if (offsets.len != lengths.len || offsets.len % (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "offsets and lengths must be int64 buffers of one size");
        goto done;
    }
    if (n && (keep < 1 || keep > 32 || out.len != n * keep)) {
        PyErr_SetString(PyExc_ValueError, "out must hold 1 to 32 bytes per span");
        goto done;
    }
    const int64_t *start = offsets.buf, *length = lengths.buf;
    if (!spans_inside(start, length, n, data.len, 0, "the data"))
        goto done;
    int failed;
    Py_BEGIN_ALLOW_THREADS
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char digest[EVP_MAX_MD_SIZE];
    const unsigned char *base = data.buf;
    unsigned char *dst = out.buf;
    failed = ctx == NULL;
    for (Py_ssize_t i = 0; i < n && !failed; i++) {
        failed = !EVP_DigestInit_ex2(ctx, sha256_md, NULL)
                 || !EVP_DigestUpdate(ctx, base + start[i], (size_t)length[i])
                 || !EVP_DigestFinal_ex(ctx, digest, NULL);
        memcpy(dst + i * keep, digest, (size_t)keep);
    }
    EVP_MD_CTX_free(ctx);
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_SetString(PyExc_RuntimeError, "libcrypto failed to compute SHA-256");
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&lengths);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *crc32_spans(PyObject *self, PyObject *args)
{
    Py_buffer data, offsets, lengths, out;
    if (!PyArg_ParseTuple(args, "y*y*y*w*", &data, &offsets, &lengths, &out))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = offsets.len / (Py_ssize_t)sizeof(int64_t);
    if (offsets.len != lengths.len || offsets.len % (Py_ssize_t)sizeof(int64_t)
        || out.len != n * (Py_ssize_t)sizeof(uint32_t)) {
        PyErr_SetString(PyExc_ValueError,
                        "offsets and lengths must be int64 buffers of one size, out 4 bytes a span");
        goto done;
    }
    const int64_t *start = offsets.buf, *length = lengths.buf;
    if (!spans_inside(start, length, n, data.len, 0, "the data"))
        goto done;
    Py_BEGIN_ALLOW_THREADS
    const unsigned char *base = data.buf;
    unsigned char *dst = out.buf;
    for (Py_ssize_t i = 0; i < n; i++) {
        uint32_t crc = crc32_span(base + start[i], (size_t)length[i]);
        for (int b = 0; b < 4; b++)  /* little-endian, whatever the host */
            dst[4 * i + b] = (unsigned char)(crc >> (8 * b));
    }
    Py_END_ALLOW_THREADS
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&lengths);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *aes256gcm_seal_spans(PyObject *self, PyObject *args)
{
    Py_buffer key, nonces, aads, data, offsets, lengths, out, out_offsets;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*y*w*y*", &key, &nonces, &aads, &data, &offsets,
                          &lengths, &out, &out_offsets))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = nonces.len / NONCE_SIZE;
    Py_ssize_t aad_len = n ? aads.len / n : 0;
    const int64_t *start = offsets.buf, *length = lengths.buf, *to = out_offsets.buf;
    if (key.len != KEY_SIZE) {
        PyErr_SetString(PyExc_ValueError, "the key must be 32 bytes");
        goto done;
    }
    if (nonces.len % NONCE_SIZE || aads.len != n * aad_len || aad_len > INT_MAX
        || offsets.len != n * (Py_ssize_t)sizeof(int64_t) || lengths.len != offsets.len
        || out_offsets.len != offsets.len) {
        PyErr_SetString(PyExc_ValueError,
                        "nonces, aads, offsets, lengths and out_offsets must describe the same "
                        "number of spans");
        goto done;
    }
    if (!spans_inside(start, length, n, data.len, 0, "the data"))
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (to[i] < 0 || to[i] > out.len - (length[i] + NONCE_SIZE + TAG_SIZE)) {
            PyErr_Format(PyExc_ValueError, "sealed span %zd lies outside out", i);
            goto done;
        }
    }
    int failed;
    Py_BEGIN_ALLOW_THREADS
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    const unsigned char *nonce = nonces.buf, *aad = aads.buf, *src = data.buf;
    unsigned char *dst = out.buf;
    int len;
    /* the key schedule is set up once; each span then only sets its nonce */
    failed = ctx == NULL || !EVP_EncryptInit_ex2(ctx, aes256gcm, key.buf, NULL, NULL);
    for (Py_ssize_t i = 0; i < n && !failed; i++) {
        unsigned char *sealed = dst + to[i];
        unsigned char *ciphertext = sealed + NONCE_SIZE;
        memcpy(sealed, nonce + i * NONCE_SIZE, NONCE_SIZE);
        failed = !EVP_EncryptInit_ex2(ctx, NULL, NULL, sealed, NULL)
                 || !EVP_EncryptUpdate(ctx, NULL, &len, aad + i * aad_len, (int)aad_len)
                 || !EVP_EncryptUpdate(ctx, ciphertext, &len, src + start[i], (int)length[i])
                 || !EVP_EncryptFinal_ex(ctx, ciphertext + len, &len)
                 || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_SIZE,
                                        ciphertext + length[i]) <= 0;
    }
    EVP_CIPHER_CTX_free(ctx);
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_SetString(PyExc_RuntimeError, "libcrypto failed to encrypt with AES-256-GCM");
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&nonces);
    PyBuffer_Release(&aads);
    PyBuffer_Release(&data);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&lengths);
    PyBuffer_Release(&out);
    PyBuffer_Release(&out_offsets);
    return result;
}

static PyObject *aes256gcm_open_spans(PyObject *self, PyObject *args)
{
    Py_buffer key, aads, sealed, offsets, lengths, out, out_offsets, ok;
    if (!PyArg_ParseTuple(args, "y*y*y*y*y*w*y*w*", &key, &aads, &sealed, &offsets, &lengths,
                          &out, &out_offsets, &ok))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = ok.len;
    Py_ssize_t aad_len = n ? aads.len / n : 0;
    const int64_t *start = offsets.buf, *length = lengths.buf, *to = out_offsets.buf;
    if (key.len != KEY_SIZE) {
        PyErr_SetString(PyExc_ValueError, "the key must be 32 bytes");
        goto done;
    }
    if (aads.len != n * aad_len || aad_len > INT_MAX
        || offsets.len != n * (Py_ssize_t)sizeof(int64_t) || lengths.len != offsets.len
        || out_offsets.len != offsets.len) {
        PyErr_SetString(PyExc_ValueError,
                        "aads, offsets, lengths, out_offsets and ok must describe the same "
                        "number of spans");
        goto done;
    }
    if (!spans_inside(start, length, n, sealed.len, NONCE_SIZE + TAG_SIZE, "the sealed data"))
        goto done;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (to[i] < 0 || to[i] > out.len - (length[i] - NONCE_SIZE - TAG_SIZE)) {
            PyErr_Format(PyExc_ValueError, "opened span %zd lies outside out", i);
            goto done;
        }
    }
    int failed;
    Py_BEGIN_ALLOW_THREADS
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    const unsigned char *aad = aads.buf, *src = sealed.buf;
    unsigned char *plain = out.buf, *good = ok.buf;
    int len;
    failed = ctx == NULL || !EVP_DecryptInit_ex2(ctx, aes256gcm, key.buf, NULL, NULL);
    for (Py_ssize_t i = 0; i < n && !failed; i++) {
        const unsigned char *span = src + start[i];
        int width = (int)(length[i] - NONCE_SIZE - TAG_SIZE);
        unsigned char *dst = plain + to[i];
        failed = !EVP_DecryptInit_ex2(ctx, NULL, NULL, span, NULL)
                 || !EVP_DecryptUpdate(ctx, NULL, &len, aad + i * aad_len, (int)aad_len)
                 || !EVP_DecryptUpdate(ctx, dst, &len, span + NONCE_SIZE, width)
                 || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_SIZE,
                                        (void *)(span + NONCE_SIZE + width)) <= 0;
        if (failed)
            break;
        good[i] = EVP_DecryptFinal_ex(ctx, dst + len, &len) > 0;
        if (!good[i])  /* never hand out plaintext that failed authentication */
            memset(dst, 0, (size_t)width);
    }
    EVP_CIPHER_CTX_free(ctx);
    Py_END_ALLOW_THREADS
    if (failed) {
        PyErr_SetString(PyExc_RuntimeError, "libcrypto failed to decrypt with AES-256-GCM");
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&key);
    PyBuffer_Release(&aads);
    PyBuffer_Release(&sealed);
    PyBuffer_Release(&offsets);
    PyBuffer_Release(&lengths);
    PyBuffer_Release(&out);
    PyBuffer_Release(&out_offsets);
    PyBuffer_Release(&ok);
    return result;
}

static PyObject *sync_range(PyObject *self, PyObject *args)
{
    int fd, rc;
    long long offset, nbytes;
    unsigned int flags;
    if (!PyArg_ParseTuple(args, "iLLI", &fd, &offset, &nbytes, &flags))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    rc = sync_file_range(fd, (off_t)offset, (off_t)nbytes, flags);
    Py_END_ALLOW_THREADS
    if (rc != 0)
        return PyErr_SetFromErrno(PyExc_OSError);
    Py_RETURN_NONE;
}

/* ---- exports: finding the data of a copy buffer (blockforensics/formats/placement.py) ----
 *
 *   nonzero_runs(data, block, out) -> int
 *     data      a contiguous readable buffer
 *     block     bytes per block (> 0)
 *     out       writable int64 buffer with room for 2 * (len(data) // block + 1) entries
 *     Writes (start, stop) byte offsets of the runs of `data` that are not all-zero
 *     `block`-byte blocks (a partial last block is always kept), back to back, and
 *     returns how many runs; without the GIL.
 */

/* Whether the n bytes at p are all zero: 64 bytes at a time (most data blocks differ
 * from zero in their first bytes, so non-zero blocks cost a look at one line). */
static int all_zero(const unsigned char *p, size_t n)
{
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        uint64_t w[8];
        memcpy(w, p + i, 64);
        if (w[0] | w[1] | w[2] | w[3] | w[4] | w[5] | w[6] | w[7])
            return 0;
    }
    for (; i < n; i++)
        if (p[i])
            return 0;
    return 1;
}

static PyObject *nonzero_runs(PyObject *self, PyObject *args)
{
    Py_buffer data, out;
    Py_ssize_t block, runs = 0;
    if (!PyArg_ParseTuple(args, "y*nw*", &data, &block, &out))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t size = data.len, full = block > 0 ? size / block : 0;
    if (block <= 0) {
        PyErr_SetString(PyExc_ValueError, "block must be positive");
        goto done;
    }
    if (out.len / (Py_ssize_t)sizeof(int64_t) < 2 * (full + 1)) {
        PyErr_SetString(PyExc_ValueError, "out holds fewer than 2 * (blocks + 1) int64s");
        goto done;
    }
    Py_BEGIN_ALLOW_THREADS
    const unsigned char *p = data.buf;
    int64_t *o = out.buf;
    int open = 0;  /* inside a run */
    for (Py_ssize_t b = 0; b < full; b++) {
        int keep = !all_zero(p + b * block, (size_t)block);
        if (keep && !open)
            o[2 * runs] = (int64_t)(b * block);
        else if (!keep && open)
            o[2 * runs++ + 1] = (int64_t)(b * block);
        open = keep;
    }
    if (size > full * block && !open)  /* the partial last block */
        o[2 * runs] = (int64_t)(full * block);
    if (open || size > full * block)
        o[2 * runs++ + 1] = (int64_t)size;
    Py_END_ALLOW_THREADS
    result = PyLong_FromSsize_t(runs);
done:
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return result;
}

/* LZNT1 ([MS-XCA] 2.5): chunks of at most 4096 bytes, each with a 2-byte header (size of
 * the chunk minus 3 in bits 0-11, signature 3 in bits 12-14, compressed in bit 15; 0 ends
 * the data).  A compressed chunk is groups of a flag byte and 8 tokens, a clear bit a
 * literal byte, a set bit a 2-byte copy token whose split between offset and length
 * depends on how far into the chunk it is.  Returns the bytes written to out; stops at
 * the first thing that makes no sense (a damaged unit yields what came before). */
static Py_ssize_t lznt1(const unsigned char *src, Py_ssize_t n, unsigned char *dst,
                        Py_ssize_t cap)
{
    Py_ssize_t in = 0, out = 0;
    while (in + 2 <= n && out < cap) {
        unsigned header = src[in] | (unsigned)src[in + 1] << 8;
        if (header == 0 || (header >> 12 & 7) != 3)
            break;
        Py_ssize_t end = in + 3 + (Py_ssize_t)(header & 0xFFF), chunk = out;
        if (end > n)
            end = n;
        in += 2;
        if (!(header & 0x8000)) {  /* stored */
            Py_ssize_t len = end - in < cap - out ? end - in : cap - out;
            memcpy(dst + out, src + in, (size_t)len);
            out += len;
            in = end;
            continue;
        }
        while (in < end && out < cap) {
            unsigned flags = src[in++];
            for (int bit = 0; bit < 8 && in < end && out < cap; bit++, flags >>= 1) {
                if (!(flags & 1)) {
                    dst[out++] = src[in++];
                    continue;
                }
                if (in + 2 > end)
                    return out;
                unsigned token = src[in] | (unsigned)src[in + 1] << 8, shift = 12;
                in += 2;
                for (Py_ssize_t at = out - chunk - 1; at >= 0x10; at >>= 1)
                    shift--;
                Py_ssize_t offset = (Py_ssize_t)(token >> shift) + 1;
                Py_ssize_t length = (Py_ssize_t)(token & ((1u << shift) - 1)) + 3;
                if (offset > out - chunk)
                    return out;
                for (; length > 0 && out < cap; length--, out++)
                    dst[out] = dst[out - offset];
            }
        }
        in = end;
    }
    return out;
}

static PyObject *lznt1_decompress(PyObject *self, PyObject *args)
{
    Py_buffer data, out;
    if (!PyArg_ParseTuple(args, "y*w*", &data, &out))
        return NULL;
    Py_ssize_t written;
    Py_BEGIN_ALLOW_THREADS
    written = lznt1(data.buf, data.len, out.buf, out.len);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&data);
    PyBuffer_Release(&out);
    return PyLong_FromSsize_t(written);
}

/* ---- exports: a chain point's stored blocks copied, checked (blockforensics/image/storedcopy.py) ----
 *
 *   copy_checked(src_fd, dst_fd, block, unit, reads, read_bounds, digests, crc, writes,
 *                write_bounds, next, stop) -> (bad, short)
 *     Copies units of stored blocks from the file src_fd into the file dst_fd, without the
 *     GIL: each unit is read into the buffer `unit`, its blocks checked against their
 *     stored digests, then written.  Several calls on the same units may run at once (on
 *     threads of their own, each with its own `unit`), sharing `next`: they take the
 *     units in turn.
 *     block        bytes per stored block; unit k holds per = len(unit) // block of them,
 *                  blocks [k * per, (k + 1) * per), block i at byte (i % per) * block of
 *                  the unit
 *     reads        int64 triples (unit offset, file offset, nbytes): entries
 *                  read_bounds[k] to read_bounds[k + 1] (int64) fill unit k from src_fd
 *     digests      16 bytes per block: the stored digest it must match; empty: no check
 *     crc          a byte per block: nonzero where its digest is the CRC-32 form (zlib's
 *                  CRC-32 little-endian in bytes 0-3, then 12 zero bytes), else SHA-256/128
 *     writes       int64 triples (file offset, unit offset, nbytes): entries
 *                  write_bounds[k] to write_bounds[k + 1] are unit k's writes to dst_fd
 *     next         one int64, zero at first: the next unit to take
 *     stop         one int64: set to 1 by a call that fails; while it is set, no unit is
 *                  begun and none written (calls on other units may share it too)
 *     Nothing of a unit is written before all its blocks matched.  Returns (bad, short)
 *     of the units this call took: the index of the block that failed its check, or -1;
 *     the file offset of a read that met the end of src_fd, or -1.  A failed read or
 *     write raises OSError.
 */

/* Read n bytes at byte `at` of fd into p: 0, the errno of a failure, or -1 at the file's
 * end. */
static int read_fully(int fd, unsigned char *p, int64_t n, int64_t at)
{
    while (n > 0) {
        ssize_t got = pread(fd, p, (size_t)n, (off_t)at);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return got < 0 ? errno : -1;
        p += got, at += got, n -= got;
    }
    return 0;
}

/* Write n bytes of p at byte `at` of fd: 0 or the errno of a failure. */
static int write_fully(int fd, const unsigned char *p, int64_t n, int64_t at)
{
    while (n > 0) {
        ssize_t done = pwrite(fd, p, (size_t)n, (off_t)at);
        if (done < 0 && errno == EINTR)
            continue;
        if (done <= 0)
            return done < 0 ? errno : EIO;
        p += done, at += done, n -= done;
    }
    return 0;
}

/* Whether the stored block at p matches its 16-byte digest. */
static int block_matches(const unsigned char *p, size_t n, const unsigned char *digest,
                         int crc, EVP_MD_CTX *ctx)
{
    unsigned char want[EVP_MAX_MD_SIZE] = {0};
    if (crc) {
        uint32_t value = crc32_span(p, n);
        for (int b = 0; b < 4; b++)
            want[b] = (unsigned char)(value >> (8 * b));
    } else if (!EVP_DigestInit_ex2(ctx, sha256_md, NULL) || !EVP_DigestUpdate(ctx, p, n)
               || !EVP_DigestFinal_ex(ctx, want, NULL)) {
        return 0;
    }
    return memcmp(want, digest, 16) == 0;
}

/* True when bounds (units + 1 int64s) rise from 0 to n, and each of the n triples of
 * `items` has its unit offset (field unit_field) and length (field 2) inside a unit of
 * `unit` bytes and its file offset (the other field) >= 0; else a ValueError. */
static int units_valid(const int64_t *bounds, Py_ssize_t units, const int64_t *items,
                       Py_ssize_t n, int unit_field, Py_ssize_t unit, const char *what)
{
    if (bounds[0] != 0 || bounds[units] != n) {
        PyErr_Format(PyExc_ValueError, "%s bounds must run from 0 to their count", what);
        return 0;
    }
    for (Py_ssize_t k = 0; k < units; k++) {
        if (bounds[k + 1] < bounds[k]) {
            PyErr_Format(PyExc_ValueError, "%s bounds must not fall", what);
            return 0;
        }
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        const int64_t *item = items + 3 * i;
        if (item[unit_field] < 0 || item[2] < 0 || item[unit_field] > unit - item[2]
            || item[1 - unit_field] < 0) {
            PyErr_Format(PyExc_ValueError, "%s %zd lies outside its unit", what, i);
            return 0;
        }
    }
    return 1;
}

static PyObject *copy_checked(PyObject *self, PyObject *args)
{
    int src, dst;
    Py_ssize_t block;
    Py_buffer unit, reads, read_bounds, digests, crc, writes, write_bounds, next, stop;
    if (!PyArg_ParseTuple(args, "iinw*y*y*y*y*y*y*w*w*", &src, &dst, &block, &unit, &reads,
                          &read_bounds, &digests, &crc, &writes, &write_bounds, &next, &stop))
        return NULL;
    PyObject *result = NULL;
    const Py_ssize_t triple = 3 * (Py_ssize_t)sizeof(int64_t);
    Py_ssize_t units = read_bounds.len / (Py_ssize_t)sizeof(int64_t) - 1;
    Py_ssize_t per = block > 0 ? unit.len / block : 0, blocks = crc.len;
    if (per <= 0 || next.len != (Py_ssize_t)sizeof(int64_t)
        || stop.len != (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "the unit must hold a block, next and stop an int64");
        goto done;
    }
    if (read_bounds.len % (Py_ssize_t)sizeof(int64_t) || units < 0
        || write_bounds.len != read_bounds.len || reads.len % triple || writes.len % triple
        || (digests.len && digests.len != 16 * blocks) || (blocks + per - 1) / per != units) {
        PyErr_SetString(PyExc_ValueError,
                        "reads and writes must be int64 triples with units + 1 bounds each, "
                        "digests 16 bytes and crc a byte for each block of the units");
        goto done;
    }
    if (!units_valid(read_bounds.buf, units, reads.buf, reads.len / triple, 0,
                     per * block, "read")
        || !units_valid(write_bounds.buf, units, writes.buf, writes.len / triple, 1,
                        per * block, "write"))
        goto done;
    Py_ssize_t bad = -1, short_at = -1;
    int error = 0;
    Py_BEGIN_ALLOW_THREADS
    const int64_t *rb = read_bounds.buf, *wb = write_bounds.buf, *rd = reads.buf;
    const int64_t *wr = writes.buf;
    const unsigned char *digest = digests.len ? digests.buf : NULL, *is_crc = crc.buf;
    unsigned char *buffer = unit.buf;
    int64_t *taken = next.buf, *stopped = stop.buf;
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    error = ctx == NULL ? ENOMEM : 0;
    while (!error && bad < 0 && short_at < 0 && !__atomic_load_n(stopped, __ATOMIC_ACQUIRE)) {
        int64_t k = __atomic_fetch_add(taken, 1, __ATOMIC_RELAXED);
        if (k >= units)
            break;
        for (int64_t r = rb[k]; r < rb[k + 1] && !error; r++) {
            const int64_t *read = rd + 3 * r;
            error = read_fully(src, buffer + read[0], read[2], read[1]);
            if (error < 0) {  /* the file ends before the payload */
                short_at = (Py_ssize_t)read[1];
                error = 0;
                break;
            }
        }
        Py_ssize_t first = k * per, last = first + per < blocks ? first + per : blocks;
        for (Py_ssize_t i = first; i < last && digest && !error && short_at < 0; i++) {
            if (!block_matches(buffer + (i - first) * block, (size_t)block, digest + 16 * i,
                               is_crc[i], ctx)) {
                bad = i;
                break;
            }
        }
        if (error || bad >= 0 || short_at >= 0 || __atomic_load_n(stopped, __ATOMIC_ACQUIRE))
            break;
        for (int64_t w = wb[k]; w < wb[k + 1] && !error; w++) {
            const int64_t *write = wr + 3 * w;
            error = write_fully(dst, buffer + write[1], write[2], write[0]);
        }
    }
    if (error || bad >= 0 || short_at >= 0)
        __atomic_store_n(stopped, 1, __ATOMIC_RELEASE);
    EVP_MD_CTX_free(ctx);
    Py_END_ALLOW_THREADS
    if (error) {
        errno = error;
        PyErr_SetFromErrno(PyExc_OSError);
        goto done;
    }
    result = Py_BuildValue("nn", bad, short_at);
done:
    PyBuffer_Release(&unit);
    PyBuffer_Release(&reads);
    PyBuffer_Release(&read_bounds);
    PyBuffer_Release(&digests);
    PyBuffer_Release(&crc);
    PyBuffer_Release(&writes);
    PyBuffer_Release(&write_bounds);
    PyBuffer_Release(&next);
    PyBuffer_Release(&stop);
    return result;
}

static PyMethodDef methods[] = {
    {"sha256_spans", sha256_spans, METH_VARARGS,
     "sha256_spans(data, offsets, lengths, out): the first len(out)/n bytes of the SHA-256 "
     "of each of n spans (int64 byte offsets and lengths into data), written to out."},
    {"crc32_spans", crc32_spans, METH_VARARGS,
     "crc32_spans(data, offsets, lengths, out): the CRC-32 (zlib's) of each of n spans "
     "(int64 byte offsets and lengths into data), little-endian uint32s written to out."},
    {"aes256gcm_seal_spans", aes256gcm_seal_spans, METH_VARARGS,
     "aes256gcm_seal_spans(key, nonces, aads, data, offsets, lengths, out, out_offsets): "
     "nonce || AES-256-GCM ciphertext || tag of each of n spans of data, with its 12-byte "
     "nonce and associated data, written to out from out_offsets[i]."},
    {"aes256gcm_open_spans", aes256gcm_open_spans, METH_VARARGS,
     "aes256gcm_open_spans(key, aads, sealed, offsets, lengths, out, out_offsets, ok): the "
     "plaintext of each of n sealed spans into out from out_offsets[i], and 1 in ok where its "
     "tag verified (else 0 and zeros)."},
    {"sync_file_range", sync_range, METH_VARARGS,
     "sync_file_range(fd, offset, nbytes, flags): Linux's sync_file_range(2) without the GIL "
     "(flags: the SYNC_FILE_RANGE_* constants of this module); OSError on failure."},
    {"nonzero_runs", nonzero_runs, METH_VARARGS,
     "nonzero_runs(data, block, out): (start, stop) byte offsets of the runs of data that "
     "are not all-zero block-byte blocks (a partial last block is kept), written to out as "
     "int64 pairs; returns how many runs."},
    {"lznt1_decompress", lznt1_decompress, METH_VARARGS,
     "lznt1_decompress(data, out): LZNT1 data (an NTFS compression unit) decompressed into "
     "out, up to its length or the first malformed chunk; returns the bytes written."},
    {"copy_checked", copy_checked, METH_VARARGS,
     "copy_checked(src_fd, dst_fd, block, unit, reads, read_bounds, digests, crc, writes, "
     "write_bounds, next, stop): units of stored blocks read from src_fd into unit, checked "
     "against their digests and written to dst_fd, without the GIL; returns (bad block or "
     "-1, file offset of a short read or -1)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native",
    "Per-block SHA-256, CRC-32 and AES-256-GCM (seal and open) over a batch per call, and sync_file_range, without the GIL.", -1, methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
    crc32_init();
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
    aes256gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    if (sha256_md == NULL || aes256gcm == NULL) {
        PyErr_SetString(PyExc_ImportError, "libcrypto offers no SHA-256 or AES-256-GCM");
        return NULL;
    }
    PyObject *m = PyModule_Create(&module);
    if (m == NULL
        || PyModule_AddIntConstant(m, "SYNC_FILE_RANGE_WAIT_BEFORE", SYNC_FILE_RANGE_WAIT_BEFORE)
        || PyModule_AddIntConstant(m, "SYNC_FILE_RANGE_WRITE", SYNC_FILE_RANGE_WRITE)
        || PyModule_AddIntConstant(m, "SYNC_FILE_RANGE_WAIT_AFTER", SYNC_FILE_RANGE_WAIT_AFTER)) {
        Py_XDECREF(m);
        return NULL;
    }
    return m;
}
