"""What runs both sides of a federation in one process: the composition layer.

Neither the site (:mod:`fedeye.client`) nor the coordinator
(:mod:`fedeye.server`, :mod:`fedeye.strategies`) imports the other; the
modules here put them together: Flower's Simulation Engine
(:mod:`~fedeye.compose.simulation`), an in-process grid
(:mod:`~fedeye.compose.inline`) and the leave-one-site-out benchmark
(:mod:`~fedeye.compose.dg_benchmark`).
"""
