"""The `reenrich` command line, one module per command (or small family of commands).

app       main(), the top-level parser, the registry of command modules, errors -> exit codes
args      argument types, shared flags, add_command, check_keys
context   Context (settings, database on first use), CommandError, signal handling
output    the stdout writer, cell text, the table renderer

migrate   migrate              import_   import            backfill  backfill, cancel
status    status, failures, show                           enrich    enrich
follow    follow, workers      export    export            datasets  datasets
validate  validate             stats     stats             dedup     dedup
demo      demo                 review    review sheet|import|set|list
"""
