"""Iterative reconstruction: the PIE family on the stitching canvas, one module per concern.

- ``forward``: the scan's windows on the canvas and the forward model the loops run (gather
  the object windows, translate the probe by each sub-pixel remainder, exit waves, far field).
- ``weights``: the step weights, the one thing ePIE and rPIE do differently.
- ``pie``: ePIE / rPIE as named steps (forward, modulus projection, object update, probe
  update) in one loop: the `baseline` and `refine` stages and the benchmarks call ``pie.run_pie``.
- ``probe_refinement``: prepare's probe refinement on the training scan.
- ``single``: rPIE on each patch against its own pattern, no canvas (`infer`'s data consistency,
  the projection of ``nn.unet``).

A new algorithm (LSQ-ML, position correction) is one new module beside ``pie``: it reuses
``forward`` and the physics operators (``physics.propagate``, ``physics.modulus_projection``,
``physics.fourier_translate``) and writes its own update steps. Nothing is imported here, so
a stage that needs one module depends on that module alone.
"""
