/* schedd-gate: the job's supervisor inside its scope (conmon's role).
 *
 * The compiled twin of gate.pl, same protocol, about ten times cheaper per job
 * (no interpreter to start). Built by setup.py when a C compiler is present;
 * the daemon falls back on gate.pl otherwise.
 *
 * Started by the daemon with posix_spawn, as root, with an empty environment:
 *   fd 3  release pipe: "go\n" once the daemon has put us in the job's scope and
 *         pinned our CPUs; EOF without it means "abort".
 *   fd 4  status file: the job's wait status and cgroup counters, so the result
 *         survives a daemon restart.
 *   fd 5  the job's environment, NUL-separated (never on argv: /proc/PID/cmdline
 *         is world-readable).
 *   argv  UID GID GROUPS CWD STDOUT STDERR ACCT -- COMMAND...
 * The child drops to the user before it opens anything, so output files and the
 * working directory are reached with the user's rights only. Setup failures exit
 * with systemd's codes (200 CHDIR, 203 EXEC, 209 STDOUT, 216 GROUP, 217 USER).
 *
 * Pooled gates (`schedd-gate --zygote`, fd 3 a SOCK_SEQPACKET socket to the daemon): the zygote
 * forks a gate for each message it reads, with CLONE_PARENT so the gate is the daemon's child
 * (it reaps it and reads its wait status, as for a spawned one), and hands the daemon the write
 * end of that gate's release pipe (SCM_RIGHTS, the gate's pid as the data). No exec and no
 * Python-side spawn per job: the pool is filled off the path from "scheduler decides" to
 * "StartTransientUnit". A pooled gate reads on its pipe (fd 3) first its job, before the scope
 * is started:
 *   "SGJ1" u32 LEN, then LEN bytes of NUL-terminated fields:
 *   STATUS_PATH UID GID GROUPS CWD STDOUT STDERR ACCT NARGS ARG... ENV...
 * then, exactly as above, "go\n" or EOF. It opens the status file itself (as root, O_NOFOLLOW,
 * mode 0600, in the daemon's root-only directory) when its job arrives, so an abort is recorded
 * there as for a spawned gate. EOF before a job: it was never used, it exits (125) silently.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sched.h>
#include <stdint.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

#define REL_FD 3
#define ST_FD 4
#define ENV_FD 5

static void fail(int code, const char *fmt, ...) {
    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* The message carries user text (paths, argv[0]): one status line stays one line. */
    static char line[sizeof "error=\n" + 4 * sizeof msg];
    size_t n = 0;
    n += (size_t)snprintf(line, sizeof line, "error=");
    for (const unsigned char *p = (const unsigned char *)msg; *p; p++) {
        if (*p >= 0x20 && *p < 0x7f && *p != '\\') line[n++] = (char)*p;
        else n += (size_t)snprintf(line + n, sizeof line - n, "\\x%02x", *p);
    }
    line[n++] = '\n';
    ssize_t w = write(ST_FD, line, n);
    (void)w;
    dprintf(2, "schedd: %s\n", msg);
    _exit(code);
}

