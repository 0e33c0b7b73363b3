"""`python -m phasemap.cli ...`, the same as the `phasemap` console script."""

from phasemap.cli import main

main()
