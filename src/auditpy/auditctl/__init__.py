"""pyauditctl: auditctl's options and output, and `--load`, an all-or-nothing augenrules."""
