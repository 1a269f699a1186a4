/*
 * qubesd-query-fast: qubesd-query for scripts, where process start-up is the cost.
 *
 * Same arguments and exit codes as qubesd-query:
 *   qubesd-query-fast [-c PATH] [--base-dir DIR] [-e] [--fail] [--no-start]
 *                     SRC METHOD DEST [ARG]
 * The payload is read from stdin unless -e. Without --fail the reply is copied
 * to stdout as it comes, header byte included (admin.Events streams until
 * interrupted); with --fail a success reply loses its "0\0" and an exception
 * reply is printed to stderr as "TYPE: message", exit 1. No reply at all exits
 * 2, as does a usage error; a socket that cannot be reached exits 1. It never
 * starts a qubesd (--no-start is accepted for compatibility). The socket is
 * -c PATH, else DIR/run/qubesd.sock of --base-dir or $QUBES_BASE_DIR, else
 * /var/run/qubesd.sock (as qubes_core/paths.py lays them out).
 *
 * Plain C with libc only, built at install time by setup.py: a call costs the
 * exec, one connect and the copy, nothing more.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define PROGRAM "qubesd-query-fast"
#define BUFSIZE 65536
#define PRODUCTION_SOCKET "/var/run/qubesd.sock"

static const char usage[] =
    "usage: " PROGRAM " [-c PATH] [--base-dir DIR] [-e] [--fail] [--no-start] "
    "SRC METHOD DEST [ARG]\n";

static int write_all(int fd, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t done = write(fd, data, len);
        if (done < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += done;
        len -= (size_t)done;
    }
    return 0;
}

static ssize_t read_some(int fd, char *buf, size_t size)
{
    ssize_t got;
    do {
        got = read(fd, buf, size);
    } while (got < 0 && errno == EINTR);
    return got;
}

/* Print a whole exception reply ("2\0TYPE\0TRACEBACK\0MESSAGE\0") as "TYPE: message". */
static void report_exception(const char *data, size_t len)
{
    const char *fields[3] = {"", "", ""};
    size_t pos = 2;
    for (int i = 0; i < 3 && pos < len; i++) {
        fields[i] = data + pos;
        const char *end = memchr(data + pos, '\0', len - pos);
        if (end == NULL)
            break;
        pos = (size_t)(end - data) + 1;
    }
    fprintf(stderr, "%s: %s\n", fields[0], fields[2]);
}

/* Copy the reply to stdout as it comes; the exit code. */
static int copy_reply(int sock, int fail)
{
    char buf[BUFSIZE];
    size_t have = 0;
    while (have < 2) {
        ssize_t got = read_some(sock, buf + have, sizeof(buf) - have);
        if (got < 0 && errno == ECONNRESET) {
            fprintf(stderr, PROGRAM ": connection reset by qubesd\n");
            return 2;
        }
        if (got <= 0) {
            if (have == 0) {
                fprintf(stderr, PROGRAM ": no reply (call refused or malformed)\n");
                return 2;
            }
            break;
        }
        have += (size_t)got;
    }
    if (fail && have >= 2 && buf[0] == '2' && buf[1] == '\0') {
        size_t cap = sizeof(buf) * 2, len = have;
        char *whole = malloc(cap + 1);
        if (whole == NULL)
            return 2;
        memcpy(whole, buf, have);
        for (;;) {
            if (len == cap) {
                char *bigger = realloc(whole, cap * 2 + 1);
                if (bigger == NULL) {
                    free(whole);
                    return 2;
                }
                whole = bigger;
                cap *= 2;
            }
            ssize_t got = read_some(sock, whole + len, cap - len);
            if (got <= 0)
                break;
            len += (size_t)got;
        }
        whole[len] = '\0';
        report_exception(whole, len);
        free(whole);
        return 1;
    }
    size_t skip = (fail && have >= 2 && buf[0] == '0' && buf[1] == '\0') ? 2 : 0;
    if (write_all(STDOUT_FILENO, buf + skip, have - skip) < 0)
        return 1;
    for (;;) {
        ssize_t got = read_some(sock, buf, sizeof(buf));
        if (got < 0 && errno == ECONNRESET) {
            fprintf(stderr, PROGRAM ": connection reset by qubesd\n");
            return 2;
        }
        if (got <= 0)
            return 0;
        if (write_all(STDOUT_FILENO, buf, (size_t)got) < 0)
            return 1;
    }
}

