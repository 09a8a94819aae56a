"""Channel-level pruning: dependency groups (groups.py), importance + selection + physical shrink (pruning.py),
channel DNS (dns.py) and network slimming (slimming.py)."""
