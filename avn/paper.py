"""The paper's reference results on real radiographs (SPEC §3), for tables that set ours beside them.

These are the AVN-net paper's numbers on its hospital's T-set; the project's own figures come
from the phantom and are not expected to match them one for one.
"""

from __future__ import annotations

# (task, figure) → value; figure names follow avn.training.runner.headline_figures.
PAPER_TSET = {
    ("detection", "f1@0.5"): 0.9908,
    ("detection", "f1@0.6"): 0.9761,
    ("detection", "f1@0.7"): 0.9527,
    ("view", "auc"): 0.9997,
    ("side", "auc"): 0.9995,
    ("notes", "macro_auc"): 0.9637,
    ("staging", "presence_auc"): 0.9735,
    ("staging", "auc_absence"): 0.9805,
    ("staging", "auc_II"): 0.9284,
    ("staging", "auc_III"): 0.9286,
    ("staging", "auc_IV"): 0.9923,
    ("staging", "staging_macro_f1"): 0.8369,  # with detection and N = 5 (0.7735 without detection)
}
