/* Per-block primitives over a whole batch of blocks per call, without the GIL.
 *
 * Hashing or encrypting a volume block by block through Python costs a call,
 * objects and a GIL round trip per 4 KiB block, which halves the throughput of
 * SHA-256 and AES-GCM and keeps them on one core.  These functions take a
 * batch (byte spans or equal-sized rows of one buffer), run libcrypto over it
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
 *   aes256gcm_seal_rows(key, nonces, aads, rows, out) -> None
 *     key       32 bytes
 *     nonces    n * 12 bytes, one nonce per row (never reused under one key)
 *     aads      n * a bytes: each row's associated data (a = len(aads) / n)
 *     rows      n * w bytes: the plaintext rows (w = len(rows) / n)
 *     out       writable, n * (12 + w + 16) bytes: nonce || ciphertext || tag per row
 *
 *   aes256gcm_open_rows(key, aads, sealed, out, ok) -> None
 *     sealed    n * (12 + w + 16) bytes: nonce || ciphertext || tag per row
 *     aads      n * a bytes: each row's associated data
 *     out       writable, n * w bytes: the plaintext rows (zeros where a row fails)
 *     ok        writable, n bytes: 1 where the row authenticated, 0 where it did not
 *
 *   sync_file_range(fd, offset, nbytes, flags) -> None
 *     Linux's sync_file_range(2) (os has no binding), without the GIL: with
 *     SYNC_FILE_RANGE_WRITE alone it starts writing a range's dirty pages to disk
 *     and returns without waiting (blockforensics/fileio.py: early writeback).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <fcntl.h>
#include <limits.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <string.h>

#define NONCE_SIZE 12
#define TAG_SIZE 16
#define KEY_SIZE 32

static EVP_MD *sha256_md;
static EVP_CIPHER *aes256gcm;

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
    for (Py_ssize_t i = 0; i < n; i++) {
        if (start[i] < 0 || length[i] < 0 || start[i] > data.len - length[i]) {
            PyErr_Format(PyExc_ValueError, "span %zd lies outside the data", i);
            goto done;
        }
    }
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

static PyObject *aes256gcm_seal_rows(PyObject *self, PyObject *args)
{
    Py_buffer key, nonces, aads, rows, out;
    if (!PyArg_ParseTuple(args, "y*y*y*y*w*", &key, &nonces, &aads, &rows, &out))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = nonces.len / NONCE_SIZE;
    Py_ssize_t aad_len = n ? aads.len / n : 0, width = n ? rows.len / n : 0;
    if (key.len != KEY_SIZE) {
        PyErr_SetString(PyExc_ValueError, "the key must be 32 bytes");
        goto done;
    }
    if (nonces.len % NONCE_SIZE || aads.len != n * aad_len || rows.len != n * width
        || out.len != n * (NONCE_SIZE + width + TAG_SIZE) || width > INT_MAX || aad_len > INT_MAX) {
        PyErr_SetString(PyExc_ValueError,
                        "nonces, aads, rows and out must describe the same number of rows");
        goto done;
    }
    int failed;
    Py_BEGIN_ALLOW_THREADS
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    const unsigned char *nonce = nonces.buf, *aad = aads.buf, *row = rows.buf;
    unsigned char *dst = out.buf;
    int len;
    /* the key schedule is set up once; each row then only sets its nonce */
    failed = ctx == NULL || !EVP_EncryptInit_ex2(ctx, aes256gcm, key.buf, NULL, NULL);
    for (Py_ssize_t i = 0; i < n && !failed; i++) {
        unsigned char *sealed = dst + i * (NONCE_SIZE + width + TAG_SIZE);
        unsigned char *ciphertext = sealed + NONCE_SIZE;
        memcpy(sealed, nonce + i * NONCE_SIZE, NONCE_SIZE);
        failed = !EVP_EncryptInit_ex2(ctx, NULL, NULL, sealed, NULL)
                 || !EVP_EncryptUpdate(ctx, NULL, &len, aad + i * aad_len, (int)aad_len)
                 || !EVP_EncryptUpdate(ctx, ciphertext, &len, row + i * width, (int)width)
                 || !EVP_EncryptFinal_ex(ctx, ciphertext + len, &len)
                 || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_GET_TAG, TAG_SIZE,
                                        ciphertext + width) <= 0;
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
    PyBuffer_Release(&rows);
    PyBuffer_Release(&out);
    return result;
}

static PyObject *aes256gcm_open_rows(PyObject *self, PyObject *args)
{
    Py_buffer key, aads, sealed, out, ok;
    if (!PyArg_ParseTuple(args, "y*y*y*w*w*", &key, &aads, &sealed, &out, &ok))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t n = ok.len;
    Py_ssize_t aad_len = n ? aads.len / n : 0, width = n ? out.len / n : 0;
    if (key.len != KEY_SIZE) {
        PyErr_SetString(PyExc_ValueError, "the key must be 32 bytes");
        goto done;
    }
    if (aads.len != n * aad_len || out.len != n * width
        || sealed.len != n * (NONCE_SIZE + width + TAG_SIZE) || width > INT_MAX
        || aad_len > INT_MAX) {
        PyErr_SetString(PyExc_ValueError,
                        "aads, sealed, out and ok must describe the same number of rows");
        goto done;
    }
    int failed;
    Py_BEGIN_ALLOW_THREADS
    EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
    const unsigned char *aad = aads.buf, *src = sealed.buf;
    unsigned char *plain = out.buf, *good = ok.buf;
    int len;
    failed = ctx == NULL || !EVP_DecryptInit_ex2(ctx, aes256gcm, key.buf, NULL, NULL);
    for (Py_ssize_t i = 0; i < n && !failed; i++) {
        const unsigned char *row = src + i * (NONCE_SIZE + width + TAG_SIZE);
        unsigned char *dst = plain + i * width;
        failed = !EVP_DecryptInit_ex2(ctx, NULL, NULL, row, NULL)
                 || !EVP_DecryptUpdate(ctx, NULL, &len, aad + i * aad_len, (int)aad_len)
                 || !EVP_DecryptUpdate(ctx, dst, &len, row + NONCE_SIZE, (int)width)
                 || EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, TAG_SIZE,
                                        (void *)(row + NONCE_SIZE + width)) <= 0;
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
    PyBuffer_Release(&out);
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

static PyMethodDef methods[] = {
    {"sha256_spans", sha256_spans, METH_VARARGS,
     "sha256_spans(data, offsets, lengths, out): the first len(out)/n bytes of the SHA-256 "
     "of each of n spans (int64 byte offsets and lengths into data), written to out."},
    {"aes256gcm_seal_rows", aes256gcm_seal_rows, METH_VARARGS,
     "aes256gcm_seal_rows(key, nonces, aads, rows, out): nonce || AES-256-GCM ciphertext || "
     "tag of each of n equal-sized rows, with its 12-byte nonce and associated data."},
    {"aes256gcm_open_rows", aes256gcm_open_rows, METH_VARARGS,
     "aes256gcm_open_rows(key, aads, sealed, out, ok): the plaintext of each of n sealed rows "
     "into out, and 1 in ok where its tag verified (else 0 and a zeroed row)."},
    {"sync_file_range", sync_range, METH_VARARGS,
     "sync_file_range(fd, offset, nbytes, flags): Linux's sync_file_range(2) without the GIL "
     "(flags: the SYNC_FILE_RANGE_* constants of this module); OSError on failure."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_native",
    "Per-block SHA-256 and AES-256-GCM (seal and open) over a batch per call, and sync_file_range, without the GIL.", -1, methods,
};

PyMODINIT_FUNC PyInit__native(void)
{
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