int main(int argc, char **argv)
{
    /* A qubesd that closes early (refused call) or a reader that goes away gives EPIPE. */
    signal(SIGPIPE, SIG_IGN);
    const char *path = NULL, *base = NULL, *positional[4];
    int empty = 0, fail = 0, npos = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if ((!strcmp(arg, "-c") || !strcmp(arg, "--connect")) && i + 1 < argc)
            path = argv[++i];
        else if (!strncmp(arg, "--connect=", 10))
            path = arg + 10;
        else if (!strcmp(arg, "--base-dir") && i + 1 < argc)
            base = argv[++i];
        else if (!strncmp(arg, "--base-dir=", 11))
            base = arg + 11;
        else if (!strcmp(arg, "-e") || !strcmp(arg, "--empty"))
            empty = 1;
        else if (!strcmp(arg, "--fail"))
            fail = 1;
        else if (!strcmp(arg, "--no-start"))
            ;
        else if (arg[0] == '-' && arg[1] != '\0') {
            fputs(usage, stderr);
            return 2;
        } else if (npos < 4)
            positional[npos++] = arg;
        else {
            fputs(usage, stderr);
            return 2;
        }
    }
    if (npos < 3) {
        fputs(usage, stderr);
        return 2;
    }
    const char *src = positional[0], *method = positional[1], *dest = positional[2];
    const char *call_arg = npos == 4 ? positional[3] : "";

    char socket_path[PATH_MAX];
    if (base == NULL)
        base = getenv("QUBES_BASE_DIR");
    if (path != NULL) {
        snprintf(socket_path, sizeof(socket_path), "%s", path);
    } else if (base != NULL && base[0] != '\0') {
        char absolute[PATH_MAX];
        if (base[0] != '/' && getcwd(absolute, sizeof(absolute)) != NULL) {
            size_t n = strlen(absolute);
            snprintf(absolute + n, sizeof(absolute) - n, "/%s", base);
            base = absolute;
        }
        snprintf(socket_path, sizeof(socket_path), "%s/run/qubesd.sock", base);
    } else {
        snprintf(socket_path, sizeof(socket_path), "%s", PRODUCTION_SOCKET);
    }

    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    if (strlen(socket_path) >= sizeof(addr.sun_path)) {
        fprintf(stderr, PROGRAM ": socket path too long: %s\n", socket_path);
        return 1;
    }
    strcpy(addr.sun_path, socket_path);
    int sock = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (sock < 0 || connect(sock, (struct sockaddr *)&addr, sizeof(addr)) < 0) {
        fprintf(stderr, PROGRAM ": cannot connect to %s: %s\n", socket_path, strerror(errno));
        return 1;
    }

    /* METHOD[+ARG] SRC (keyword adminvm | name DEST) \0 PAYLOAD */
    int is_admin = !strcmp(dest, "dom0") || !strcmp(dest, "@adminvm");
    char header[4096];
    int n = snprintf(header, sizeof(header), "%s%s%s %s %s%s", method, call_arg[0] ? "+" : "",
                     call_arg, src, is_admin ? "keyword adminvm" : "name ",
                     is_admin ? "" : dest);
    if (n < 0 || (size_t)n >= sizeof(header)) {
        fprintf(stderr, PROGRAM ": request header too long\n");
        return 2;
    }
    /* qubesd may close early (a refused call): send what it takes, then read its reply. */
    if (write_all(sock, header, (size_t)n + 1) == 0 && !empty) {
        char buf[BUFSIZE];
        ssize_t got;
        while ((got = read_some(STDIN_FILENO, buf, sizeof(buf))) > 0)
            if (write_all(sock, buf, (size_t)got) < 0)
                break;
    }
    shutdown(sock, SHUT_WR);
    int code = copy_reply(sock, fail);
    close(sock);
    return code;
}
