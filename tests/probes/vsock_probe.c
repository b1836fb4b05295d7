/* vsock-probe: tries to talk to the guest agent from inside a container, the way a hostile
 * process would. For each CID (VMADDR_CID_LOCAL, the guest's own, VMADDR_CID_ANY) and each
 * agent port (1024 control, 1025 streams, 1026), it connects and, when the connection is
 * accepted, sends the agent protocol's Hello frame and waits for an answer. One line each:
 *   reached CID PORT          the agent answered (a wall-3 escape)
 *   closed CID PORT           connected, but closed without an answer
 *   refused CID PORT ERRNO    the connection was not made
 * Built static by tests/build.rs and run in a container by the end-to-end tests. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static const char *try_port(unsigned cid, unsigned port, int *err) {
    int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (fd < 0) { *err = errno; return "refused"; }
    struct timeval tv = { .tv_sec = 3 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    struct sockaddr_vm addr = { .svm_family = AF_VSOCK, .svm_cid = cid, .svm_port = port };
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) {
        *err = errno;
        close(fd);
        return "refused";
    }
    static const char body[] = "{\"type\":\"hello\",\"version\":1}";
    unsigned char frame[4 + sizeof body - 1];
    unsigned len = sizeof body - 1;
    frame[0] = len >> 24; frame[1] = len >> 16; frame[2] = len >> 8; frame[3] = len;
    memcpy(frame + 4, body, len);
    const char *result = "closed";
    if (write(fd, frame, sizeof frame) == (ssize_t)sizeof frame) {
        unsigned char answer[64];
        if (read(fd, answer, sizeof answer) > 0) result = "reached";
    }
    close(fd);
    return result;
}

int main(void) {
    const unsigned cids[] = { VMADDR_CID_LOCAL, 3, VMADDR_CID_ANY };
    const unsigned ports[] = { 1024, 1025, 1026 };
    for (unsigned i = 0; i < 3; i++) {
        for (unsigned j = 0; j < 3; j++) {
            int err = 0;
            const char *r = try_port(cids[i], ports[j], &err);
            if (err) printf("%s %u %u %d\n", r, cids[i], ports[j], err);
            else printf("%s %u %u\n", r, cids[i], ports[j]);
            fflush(stdout);
        }
    }
    return 0;
}
