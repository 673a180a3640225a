"""`python -m cxrseg` runs the command-line interface."""

from cxrseg.cli import main

if __name__ == "__main__":
    main()
