"""The frozen binary's entry point (PyInstaller runs this file as ``__main__``)."""

from sidecar.cli import main

if __name__ == "__main__":
    main()
