from reportd.cli import cli

cli()