/* Read a whole (small or large) file descriptor into a NUL-terminated buffer. */
static char *slurp_fd(int fd, size_t *len) {
    size_t cap = 8192, n = 0;
    char *buf = malloc(cap + 1);
    if (!buf) return NULL;
    for (;;) {
        if (n == cap) {
            char *nb = realloc(buf, cap * 2 + 1);
            if (!nb) { free(buf); return NULL; }
            buf = nb;
            cap *= 2;
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        n += (size_t)r;
    }
    buf[n] = 0;
    if (len) *len = n;
    return buf;
}

static char *slurp(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return NULL;
    char *s = slurp_fd(fd, NULL);
    close(fd);
    return s;
}

/* The number after `key ` in a "key value" file, or 0. */
static long long keyed(const char *path, const char *key) {
    char *s = slurp(path);
    long long v = 0;
    if (s) {
        size_t kl = strlen(key);
        for (char *p = s; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
            if (strncmp(p, key, kl) == 0 && p[kl] == ' ') { v = atoll(p + kl + 1); break; }
        }
        free(s);
    }
    return v;
}

static long long number(const char *path) {
    char *s = slurp(path);
    long long v = s ? atoll(s) : 0;
    free(s);
    return v;
}

/* An id as the daemon writes it: decimal digits only, below (id_t)-1 (which set*id reads as "leave
   unchanged"): anything else is refused, never read as 0 or wrapped. */
static int parse_id(const char *s, unsigned int *v) {
    size_t n = strlen(s);
    if (n == 0 || n > 10 || strspn(s, "0123456789") != n) return -1;
    unsigned long long x = strtoull(s, NULL, 10);
    if (x >= 0xffffffffULL) return -1;
    *v = (unsigned int)x;
    return 0;
}

/* Every descriptor above stderr closed on exec: the job gets 0, 1 and 2 and nothing of ours. */
static void close_the_rest(void) {
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3U, ~0U, 4U /* CLOSE_RANGE_CLOEXEC */) == 0) return;
#endif
    long max = sysconf(_SC_OPEN_MAX);
    for (long fd = 3; fd < (max > 0 && max < 65536 ? max : 65536); fd++) fcntl((int)fd, F_SETFD, FD_CLOEXEC);
}

static void child(char **argv, char **envp, const char *uid, const char *gid, const char *groups,
                  const char *cwd, const char *out, const char *err) {
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    signal(SIGHUP, SIG_DFL);
    signal(SIGPIPE, SIG_DFL);
    if (strcmp(uid, "-") != 0) {
        gid_t list[NGROUPS_MAX];
        int n = 0;
        unsigned int id;
        char *g = strdup(groups), *save = NULL;
        if (!g) fail(216, "out of memory");
        for (char *t = strtok_r(g, " ", &save); t; t = strtok_r(NULL, " ", &save)) {
            if (n == NGROUPS_MAX || parse_id(t, &id) != 0) fail(216, "bad group list %s", groups);
            list[n++] = (gid_t)id;
        }
        free(g);
        if (parse_id(gid, &id) != 0) fail(216, "bad gid %s", gid);
        gid_t gv = (gid_t)id;
        /* uid 0 comes as "-" (no change): a numeric one here is an ordinary user's. */
        if (parse_id(uid, &id) != 0 || id == 0) fail(217, "bad uid %s", uid);
        uid_t uv = (uid_t)id;
        if (setgroups((size_t)n, list) != 0) fail(216, "cannot set groups %s: %s", groups, strerror(errno));
        if (setresgid(gv, gv, gv) != 0) fail(216, "cannot set gid %s: %s", gid, strerror(errno));
        if (setresuid(uv, uv, uv) != 0) fail(217, "cannot set uid %s: %s", uid, strerror(errno));
        uid_t ru, eu, su;
        gid_t rg, eg, sg;
        if (getresuid(&ru, &eu, &su) != 0 || ru != uv || eu != uv || su != uv) fail(217, "cannot set uid %s", uid);
        if (getresgid(&rg, &eg, &sg) != 0 || rg != gv || eg != gv || sg != gv) fail(216, "cannot set gid %s", gid);
    }
    environ = envp;  /* execvp searches the job's PATH, not ours */
    int fd = open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
    if (fd < 0) fail(209, "cannot open %s for writing: %s", out, strerror(errno));
    if (dup2(fd, 1) < 0) fail(209, "cannot use %s as stdout: %s", out, strerror(errno));
    if (strcmp(err, out) == 0) {
        if (dup2(fd, 2) < 0) fail(209, "cannot duplicate stdout: %s", strerror(errno));
    } else {
        int efd = open(err, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0666);
        if (efd < 0) fail(209, "cannot open %s for writing: %s", err, strerror(errno));
        if (dup2(efd, 2) < 0) fail(209, "cannot use %s as stderr: %s", err, strerror(errno));
        close(efd);
    }
    close(fd);
    /* After the output is open (paths are absolute), so this error reaches the user's output. */
    if (chdir(cwd) != 0) fail(200, "cannot change to working directory %s: %s", cwd, strerror(errno));
    int saved = dup(ST_FD);  /* keep a way to report exec failure, closed on exec */
    close(ST_FD);
    if (saved >= 0) fcntl(saved, F_SETFD, FD_CLOEXEC);
    close_the_rest();
    execvp(argv[0], argv);
    int e = errno;
    if (saved >= 0) dup2(saved, ST_FD);
    fail(203, "cannot execute %s: %s", argv[0], strerror(e));
}

