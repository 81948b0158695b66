from backout.cli.main import entry

entry()
