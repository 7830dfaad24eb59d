"""The frozen binary's entry point (PyInstaller runs this file as ``__main__``).

A build made with the local model also serves it: started with ``--embedded-model-server``
(``sidecar.local.embedded.FROZEN_SERVER_FLAG``) as its first argument, it is
llama-cpp-python's server instead of the sidecar (the sidecar starts it that way).
"""

import sys

if __name__ == "__main__":
    if sys.argv[1:2] == ["--embedded-model-server"]:
        from sidecar.local.embedded import main as serve

        serve(sys.argv[2:])
    else:
        from sidecar.cli import main

        main()
