"""The vocabulary every layer shares, pure data: errors, events, snapshots, secrets, text rules, the version.

Imports nothing else of the package. Above it: ``cce`` (talking to CCE and IAM), ``engine`` (polling and change
detection), ``sinks``, ``daemon``, ``cli`` — each imports only the layers below it (``lint-imports`` checks).
"""