/* "go\n" on fd, or anything else (EOF: the daemon gave up or died): 1 if released. */
static int released(int fd) {
    char go[4] = {0};
    size_t got = 0;
    while (got < 3) {
        ssize_t r = read(fd, go + got, 3 - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) break;
        got += (size_t)r;
    }
    return got == 3 && memcmp(go, "go\n", 3) == 0;
}

/* Released: run the job, wait for it, record its end on ST_FD; returns the gate's exit code. */
static int run_job(char **cmd, char **envp, const char *uid, const char *gid, const char *groups,
                   const char *cwd, const char *out, const char *err, int acct) {
    signal(SIGTERM, SIG_IGN);
    signal(SIGINT, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    pid_t pid = fork();
    if (pid < 0) return 123;
    if (pid == 0) child(cmd, envp, uid, gid, groups, cwd, out, err);

    int status = 255 << 8;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) { status = 255 << 8; break; }
    }
    struct rusage ru;
    getrusage(RUSAGE_CHILDREN, &ru);
    long long cpu = (long long)ru.ru_utime.tv_sec * 1000000 + ru.ru_utime.tv_usec
                  + (long long)ru.ru_stime.tv_sec * 1000000 + ru.ru_stime.tv_usec;
    long long oom = 0, peak = 0;
    int others = 0;
    if (acct) {
        /* Only our own unit's cgroups (path ends in .scope), never a parent's counters. */
        char *cg = slurp("/proc/self/cgroup");
        char mem[1024] = "", cpuacct[1024] = "", named[1024] = "", v2[1024] = "";
        for (char *line = cg, *next; line && *line; line = next) {
            next = strchr(line, '\n');
            if (next) *next++ = 0;
            char *c1 = strchr(line, ':');
            char *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
            if (!c2) continue;
            *c2 = 0;
            const char *ctl = c1 + 1, *path = c2 + 1;
            size_t pl = strlen(path);
            if (pl < 6 || strcmp(path + pl - 6, ".scope") != 0 || pl >= 900) continue;
            if (*ctl == 0) snprintf(v2, sizeof v2, "%s", path);
            else if (strcmp(ctl, "name=systemd") == 0) snprintf(named, sizeof named, "%s", path);
            else {
                char tmp[256];
                snprintf(tmp, sizeof tmp, ",%s,", ctl);
                if (strstr(tmp, ",memory,")) snprintf(mem, sizeof mem, "%s", path);
                if (strstr(tmp, ",cpuacct,")) snprintf(cpuacct, sizeof cpuacct, "%s", path);
            }
        }
        free(cg);
        struct stat sb;
        const char *u = stat("/sys/fs/cgroup/unified/cgroup.procs", &sb) == 0 ? "/sys/fs/cgroup/unified"
                                                                                : "/sys/fs/cgroup";
        char p[2048];
        if (*mem) {
            snprintf(p, sizeof p, "/sys/fs/cgroup/memory%s/memory.oom_control", mem);
            oom = keyed(p, "oom_kill");
            snprintf(p, sizeof p, "/sys/fs/cgroup/memory%s/memory.max_usage_in_bytes", mem);
            peak = number(p);
        } else if (*v2) {
            snprintf(p, sizeof p, "%s%s/memory.events", u, v2);
            oom = keyed(p, "oom_kill");
            snprintf(p, sizeof p, "%s%s/memory.peak", u, v2);
            peak = number(p);
        }
        if (*cpuacct) {
            snprintf(p, sizeof p, "/sys/fs/cgroup/%s%s/cpuacct.usage",
                     stat("/sys/fs/cgroup/cpuacct", &sb) == 0 ? "cpuacct" : "cpu,cpuacct", cpuacct);
            long long ns = number(p);
            if (ns) cpu = ns / 1000;
        } else if (*v2) {
            snprintf(p, sizeof p, "%s%s/cpu.stat", u, v2);
            long long us = keyed(p, "usage_usec");
            if (us) cpu = us;
        }
        if (*named) snprintf(p, sizeof p, "/sys/fs/cgroup/systemd%s/cgroup.procs", named);
        else snprintf(p, sizeof p, "%s%s/cgroup.procs", u, v2);
        char *procs = slurp(p);
        for (char *q = procs; q && *q; q = strchr(q, '\n'), q = q ? q + 1 : NULL)
            if (*q != '\n' && atoi(q) != getpid()) others++;
        free(procs);
    } else {
        peak = (long long)ru.ru_maxrss * 1024;
    }
    dprintf(ST_FD, "status=%d\noom_kill=%lld\npeak=%lld\ncpu_usec=%lld\nstragglers=%d\nend=1\n",
            status, oom, peak, cpu, others);
    close(ST_FD);
    return WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status);
}

