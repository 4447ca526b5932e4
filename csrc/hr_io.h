/*
 * hr_io.h — Lua-free tensor file formats: safetensors, NumPy .npy/.npz and the zip container.
 *
 * Every reader treats its input as hostile: lengths are checked against the bytes actually present
 * before anything is allocated, element counts are overflow-checked, and every failure is an
 * hr_fail() with a message naming the file (or zip member) and what is wrong. Writers produce
 * deterministic files and replace the destination atomically (temporary file, fsync, rename), so a
 * failed save never leaves a half-written file in place of good data.
 */
#ifndef HR_IO_H
#define HR_IO_H

#include "hr_core.h"

/* An ordered list of named tensors plus string metadata (safetensors' __metadata__). The list owns
 * one reference to each tensor and its strings. */
typedef struct {
    size_t n, cap;
    char **names;
    hr_tensor **tensors;
    size_t nmeta, meta_cap;
    char **meta_keys;
    char **meta_vals;
} hr_tensor_list;

void hr_tensor_list_init(hr_tensor_list *l);
void hr_tensor_list_free(hr_tensor_list *l);
/* Appends (name copied, t retained). */
int hr_tensor_list_add(hr_tensor_list *l, const char *name, hr_tensor *t);
/* Appends metadata (both strings copied). */
int hr_tensor_list_add_meta(hr_tensor_list *l, const char *key, const char *value);

/* Largest safetensors JSON header accepted (bytes), like the reference implementation. */
#define HR_SAFETENSORS_MAX_HEADER ((uint64_t)100 * 1000 * 1000)

/* Reads a safetensors file. Tensors whose bytes are aligned for their dtype are zero-copy views of one
 * shared private (copy-on-write) mapping of the file; the mapping is unmapped when the last tensor
 * referencing it is released. Misaligned tensors are copied. As with any mapping, truncating the file
 * in place while its tensors are alive is undefined; hero's own writers never do that (they rename a
 * new file over the old one, so existing mappings keep the old bytes). */
/* use_mmap: tensors view a private mapping of the file (zero-copy; the file must then not be
 * rewritten in place while they live); otherwise the file is read into one buffer they view.
 * verify: a file holding hero's CRC-32 list (HR_SAFETENSORS_CRC_KEY) has every tensor's bytes
 * checked against it (false: loaded unchecked). The list never reaches out's metadata. */
int hr_safetensors_load(const char *path, hr_tensor_list *out, bool use_mmap, bool verify);
/* Parses a safetensors image held in memory (tensors are copies, CRC-32 list checked). `what`
 * names it in errors. */
int hr_safetensors_parse(const void *buf, size_t len, const char *what, hr_tensor_list *out);
/* The metadata key under which the writer stores each tensor's CRC-32 of its bytes: 8 lowercase
 * hex digits per tensor, in name order, space-separated. Other readers see an ordinary metadata
 * entry; a caller may not set it. */
#define HR_SAFETENSORS_CRC_KEY "hero.crc32"
/* Writes the tensors (any strides; CPU only) and metadata, plus the CRC-32 list when there are
 * tensors. Header keys sorted by name; data laid out
 * by element size (largest first), then name, so every tensor is aligned for zero-copy loading. */
int hr_safetensors_save(const char *path, const hr_tensor_list *in);
/* safetensors dtype names ("F32", ...) of hero dtypes. */
const char *hr_safetensors_dtype_name(hr_dtype dt);

/* ------------------------------------------------------------------ NumPy .npy */

/* What a .npy header says, before any data is decoded. */
typedef struct {
    int version;        /* 1, 2 or 3 */
    char descr[32];     /* as written, e.g. "<f4" ("" for structured dtypes) */
    bool structured;    /* descr was a list (record dtype) */
    bool fortran_order;
    int ndim;
    int64_t shape[HR_MAX_DIMS];
    size_t data_offset; /* bytes before the array data */
} hr_npy_header;

/* The npy functions take `member`: NULL for a plain .npy file, or the zip member's name, which the
 * messages then name ("bad .npy magic string (inside zip member features.npy)"). The caller adds
 * the path. */
