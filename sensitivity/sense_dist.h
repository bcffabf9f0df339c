/* sense_dist.h — one sensitivity measurement (sense.h) shared by the ranks of an MPI job (base/dist.h):
 * `mpirun -np N qlab sense ...`. Every rank loads the model and calibration and builds the same skeleton; rank 0
 * alone reads and writes the .qss. Cells are independent, so each unmeasured cell has one owner, fixed by its
 * position (docs/sensitivity.md "Several processes"); a rank measures its own cells exactly as one process
 * would and sends each result to rank 0 as soon as it is finished. Rank 0 fills them into its ql_sense between
 * its own cells, so its periodic checkpoints hold every cell finished anywhere: when a rank dies, the file has
 * what was measured up to the last checkpoint and re-running the command resumes from it. The numbers of a cell
 * do not depend on which rank measured it, so the file equals a single process's. */
#ifndef QL_SENSE_DIST_H
#define QL_SENSE_DIST_H

#include "sensitivity/sense.h"

typedef struct ql_sense_dist ql_sense_dist;

/* Collective: every rank calls it with its skeleton after rank 0 resumed its own from the file. rank0_status
 * is rank 0's verdict so far (a refused resume): when it is not QL_OK every rank returns it (rank 0's message
 * stays in ql_last_error on rank 0). Then rank 0's list of unmeasured cells reaches every rank and each gets
 * its share; *share is filled for ql_sense_opts.share. *cand_batch and *seq_batch become rank 0's (the batch
 * shape of ql_sense_opts), and a tensor's candidates go to ranks in groups of *cand_batch by index, the groups
 * ql_sense_measure runs as one pass. A single process gets a share that owns every cell. */
ql_status ql_sense_dist_begin(ql_sense *s, int level, ql_status rank0_status, int *cand_batch, int *seq_batch,
                              ql_sense_dist **out,
                              ql_sense_share *share);
/* After this rank's ql_sense_measure (and _act) returned st. A worker tells rank 0 it has ended (with st's
 * message) and returns st. Rank 0 takes in every cell until each rank has ended, saving `path` every
 * interval_s seconds and at the end (s->seconds: wall time on rank 0), and returns st, else the first worker's
 * failure ("rank N: ..."), else QL_ERR_CANCELLED when the progress is cancelled while it waits. */
ql_status ql_sense_dist_end(ql_sense_dist *d, ql_sense *s, ql_status st, const char *path, double interval_s,
                            const ql_progress *progress);
void ql_sense_dist_free(ql_sense_dist *d);

#endif
