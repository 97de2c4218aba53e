"""The contracts every step and library shares: the data types steps exchange (types), the
context a step runs in (context) and the option enums of the configs (options)."""
