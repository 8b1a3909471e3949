"""The ``veer`` command line: parsing, the admin API client, and rendering its answers."""

from admin.cli.parsing import main as main
