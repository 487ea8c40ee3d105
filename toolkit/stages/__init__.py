"""The stages of a study, one module each, in the order :func:`toolkit.pipeline.analyze` runs them.

- :mod:`~toolkit.stages.preflight`: the configuration, its plugins, the device and the ranks, every
  check of the outputs, checkpoints and metric chain, the dataset; the work directory and its claim.
- :mod:`~toolkit.stages.train`: the model at each interval, trained (or resumed) or loaded from
  given weights.
- :mod:`~toolkit.stages.synthesize`: each interval's grids ``P``, in fixed pieces shared among the
  ranks, each piece saved in the work directory and reused from it.
- :mod:`~toolkit.stages.features`: a synthesised piece's features, probes and records (its units).
- :mod:`~toolkit.stages.assemble`: units -> ``xarray.Dataset``, the metric chain, the attributes.
- :mod:`~toolkit.stages.write`: the results file.
- :mod:`~toolkit.stages.figures`: the figures beside it.

:mod:`~toolkit.stages.context` holds what they share: the resolved :class:`~.context.Plan` and the
:class:`~.context.Run` (configuration, data, device, ranks, pieces, clocks).
"""
