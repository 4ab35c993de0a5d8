from sovereign.cli import app

app()
