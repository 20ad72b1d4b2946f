/* The hot loop of a FUSE-over-io_uring worker (blobfs/fuse/uringsession.py), in C.
 *
 * Why C: every Python open() sends the daemon an ioctl (isatty(): TCGETS), which the kernel
 * forwards on every open and never stops forwarding (fs/fuse/ioctl.c keeps no "not
 * implemented" flag, unlike OPEN and FLUSH). Answering it is ENOSYS and nothing else, but the
 * Python loop spent ~4.5 us of CPU per request on it, as much as the kernel's own round trip;
 * with eight readers on two CPUs that CPU is taken from the readers. This loop answers those
 * requests without entering Python and hands every other request (and every error) back.
 *
 * Plain C, no Python.h: loaded through ctypes, built by setuptools as an optional extension.
 * Without it, uringsession.py runs the same loop in Python. The ring layout is the kernel's
 * (include/uapi/linux/io_uring.h, include/uapi/linux/fuse.h); blobfs/fuse/uring.py sets the
 * ring up and fills struct blobfs_ring.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define SYS_IO_URING_ENTER 426
#define IORING_ENTER_GETEVENTS 1u
#define IORING_OP_URING_CMD 46
#define FUSE_IO_URING_CMD_COMMIT_AND_FETCH 2
#define FUSE_IOCTL 39
#define SQE_SIZE 128
#define ENT_AT 256 /* struct fuse_uring_ent_in_out, after in_out[128] and op_in[128] */

struct blobfs_ring {
    int32_t ring_fd, fuse_fd;
    uint32_t *sq_head, *sq_tail, sq_mask;
    uint8_t *sqes;
    uint32_t *cq_head, *cq_tail, cq_mask;
    uint8_t *cqes;              /* struct io_uring_cqe: user_data u64, res s32, flags u32 */
    uint32_t n_entries;
    uint8_t **headers;          /* each entry's struct fuse_uring_req_header page */
    uint64_t *commit_ids;       /* per entry: the id of the request its buffers hold */
    uint16_t *qids;
    uint64_t answered;          /* requests answered here, for -o debug */
    uint64_t user_data;         /* out: the completion handed back */
    int32_t res;
};

static void queue_commit(struct blobfs_ring *r, uint32_t k, uint64_t commit_id)
{
    uint32_t tail = *r->sq_tail;
    uint8_t *sqe = r->sqes + (size_t)(tail & r->sq_mask) * SQE_SIZE;
    /* The bytes past the command area stay zero, as the kernel mapped them and as
     * uring.py's writer leaves them. */
    memset(sqe, 0, 80);
    sqe[0] = IORING_OP_URING_CMD;
    memcpy(sqe + 4, &r->fuse_fd, 4);
    uint32_t cmd_op = FUSE_IO_URING_CMD_COMMIT_AND_FETCH;
    memcpy(sqe + 8, &cmd_op, 4);
    uint64_t user_data = k;
    memcpy(sqe + 32, &user_data, 8);
    /* struct fuse_uring_cmd_req at the command area (offset 48): flags, commit_id, qid */
    memcpy(sqe + 56, &commit_id, 8);
    memcpy(sqe + 64, &r->qids[k], 2);
    __atomic_store_n(r->sq_tail, tail + 1, __ATOMIC_RELEASE);
}

/* Answer ioctl requests until a completion needs Python: then its user_data and res are in
 * r->user_data and r->res, and 0 is returned. -EINTR when a signal came first (Python looks
 * at its stop flag), another negative errno when io_uring_enter failed. Commits queued by
 * Python or by this loop are submitted when the completion queue runs dry. */
int blobfs_uring_next(struct blobfs_ring *r)
{
    for (;;) {
        uint32_t head = *r->cq_head;
        while (head != __atomic_load_n(r->cq_tail, __ATOMIC_ACQUIRE)) {
            uint8_t *cqe = r->cqes + (size_t)(head & r->cq_mask) * 16;
            uint64_t k;
            int32_t res;
            memcpy(&k, cqe, 8);
            memcpy(&res, cqe + 8, 4);
            __atomic_store_n(r->cq_head, ++head, __ATOMIC_RELEASE);
            uint8_t *hdr = k < r->n_entries ? r->headers[k] : NULL;
            uint32_t opcode = 0;
            if (hdr && res >= 0)
                memcpy(&opcode, hdr + 4, 4);
            if (opcode != FUSE_IOCTL) {
                r->user_data = k;
                r->res = res;
                return 0;
            }
            uint64_t unique, commit_id;
            memcpy(&unique, hdr + 8, 8);
            memcpy(&commit_id, hdr + ENT_AT + 8, 8);
            /* struct fuse_out_header over the request's in header: len, error, unique */
            uint32_t len = 16, payload_sz = 0;
            int32_t error = -ENOSYS;
            memcpy(hdr, &len, 4);
            memcpy(hdr + 4, &error, 4);
            memcpy(hdr + 8, &unique, 8);
            memcpy(hdr + ENT_AT + 16, &payload_sz, 4);
            r->commit_ids[k] = commit_id;
            r->answered++;
            queue_commit(r, (uint32_t)k, commit_id);
        }
        uint32_t to_submit = *r->sq_tail - __atomic_load_n(r->sq_head, __ATOMIC_ACQUIRE);
        long n = syscall(SYS_IO_URING_ENTER, r->ring_fd, to_submit, 1, IORING_ENTER_GETEVENTS, NULL, 0);
        if (n < 0)
            return -errno;
    }
}
