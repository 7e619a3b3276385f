"""One module per command family (pueue's client/commands): each adds its subparsers with
add_parsers(sub, common) and sets func, the handler main calls with a connected Client."""
