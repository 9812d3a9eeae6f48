"""TorchServe entry module for atelier models.

The entry every .mar carries is the package's copy, atelier/training/templates/
atelier_handler.py, which `atelier archive` embeds (so any install of atelier can archive,
without a checkout). This module re-exports it for a hand-made archive:
``torch-model-archiver --handler handlers/atelier_handler.py --extra-files <a copy of
atelier.runtime> ...``.
"""

from atelier.training.templates.atelier_handler import AtelierHandler

__all__ = ["AtelierHandler"]
