/* Frames over file descriptors.
 *
 * Header, 32 bytes, little-endian:
 *   0 u32 magic "PRTF"   4 u16 version   6 u16 kind
 *   8 u64 job id        16 u64 payload length   24 u64 XXH3-64(payload)
 * followed by the payload. The reader validates the header before it
 * allocates anything, so a corrupt length can never cause a huge malloc. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/uio.h>
#include <unistd.h>

#include "prt_core.h"

/* writev until everything is out; a pipe may take only part of it. */
static int write_all_iov(int fd, struct iovec *iov, int iovcnt)
{
    while (iovcnt > 0) {
        ssize_t n = writev(fd, iov, iovcnt);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        size_t left = (size_t)n;
        while (iovcnt > 0 && left >= iov->iov_len) {
            left -= iov->iov_len;
            iov++;
            iovcnt--;
        }
        if (iovcnt > 0) {
            iov->iov_base = (uint8_t *)iov->iov_base + left;
            iov->iov_len -= left;
        }
    }
    return 0;
}

int prt_write_frame(int fd, uint16_t kind, uint64_t job_id,
                    const uint8_t *payload, size_t len)
{
    uint8_t hdr[PRT_FRAME_HEADER_SIZE];
    prt_put32(hdr, PRT_FRAME_MAGIC);
    prt_put16(hdr + 4, PRT_FRAME_VERSION);
    prt_put16(hdr + 6, kind);
    prt_put64(hdr + 8, job_id);
    prt_put64(hdr + 16, (uint64_t)len);
    prt_put64(hdr + 24, prt_xxh3_64(payload, len));

    struct iovec iov[2];
    iov[0].iov_base = hdr;
    iov[0].iov_len = sizeof(hdr);
    iov[1].iov_base = (void *)payload;
    iov[1].iov_len = len;
    return write_all_iov(fd, iov, len ? 2 : 1);
}

/* Read exactly len bytes. *got tells how many arrived before EOF. */
static int read_exact(int fd, uint8_t *buf, size_t len, size_t *got)
{
    size_t done = 0;
    while (done < len) {
        size_t want = len - done;
        if (want > (size_t)1 << 30)
            want = (size_t)1 << 30; /* read() caps a single call anyway */
        ssize_t n = read(fd, buf + done, want);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            *got = done;
            return -errno;
        }
        if (n == 0)
            break;
        done += (size_t)n;
    }
    *got = done;
    return 0;
}

int prt_read_header(int fd, uint64_t max_len, prt_frame_header *out)
{
    uint8_t hdr[PRT_FRAME_HEADER_SIZE];
    size_t got = 0;
    int rc = read_exact(fd, hdr, sizeof(hdr), &got);
    if (rc < 0)
        return rc;
    if (got == 0)
        return PRT_E_EOF;
    if (got < sizeof(hdr))
        return PRT_E_TRUNCATED;
    if (prt_get32(hdr) != PRT_FRAME_MAGIC)
        return PRT_E_MAGIC;
    out->version = prt_get16(hdr + 4);
    if (out->version != PRT_FRAME_VERSION)
        return PRT_E_VERSION;
    out->kind = prt_get16(hdr + 6);
    out->job_id = prt_get64(hdr + 8);
    out->length = prt_get64(hdr + 16);
    out->checksum = prt_get64(hdr + 24);
    if (out->length > max_len || out->length > (uint64_t)SIZE_MAX)
        return PRT_E_TOO_LARGE;
    return 0;
}

int prt_read_payload(int fd, uint8_t *buf, size_t len, uint64_t checksum)
{
    size_t got = 0;
    int rc = read_exact(fd, buf, len, &got);
    if (rc < 0)
        return rc;
    if (got < len)
        return PRT_E_TRUNCATED;
    if (prt_xxh3_64(buf, len) != checksum)
        return PRT_E_CHECKSUM;
    return 0;
}

/* Lets a worker die with its sidecar; prctl has no Python binding. */
int prt_set_pdeathsig(int sig)
{
    if (prctl(PR_SET_PDEATHSIG, (unsigned long)sig, 0UL, 0UL, 0UL) != 0)
        return -errno;
    return 0;
}
