"""``python -m fedeye`` runs the ``fedeye`` command."""

from fedeye.cli.main import main

main()
