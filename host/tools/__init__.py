"""Tools for people: the `mvu` command line, benchmarks, evaluation, profiles, the scoring client and the serving load generator."""
