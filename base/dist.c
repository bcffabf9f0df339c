/* dist.c — the process group (dist.h): MPI when built with it and started by a launcher, else one process. The
 * only file that includes <mpi.h>, so the rest of qlab builds and runs the same without Open MPI. */
#include "base/dist.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifdef QL_HAVE_MPI
#include <mpi.h>
#endif

static int g_rank = 0, g_size = 1;
static bool g_joined, g_tried;

/* The size a launcher asked for (Open MPI, PMIx, MPICH's Hydra), 0 when no launcher started this process. */
static int launcher_size(void) {
    static const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "PMIX_SIZE", "PMI_SIZE"};
    for (size_t i = 0; i < QL_ARRAY_LEN(vars); i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return atoi(v) > 0 ? atoi(v) : 1;
    }
    return getenv("PMIX_RANK") ? 1 : 0; /* PMIx without a size variable: a launcher all the same */
}

ql_status ql_dist_init(int *argc, char ***argv) {
    if (g_tried) return QL_OK;
    g_tried = true;
    int want = launcher_size();
#ifdef QL_HAVE_MPI
    if (want <= 0) return QL_OK;
    int provided = 0;
    if (MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
        return ql_fail(QL_ERR_IO, "MPI_Init failed (started by mpirun with %d ranks)", want);
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    MPI_Comm_rank(MPI_COMM_WORLD, &g_rank);
    MPI_Comm_size(MPI_COMM_WORLD, &g_size);
    g_joined = true;
    atexit(ql_dist_finalize);
    return QL_OK;
#else
    (void)argc, (void)argv;
    if (want > 1)
        return ql_fail(QL_ERR_UNSUPPORTED,
                       "started by mpirun as one of %d ranks, but this qlab was built without MPI "
                       "(install openmpi-bin libopenmpi-dev: bash scripts/deps.sh, then rebuild)",
                       want);
    return QL_OK;
#endif
}

void ql_dist_finalize(void) {
#ifdef QL_HAVE_MPI
    int done = 0;
    if (g_joined && MPI_Finalized(&done) == MPI_SUCCESS && !done) MPI_Finalize();
#endif
    g_joined = false;
}

void ql_dist_abort(int code) {
#ifdef QL_HAVE_MPI
    if (g_joined && g_size > 1) {
        fflush(NULL);
        MPI_Abort(MPI_COMM_WORLD, code);
    }
#endif
    exit(code);
}

int ql_dist_rank(void) { return g_rank; }
int ql_dist_size(void) { return g_size; }

int ql_dist_local_size(void) {
    const char *v = getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
    int n = v ? atoi(v) : 1;
    return n > 0 ? n : 1;
}

int ql_dist_local_rank(void) {
    const char *v = getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    int n = v ? atoi(v) : 0;
    return n > 0 ? n : 0;
}

const char *ql_dist_about(void) {
#ifdef QL_HAVE_MPI
    static char about[MPI_MAX_LIBRARY_VERSION_STRING + 8];
    if (!*about) {
        char lib[MPI_MAX_LIBRARY_VERSION_STRING] = "";
        int n = 0;
        MPI_Get_library_version(lib, &n);
        lib[strcspn(lib, ",\n")] = 0; /* "Open MPI v4.1.4, package: ..." -> "Open MPI v4.1.4" */
        snprintf(about, sizeof about, "MPI (%s)", lib);
    }
    return about;
#else
    return "no MPI in this build";
#endif
}

#ifdef QL_HAVE_MPI
static ql_status mpi_err(int rc, const char *what) {
    char msg[MPI_MAX_ERROR_STRING] = "";
    int n = 0;
    MPI_Error_string(rc, msg, &n);
    return ql_fail(QL_ERR_IO, "MPI %s failed on rank %d: %s", what, g_rank, msg);
}
#endif

ql_status ql_dist_send(int to, int tag, const void *buf, size_t n) {
#ifdef QL_HAVE_MPI
    if (g_joined && n <= (size_t)0x7fffffff) {
        int rc = MPI_Send(buf, (int)n, MPI_BYTE, to, tag, MPI_COMM_WORLD);
        return rc == MPI_SUCCESS ? QL_OK : mpi_err(rc, "send");
    }
#endif
    (void)buf, (void)n, (void)tag;
    return ql_fail(QL_ERR_ARG, "no rank %d to send to (a single process, or a message over 2 GiB)", to);
}

bool ql_dist_poll(int tag, int *source, size_t *n) {
#ifdef QL_HAVE_MPI
    if (g_joined) {
        int flag = 0, count = 0;
        MPI_Status st;
        if (MPI_Iprobe(MPI_ANY_SOURCE, tag, MPI_COMM_WORLD, &flag, &st) != MPI_SUCCESS || !flag) return false;
        MPI_Get_count(&st, MPI_BYTE, &count);
        *source = st.MPI_SOURCE;
        *n = (size_t)count;
        return true;
    }
#endif
    (void)tag, (void)source, (void)n;
    return false;
}

ql_status ql_dist_recv(int source, int tag, void *buf, size_t cap, size_t *n) {
#ifdef QL_HAVE_MPI
    if (g_joined) {
        MPI_Status st;
        int count = 0;
        int rc = MPI_Recv(buf, (int)QL_MIN(cap, (size_t)0x7fffffff), MPI_BYTE, source, tag, MPI_COMM_WORLD, &st);
        if (rc != MPI_SUCCESS) return mpi_err(rc, "receive");
        MPI_Get_count(&st, MPI_BYTE, &count);
        *n = (size_t)count;
        return QL_OK;
    }
#endif
    (void)buf, (void)cap, (void)tag, (void)n;
    return ql_fail(QL_ERR_ARG, "no rank %d to receive from (a single process)", source);
}

enum { PIECE = 1 << 30 };

ql_status ql_dist_send_all(int to, int tag, const void *buf, size_t n) {
    const char *p = buf;
    do { /* an empty buffer is one empty message, so the receiver's count matches */
        size_t k = n < PIECE ? n : PIECE;
        ql_status st = ql_dist_send(to, tag, p, k);
        if (st) return st;
        p += k, n -= k;
    } while (n);
    return QL_OK;
}

ql_status ql_dist_recv_all(int source, int tag, void *buf, size_t n) {
    char *p = buf;
    do {
        size_t k = n < PIECE ? n : PIECE, got = 0;
        ql_status st = ql_dist_recv(source, tag, p, k, &got);
        if (st) return st;
        if (got != k)
            return ql_fail(QL_ERR_IO, "MPI: rank %d sent %zu bytes where %zu were expected (another build of qlab?)",
                           source, got, k);
        p += k, n -= k;
    } while (n);
    return QL_OK;
}

ql_status ql_dist_bcast(void *buf, size_t n, int root) {
#ifdef QL_HAVE_MPI
    if (g_joined && g_size > 1) {
        if (n > (size_t)0x7fffffff) return ql_fail(QL_ERR_ARG, "MPI broadcast of %zu bytes (over 2 GiB)", n);
        int rc = MPI_Bcast(buf, (int)n, MPI_BYTE, root, MPI_COMM_WORLD);
        return rc == MPI_SUCCESS ? QL_OK : mpi_err(rc, "broadcast");
    }
#endif
    (void)buf, (void)n, (void)root;
    return QL_OK; /* one process: it already has the bytes */
}

ql_status ql_dist_bcast_all(void *buf, size_t n, int root) {
    for (char *p = buf; n;) {
        size_t k = n < PIECE ? n : PIECE;
        ql_status st = ql_dist_bcast(p, k, root);
        if (st) return st;
        p += k, n -= k;
    }
    return QL_OK;
}
