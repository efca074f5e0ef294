"""Integrations with other training loops. Each module imports its framework when it is imported itself:

* :mod:`.trainer` -- :class:`~.trainer.DistillationTrainer`, transformers' ``Trainer`` distilling the model it trains.
"""
