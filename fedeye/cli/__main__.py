"""``python -m fedeye.cli`` runs the ``fedeye`` command."""

from fedeye.cli.main import main

main()
