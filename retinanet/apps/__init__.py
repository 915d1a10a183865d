"""The applications on top of the library: the command line (`cli`), `predict`,
`debug_anchors` and the CPU demo (`demo`). Nothing in the library imports them."""
