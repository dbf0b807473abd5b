"""A Flower app that runs the nnc transport codec on a model of any size (benchmarks/fl_deploy_scale.py)."""
