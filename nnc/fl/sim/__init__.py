"""Simulation harnesses beside the FL layer (tests, benchmarks, quick experiments): a numpy MLP, offline
data loaders and label-skew partitions, and in-process loops for FedAvg over the transport codec
(:func:`simulate`), federated distillation (:func:`simulate_fd`) and clustered FL (:func:`simulate_cfl`).

Nothing in :mod:`nnc.fl` or :mod:`nnc.fl.flower` imports this package; :mod:`nnc.fl.sim.flower_apps`
(Flower apps for the MLP) is imported only on demand.
"""
from .cfl import CFLResult, simulate_cfl
from .data import client_rng, dirichlet_partition, load_digits_data, load_mnist5k, select_clients
from .fd import simulate_fd
from .loop import SimResult, simulate
from .mlp import (evaluate, forward, init_mlp, minibatch_sgd, predict, predict_proba, softmax, train_local,
                  train_soft)

__all__ = ["simulate", "SimResult", "simulate_fd", "simulate_cfl", "CFLResult", "init_mlp", "forward", "predict",
           "evaluate", "minibatch_sgd", "train_local", "softmax", "predict_proba", "train_soft",
           "load_digits_data", "load_mnist5k", "dirichlet_partition", "select_clients", "client_rng"]
