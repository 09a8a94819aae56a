"""Weight-level sparsity: magnitude pruning (magnitude.py) and Dynamic Network Surgery (dns.py)."""
