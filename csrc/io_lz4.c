/* io_lz4.c — lz4 frame decompression through liblz4's LZ4F API (optional: HERO_WITH_LZ4). */
#include <stdlib.h>
#include <string.h>

#include "hr_data.h"

#ifdef HERO_WITH_LZ4
#include <lz4frame.h>

bool hr_lz4_available(void) { return true; }

int hr_lz4_frame_decompress(const void *src, size_t len, size_t max_out, unsigned char **out, size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    if (len == 0) return hr_fail(HR_EFORMAT, "lz4: empty input is not an lz4 frame");
    const unsigned char *in = src;
    LZ4F_dctx *dctx;
    size_t r = LZ4F_createDecompressionContext(&dctx, LZ4F_VERSION);
    if (LZ4F_isError(r)) return hr_fail(HR_ENOMEM, "lz4: cannot create a decompression context: %s", LZ4F_getErrorName(r));

    /* Size the buffer from the first frame's declared content size when present. The limit is
     * checked against the bytes actually produced (one byte of slack beyond max_out tells "exactly
     * at the limit" from "over it"), so a frame that lies about its size cannot get past it. */
    size_t pos = 0;
    LZ4F_frameInfo_t info;
    memset(&info, 0, sizeof info);
    size_t hdr = len;
    r = LZ4F_getFrameInfo(dctx, &info, in, &hdr);
    if (LZ4F_isError(r)) {
        LZ4F_freeDecompressionContext(dctx);
        return hr_fail(HR_EFORMAT, "lz4: not a valid lz4 frame (%zu bytes): %s", len, LZ4F_getErrorName(r));
    }
    pos = hdr;
    size_t hard_cap = max_out == SIZE_MAX ? SIZE_MAX : max_out + 1;
    if (info.contentSize > (unsigned long long)max_out) {
        LZ4F_freeDecompressionContext(dctx);
        return hr_fail(HR_EFORMAT,
                       "lz4: frame declares %llu decompressed bytes, more than the limit of %zu bytes; refusing it "
                       "(a decompression bomb?); raise the limit if the data is genuine",
                       info.contentSize, max_out);
    }
    size_t cap = info.contentSize ? (size_t)info.contentSize : (len < hard_cap / 4 ? 4 * len : hard_cap);
    if (cap < 64) cap = hard_cap < 64 ? hard_cap : 64;
    if (cap == 0) cap = 1;
    unsigned char *buf = malloc(cap);
    if (!buf) {
        LZ4F_freeDecompressionContext(dctx);
        return hr_fail(HR_ENOMEM, "lz4: out of memory (%zu bytes)", cap);
    }
    size_t used = 0;
    size_t hint = r; /* 0 only once a frame is complete */
    while (pos < len) {
        if (used == cap) {
            if (cap >= hard_cap) break; /* over the limit: reported below */
            size_t ncap = cap > hard_cap / 2 ? hard_cap : 2 * cap;
            unsigned char *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                LZ4F_freeDecompressionContext(dctx);
                return hr_fail(HR_ENOMEM, "lz4: out of memory (%zu bytes)", ncap);
            }
            buf = nb;
            cap = ncap;
        }
        size_t src_n = len - pos, dst_n = cap - used;
        hint = LZ4F_decompress(dctx, buf + used, &dst_n, in + pos, &src_n, NULL);
        if (LZ4F_isError(hint)) {
            free(buf);
            LZ4F_freeDecompressionContext(dctx);
            return hr_fail(HR_EFORMAT, "lz4: corrupt frame data at input byte %zu of %zu: %s", pos, len,
                           LZ4F_getErrorName(hint));
        }
        pos += src_n;
        used += dst_n;
        if (src_n == 0 && dst_n == 0 && used < cap) {
            free(buf);
            LZ4F_freeDecompressionContext(dctx);
            return hr_fail(HR_EFORMAT, "lz4: decoder made no progress at input byte %zu of %zu", pos, len);
        }
    }
    /* Input exhausted: the decoder may still hold decoded bytes when the buffer filled up. Drain. */
    while (hint != 0 && used <= max_out) {
        if (used == cap) {
            if (cap >= hard_cap) break;
            size_t ncap = cap > hard_cap / 2 ? hard_cap : 2 * cap;
            unsigned char *nb = realloc(buf, ncap);
            if (!nb) {
                free(buf);
                LZ4F_freeDecompressionContext(dctx);
                return hr_fail(HR_ENOMEM, "lz4: out of memory (%zu bytes)", ncap);
            }
            buf = nb;
            cap = ncap;
        }
        size_t src_n = 0, dst_n = cap - used;
        hint = LZ4F_decompress(dctx, buf + used, &dst_n, in + pos, &src_n, NULL);
        if (LZ4F_isError(hint)) {
            free(buf);
            LZ4F_freeDecompressionContext(dctx);
            return hr_fail(HR_EFORMAT, "lz4: corrupt frame data: %s", LZ4F_getErrorName(hint));
        }
        used += dst_n;
        if (dst_n == 0) break; /* nothing buffered: the frame is incomplete */
    }
    LZ4F_freeDecompressionContext(dctx);
    if (used > max_out) {
        free(buf);
        return hr_fail(HR_EFORMAT,
                       "lz4: frame decompresses to more than the limit of %zu bytes; refusing it "
                       "(a decompression bomb?); raise the limit if the data is genuine",
                       max_out);
    }
    if (hint != 0) {
        free(buf);
        return hr_fail(HR_EFORMAT, "lz4: truncated frame: the input ends after %zu bytes, before the frame is complete",
                       len);
    }
    *out = buf;
    *outlen = used;
    return 0;
}

#else /* !HERO_WITH_LZ4 */

bool hr_lz4_available(void) { return false; }

int hr_lz4_frame_decompress(const void *src, size_t len, size_t max_out, unsigned char **out, size_t *outlen)
{
    *out = NULL;
    *outlen = 0;
    return hr_fail(HR_EINVAL, "hero was built without LZ4 support (install liblz4-dev and rebuild)");
}

#endif
