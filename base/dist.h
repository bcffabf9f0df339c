/* dist.h — the group of processes a command runs in: one process, or the ranks of an MPI job started by
 * `mpirun -np N qlab ...`. base/dist.c is the only file that includes <mpi.h>; it is built with MPI when the
 * Makefile finds Open MPI's mpicc (QL_HAVE_MPI). Without MPI, or when the process was not started by a launcher
 * (no OMPI_COMM_WORLD_SIZE / PMIX_RANK / PMI_SIZE in the environment), every process is rank 0 of 1 and
 * nothing here talks to anyone: a plain `qlab sense` never initializes MPI.
 *
 * Messages are opaque bytes on one communicator (MPI_COMM_WORLD); MPI keeps the order of messages between
 * one pair of ranks, which the callers rely on. Ranks are assumed to share one byte order and struct layout
 * (one build of qlab on every node). */
#ifndef QL_DIST_H
#define QL_DIST_H

#include "base/ql_common.h"

/* Joins the job when a launcher started this process (MPI_Init_thread, funneled: only the main thread calls
 * MPI). QL_ERR_UNSUPPORTED with one line when a launcher asks for more than one rank and this build has no
 * MPI. Idempotent. */
ql_status ql_dist_init(int *argc, char ***argv);
/* MPI_Finalize when ql_dist_init joined a job (registered with atexit by ql_dist_init as well). */
void ql_dist_finalize(void);
/* Ends every rank of the job at once (MPI_Abort), or exit(code) in a single process. */
void ql_dist_abort(int code) __attribute__((noreturn));

int ql_dist_rank(void); /* 0 in a single process */
int ql_dist_size(void); /* 1 in a single process */
/* Ranks of this job on this node (OMPI_COMM_WORLD_LOCAL_SIZE), for splitting the cores; 1 when unknown. */
int ql_dist_local_size(void);
/* This rank's index among them (OMPI_COMM_WORLD_LOCAL_RANK), e.g. to pick a GPU; 0 when unknown. */
int ql_dist_local_rank(void);
/* "MPI (Open MPI 4.1.4)" or "no MPI in this build", for --help and messages. */
const char *ql_dist_about(void);

/* Blocking send of n bytes to rank `to` (buffered by MPI for small messages). */
ql_status ql_dist_send(int to, int tag, const void *buf, size_t n);
/* Whether a message with `tag` from any rank is waiting (does not block); its source and size. */
bool ql_dist_poll(int tag, int *source, size_t *n);
/* Receives the waiting message from `source` with `tag` into buf (cap bytes; a larger one is an error). */
ql_status ql_dist_recv(int source, int tag, void *buf, size_t cap, size_t *n);
/* Any number of bytes (sent in pieces of at most 1 GiB: MPI counts are int), received whole by ql_dist_recv_all
 * from that rank with that tag; a different size is an error. */
ql_status ql_dist_send_all(int to, int tag, const void *buf, size_t n);
ql_status ql_dist_recv_all(int source, int tag, void *buf, size_t n);
/* Rank `root`'s n bytes into every rank's buf; _all takes any size (pieces of at most 1 GiB). */
ql_status ql_dist_bcast(void *buf, size_t n, int root);
ql_status ql_dist_bcast_all(void *buf, size_t n, int root);

#endif
