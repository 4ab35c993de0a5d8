from sovereign.cli import run

run()
