"""`python -m jaxjac ...` runs the `jaxjac` command."""

from jaxjac.cli import main

raise SystemExit(main())