static int spawned_gate(int argc, char **argv) {
    if (argc < 10 || strcmp(argv[8], "--") != 0) {
        fprintf(stderr, "usage: schedd-gate UID GID GROUPS CWD STDOUT STDERR ACCT -- COMMAND...\n");
        return 124;
    }
    const char *uid = argv[1], *gid = argv[2], *groups = argv[3], *cwd = argv[4];
    const char *out = argv[5], *err = argv[6];
    int acct = strcmp(argv[7], "1") == 0;
    char **cmd = argv + 9;

    if (!released(REL_FD)) {
        dprintf(ST_FD, "aborted=1\n");  /* never ran: the daemon may start it again */
        return 121;
    }
    close(REL_FD);

    size_t elen = 0;
    char *ebuf = slurp_fd(ENV_FD, &elen);
    close(ENV_FD);
    size_t ecount = 0;
    for (size_t i = 0; ebuf && i < elen; i++) ecount += ebuf[i] == 0;
    char **envp = calloc(ecount + 2, sizeof(char *));
    if (!envp) return 123;
    size_t k = 0;
    for (size_t i = 0; ebuf && i < elen; i += strlen(ebuf + i) + 1)
        if (strchr(ebuf + i, '=')) envp[k++] = ebuf + i;
    envp[k] = NULL;
    return run_job(cmd, envp, uid, gid, groups, cwd, out, err, acct);
}


