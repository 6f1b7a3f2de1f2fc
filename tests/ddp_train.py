"""`ptycho train` with every rank recording what it did, for tests/test_distributed.py.

    python tests/ddp_train.py RECORD_FOLDER ARGS...    (ARGS: those of `ptycho train`)

Lightning starts the other ranks of a DDP run by running this script again with the same
arguments, so each rank writes RECORD_FOLDER/rank-<r>.json: its rank, the world size, the
process-group backend, a fingerprint of every sample it validated and trained on in the first
epoch, the val_loss every epoch ended with, and how many bundles it wrote. Only Lightning's
Trainer (a callback is added to every Trainer) and ``ptycho.bundle.save_bundle`` (imported by
the train workflow when it writes) are touched, so
the recording does not depend on how ptycho.training builds its loaders.
"""

import hashlib
import json
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback

from ptycho import bundle
from ptycho.cli import main


def fingerprints(batch) -> list[str]:
    """One hash per sample of a batch (a tensor, or a tuple/list/dict of tensors with samples on axis 0)."""
    tensors = list(batch.values()) if isinstance(batch, dict) else list(batch) if isinstance(batch, (list, tuple)) else [batch]
    return [hashlib.sha1(b"".join(t[i].detach().cpu().numpy().tobytes() for t in tensors)).hexdigest() for i in range(len(tensors[0]))]


class Recorder(Callback):
    def __init__(self):
        self.record = {"val": [], "train": [], "val_loss": [], "bundles_written": 0}

    def setup(self, trainer, pl_module, stage):
        backend = torch.distributed.get_backend() if torch.distributed.is_initialized() else None
        self.record.update(rank=trainer.global_rank, world_size=trainer.world_size, backend=backend)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.current_epoch == 0:
            self.record["train"] += fingerprints(batch)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        if trainer.current_epoch == 0 and not trainer.sanity_checking:
            self.record["val"] += fingerprints(batch)

    def on_train_epoch_end(self, trainer, pl_module):  # after the epoch's validation, as ptycho's history
        self.record["val_loss"].append(float(trainer.callback_metrics["val_loss"]))


RECORDER = Recorder()
_init = L.Trainer.__init__


def _init_with_recorder(self, *args, **kwargs):
    kwargs["callbacks"] = [*(kwargs.get("callbacks") or []), RECORDER]
    _init(self, *args, **kwargs)


L.Trainer.__init__ = _init_with_recorder
_save_bundle = bundle.save_bundle


def _counting_save_bundle(*args, **kwargs):
    RECORDER.record["bundles_written"] += 1
    return _save_bundle(*args, **kwargs)


bundle.save_bundle = _counting_save_bundle

if __name__ == "__main__":
    folder = Path(sys.argv[1])
    code = main(["train", *sys.argv[2:]])
    (folder / f"rank-{RECORDER.record.get('rank', 'none')}.json").write_text(json.dumps(RECORDER.record))
    sys.exit(code)
