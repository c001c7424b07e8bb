"""Training AGHMN: the authors' recipe (:mod:`.trainer`), distillation from teachers, post-hoc
calibration of the rare classes (:mod:`.calibration`), the metrics, and the contextual MiniLM
teacher (:mod:`.contextual_teacher`, options in :mod:`.contextual_config`).

Nothing is imported here: :mod:`aghmn_fast.cli` reads the torch-free option modules of this
package to build its parser, and importing the package must not import torch.
"""
