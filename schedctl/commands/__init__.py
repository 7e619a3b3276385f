"""One module per command family (pueue's client/commands): each adds its subparsers with
add_parsers(sub, common), setting func (the handler main calls with a connected Client) and,
where input is checked before any call, prepare."""