/* Parses the magic, version and header dict. */
int hr_npy_parse_header(const void *buf, size_t len, const char *member, hr_npy_header *h);
/* Maps a descr to a hero dtype; fails with "unsupported dtype '...'" and the reason. */
int hr_npy_dtype(const hr_npy_header *h, const char *member, hr_dtype *out);
/* Decodes the data after a parsed header into a new row-major tensor (Fortran order transposed). */
hr_tensor *hr_npy_decode(const void *buf, size_t len, const hr_npy_header *h, hr_dtype dt, const char *member);
/* parse_header + dtype + decode. */
hr_tensor *hr_npy_parse(const void *buf, size_t len, const char *member);
/* Serialises t (any strides) as a .npy v1.0 image (v2.0 when the header needs it); *out is malloc'd. */
int hr_npy_encode(const hr_tensor *t, unsigned char **out, size_t *outlen);

hr_tensor *hr_npy_load(const char *path);
int hr_npy_save(const char *path, const hr_tensor *t);

/* ------------------------------------------------------------------ zip (stored / deflate members) */

typedef struct {
    char *name;
    uint16_t method;       /* 0 stored, 8 deflate */
    uint16_t flags;
    uint32_t crc32;
    uint64_t csize, usize; /* compressed / uncompressed sizes from the central directory */
    uint64_t local_offset; /* of the local file header */
} hr_zip_entry;

typedef struct {
    const unsigned char *buf; /* borrowed: the whole archive */
    size_t len;
    size_t n;
    hr_zip_entry *entries;
} hr_zip;

/* Parses the central directory (zip64 records understood). The buffer must outlive the hr_zip. */
int hr_zip_open(hr_zip *z, const void *buf, size_t len, const char *what);
void hr_zip_close(hr_zip *z);
/* Index of the entry called name, or -1. */
long hr_zip_find(const hr_zip *z, const char *name);
/* Extracts entry i into a malloc'd buffer (inflating; sizes and CRC-32 checked). */
int hr_zip_extract(const hr_zip *z, size_t i, unsigned char **out, size_t *outlen);
/* Extracts entry i into dst, which holds cap bytes; cap must equal the member's size (checked before
 * anything is written). For callers that own the destination (tensor storages). */
int hr_zip_extract_to(const hr_zip *z, size_t i, void *dst, size_t cap);
/* Whether members are inflated (and CRC-32 computed) by libdeflate (HERO_WITH_LIBDEFLATE) rather
 * than zlib: the results and the errors are the same either way. */
bool hr_zip_has_libdeflate(void);
/* Writes a zip with members names[i] = data[i] (deflated when compress). Atomic replace of path. */
int hr_zip_write(const char *path, size_t n, const char *const *names, const unsigned char *const *data,
                 const size_t *lens, bool compress);

/* ------------------------------------------------------------------ .npz and feature files */

/* Every member whose name ends in ".npy", keyed by the name without ".npy", in archive order. */
int hr_npz_parse(const void *buf, size_t len, const char *what, hr_tensor_list *out);
int hr_npz_load(const char *path, hr_tensor_list *out);
int hr_npz_save(const char *path, const hr_tensor_list *in, bool compress, bool keep_order);
/* The same archive's bytes in a malloc'd buffer (*out, *outlen), for values stored elsewhere (LMDB). */
int hr_npz_encode(const hr_tensor_list *in, bool compress, bool keep_order, unsigned char **out, size_t *outlen);

/* An extractor feature file: an .npz whose member features.npy (or a bare .npy) holds a little-endian
 * float16/float32 2-D array [n, d]; returned in its stored dtype. */
hr_tensor *hr_features_load(const char *path);
/* The same rules on a file's bytes held in memory; `path` names it in errors, and a buffer that is
 * neither a zip nor starts like an .npy is still read as .npy when path ends in ".npy". */
hr_tensor *hr_features_parse(const void *buf, size_t len, const char *path);

/* ------------------------------------------------------------------ shared helpers (io_common.c) */

/* Reads a whole regular file into a malloc'd buffer ("no such file: 'path'" when missing). */
int hr_io_read_file(const char *path, unsigned char **out, size_t *len);
/* Writes bytes (gathered from n pieces) to path.tmp.<pid>, fsyncs, renames over path. */
int hr_io_write_atomic(const char *path, size_t n, const void *const *pieces, const size_t *lens);
/* CRC-32 (zip / zlib polynomial). */
uint32_t hr_crc32(const void *buf, size_t len);

#endif
