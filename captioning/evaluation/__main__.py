"""`python -m captioning.evaluation` is `captioner evaluate` (the path earlier releases documented)."""

from captioning.evaluation.command import main

main()
