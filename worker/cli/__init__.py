"""The `reenrich` command: the parser and entry point (`app`), and one module per command family.
"""
