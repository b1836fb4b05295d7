/* vsock-flood: opens N vsock connections to the host (CID 2) on ports nobody listens on,
 * PORT, PORT+1, …, one after the other, the way a hostile guest would try to make the VMM
 * do work or keep state. Prints one line:
 *   vsock-flood attempted=N connected=C refused=R
 * Built static by tests/build.rs and run in a container by the end-to-end tests. */
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

int main(int argc, char **argv) {
    unsigned n = argc > 1 ? (unsigned)strtoul(argv[1], NULL, 10) : 2000;
    unsigned port = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : 20000;
    unsigned connected = 0, refused = 0;
    for (unsigned i = 0; i < n; i++) {
        int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
        if (fd < 0) { refused++; continue; }
        struct timeval tv = { .tv_sec = 5 };
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
        struct sockaddr_vm addr = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_HOST, .svm_port = port + i };
        if (connect(fd, (struct sockaddr *)&addr, sizeof addr) == 0) connected++;
        else refused++;
        close(fd);
    }
    printf("vsock-flood attempted=%u connected=%u refused=%u\n", n, connected, refused);
    return 0;
}
