"""``python -m agents.cli``: the ``runstream`` command."""

from agents.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
