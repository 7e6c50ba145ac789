"""Command-line entry points: ``burst`` (:mod:`cli.burst`) and ``burstd`` (:mod:`cli.burstd`)."""
