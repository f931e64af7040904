"""Audit rules in auditctl 3.0.9's language and the kernel's `struct audit_rule_data`.

Pure (standard library and auditpy.proto only): `parse` turns rule lines into commands and
rules, `data` packs and unpacks the kernel's form, `listing` prints rules as `auditctl -l`,
`ruleset` reads a rules.d directory and checks it as a whole, `lint` finds costly orderings.
"""
