"""nnc on a Flower deployment: a PyTorch MLP on sklearn digits with nnc_mod + NNCFedAvg."""