/* Exactly n bytes from fd; 0 at EOF or error. */
static int read_full(int fd, char *buf, size_t n) {
    size_t got = 0;
    while (got < n) {
        ssize_t r = read(fd, buf + got, n - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return 0;
        got += (size_t)r;
    }
    return 1;
}

#define MAX_JOB_BYTES (64u << 20)

/* A pooled gate: wait for a job on fd 3, then for its release, then run it. */
static int pooled_gate(void) {
    unsigned char hdr[8];
    if (!read_full(REL_FD, (char *)hdr, sizeof hdr)) return 125;  /* never used: the pool was closed */
    uint32_t len;
    memcpy(&len, hdr + 4, sizeof len);
    if (memcmp(hdr, "SGJ1", 4) != 0 || len == 0 || len > MAX_JOB_BYTES) return 120;
    char *buf = malloc((size_t)len + 1);
    if (!buf || !read_full(REL_FD, buf, len) || buf[len - 1] != 0) return 120;
    buf[len] = 0;
    size_t nf = 0;
    for (uint32_t i = 0; i < len; i++) nf += buf[i] == 0;
    char **f = calloc(nf + 1, sizeof(char *));
    if (!f) return 123;
    size_t k = 0;
    for (uint32_t i = 0; i < len; i += (uint32_t)strlen(buf + i) + 1) f[k++] = buf + i;
    f[k] = NULL;
    /* STATUS UID GID GROUPS CWD STDOUT STDERR ACCT NARGS ARG... ENV... */
    if (k < 10) return 120;
    char *end = NULL;
    unsigned long nargs = strtoul(f[8], &end, 10);
    if (*f[8] == 0 || *end != 0 || nargs < 1 || nargs > k - 9 || f[0][0] != '/') return 120;
    int sfd = open(f[0], O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (sfd < 0) return 122;
    if (sfd != ST_FD) {  /* on ST_FD without O_CLOEXEC, as a spawned gate has it: the child closes it itself */
        if (dup2(sfd, ST_FD) < 0) return 122;
        close(sfd);
    } else if (fcntl(sfd, F_SETFD, 0) != 0) {
        return 122;
    }
    char **cmd = f + 9;
    char **envp = f + 9 + nargs;
    char **argvv = calloc(nargs + 1, sizeof(char *));
    if (!argvv) return 123;
    memcpy(argvv, cmd, nargs * sizeof(char *));
    argvv[nargs] = NULL;
    size_t ne = 0;
    for (char **e = envp; *e; e++)
        if (strchr(*e, '=')) envp[ne++] = *e;
    envp[ne] = NULL;
    if (!released(REL_FD)) {
        dprintf(ST_FD, "aborted=1\n");  /* never ran: the daemon may start it again */
        return 121;
    }
    close(REL_FD);
    return run_job(argvv, envp, f[1], f[2], f[3], f[4], f[5], f[6], strcmp(f[7], "1") == 0);
}

/* The zygote: one pooled gate per message on fd 3, until EOF (the daemon is gone). */
static int zygote(void) {
    for (;;) {
        char req[16];
        ssize_t r = recv(REL_FD, req, sizeof req, 0);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) return 0;
        int p[2];
        if (pipe2(p, O_CLOEXEC) != 0) {
            int32_t none = -errno;
            (void)send(REL_FD, &none, sizeof none, MSG_NOSIGNAL);
            continue;
        }
        /* CLONE_PARENT: the daemon, not the zygote, is the gate's parent (it reaps it, gets its status). */
        pid_t pid = (pid_t)syscall(SYS_clone, CLONE_PARENT | SIGCHLD, NULL, NULL, NULL, NULL);
        if (pid == 0) {
            close(p[1]);
            if (dup2(p[0], REL_FD) < 0) _exit(120);  /* replaces the zygote's socket in this process */
            close(p[0]);
            setsid();
            _exit(pooled_gate());
        }
        close(p[0]);
        int32_t data = pid < 0 ? -errno : (int32_t)pid;
        struct iovec iov = {.iov_base = &data, .iov_len = sizeof data};
        union { char buf[CMSG_SPACE(sizeof(int))]; struct cmsghdr align; } u;
        struct msghdr m = {.msg_iov = &iov, .msg_iovlen = 1};
        if (pid > 0) {
            m.msg_control = u.buf;
            m.msg_controllen = sizeof u.buf;
            struct cmsghdr *c = CMSG_FIRSTHDR(&m);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(c), &p[1], sizeof(int));
        }
        ssize_t w;
        do w = sendmsg(REL_FD, &m, MSG_NOSIGNAL); while (w < 0 && errno == EINTR);
        close(p[1]);  /* the gate sees EOF (and exits unused) if the daemon never got it */
        if (w < 0) return 0;
    }
}

int main(int argc, char **argv) {
    if (argc == 2 && strcmp(argv[1], "--zygote") == 0) return zygote();
    return spawned_gate(argc, argv);
}
