/* tui_sense.h — the bridge between the sensitivity module (sensitivity/sense.h, allocate.h) and the
 * small table the Plan and Auto screens draw (ql_tui_sense in app.h): candidates as plan columns,
 * errors at one level in plan-row order, and the Auto screen's constraints as allocation rules.
 * Main thread only; the measuring and solving themselves run as jobs (tui/work.c). */
#ifndef QL_TUI_TUI_SENSE_H
#define QL_TUI_TUI_SENSE_H

#include "tui/app.h"

struct ql_sense;

/* The level a new measurement uses: the one chosen with l, else KLD when a calibration set is built
 * (per-tensor KLD adds up to a prediction of the plan's KLD; the output error above 1B parameters,
 * where a forward pass per cell costs too much), else KLD on the evaluation text's tokens when there is
 * one (no statistics: the output level is not available), else the weight error. */
int ql_tui_sense_level(const ql_tui_app *a);
/* The Preview screen's text is a readable, non-empty file. */
bool ql_tui_eval_text_usable(const ql_tui_app *a);
const char *ql_tui_level_label(int level);
/* Rebuilds a->sense from a->qsense at a->sense_level (or the highest level every cell has), and makes
 * the plan's candidate columns the measured candidates. */
void ql_tui_sense_refresh(ql_tui_app *a);
/* "q4_k" or "int4_g128+gptq" for plan candidate k. */
void ql_tui_cand_spec(const ql_tui_app *a, int k, char *buf, size_t cap);
/* Allocation rules for the Auto constraints and the pinned rows (strings owned by *rules; free with
 * ql_tui_rules_free). Returns the count. */
int ql_tui_rules(const ql_tui_app *a, char ***rules);
void ql_tui_rules_free(char **rules, int n);

#endif
