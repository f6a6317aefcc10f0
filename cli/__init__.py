"""Entry points: the `anomdet` command line, which runs the flows and reads anomdet's
tables.

It sits above everything else (cli -> flows -> tasks -> anomdet -> db): the flows,
tasks and domain code never import it, so that each of them runs without it, from a
Prefect worker as from a test.
"""
