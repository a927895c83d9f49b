"""Framework integrations: one short module per framework, each converting to numpy.

Nothing is imported here on purpose: ``import ckpt`` must not import a framework.
``ckpt.tree`` imports :mod:`ckpt.integrations.torch` only when it meets a tensor.
"""
