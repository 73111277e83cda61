"""The jaxjac command line."""

def main(argv=None):
    raise SystemExit("not yet")
