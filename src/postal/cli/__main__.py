"""`python -m postal.cli`, as the tests and the benchmarks start Postal."""

from postal.cli import main

main()
