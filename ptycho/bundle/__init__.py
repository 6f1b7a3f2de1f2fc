"""The model bundle ``wts.h5.zip`` (DESIGN.md §4): the train stage's output, all that infer needs.

Layout of the zip, members in this order:

- ``manifest.json``: ``format`` ("ptycho-bundle"), ``format_version``, ``backend`` ("pytorch"),
  ``models`` (["autoencoder", "diffraction_to_obj"]), ``package_version`` and ``members``
  ({name: sha256 hex} of every other member).
- ``wts.h5``: HDF5. One group per model, one dataset per ``state_dict()`` entry named by its
  key (dots kept, no subgroups); root attributes ``architecture`` (JSON of
  ``Architecture.to_dict()``), ``intensity_scale``, ``probe_scale`` (the trained s_p of
  ``ptycho.model``, also stored as the autoencoder's ``log_probe_scale``), ``package_version``,
  ``format_version``; root dataset ``probe`` (N, N) complex64, the training file's probe at unit
  power (sum |P|**2 = 1).

Format history: 1 had a photon-calibrated probe, no probe scale, the CNN's keys at the top of
the network (``encoder.*``), a sigmoid amplitude and an N/2 window; such bundles still load
(``_upgrade_format1``) and predict exactly as before. Format 3 names the network family
``backbone`` in the architecture JSON (formats 1 and 2: ``network``, still read). Format 4 adds the
learned sweeps (``unrolled_sweeps``, ``unrolled_hidden`` in the architecture, their weights under
``unrolled.*`` in both groups; older bundles: none).
- extras (e.g. ``history.csv``, ``config.json``), stored byte for byte, sorted by name.

Nothing is pickled: loading reads JSON and HDF5 datasets only and never executes code from the
file. A bundle is untrusted input (it may come from anywhere): ``load_bundle`` checks the zip
before reading it (``ptycho.archive``), parses ``wts.h5`` only in a resource-limited child
process (``ptycho/bundle/_hdf5_child.py``), so a file that crashes or hangs libhdf5 ends that process
and not the caller, and checks every value before it builds the model. The child costs about
0.17 s per load (default-size bundle, 2-core CPU: median 0.20 s instead of 0.035 s). The file is byte-deterministic (fixed member order, timestamps and compression; HDF5
written without object timestamps), so identical weights give an identical file and DVC does
not re-run downstream stages. It is written atomically, and loading is strict.

Modules: ``schema`` (constants, limits and value checks shared by both directions), ``write``
(``save_bundle``), ``read`` (``load_bundle``), ``sandbox`` (the parent side of the HDF5 child
process, ``_hdf5_child.py``).
"""

from ptycho.bundle.read import Bundle, load_bundle
from ptycho.bundle.schema import FORMAT, FORMAT_VERSION, MODEL_NAMES
from ptycho.bundle.write import save_bundle

__all__ = ["Bundle", "FORMAT", "FORMAT_VERSION", "MODEL_NAMES", "load_bundle", "save_bundle"]
