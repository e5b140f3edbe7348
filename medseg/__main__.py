"""``python -m medseg`` (used by ``torchrun -m medseg train ...``)."""

from medseg.cli import main

main()
