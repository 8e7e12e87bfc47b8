"""The `imesh` command line: run the mesh (up, router, adapter, gateway) and talk to it."""
