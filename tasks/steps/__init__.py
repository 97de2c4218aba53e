"""The steps: one module per entry of ``tasks.TASKS``, each a typed config and a pure ``run``.
A step never imports another step; what steps share lives in the library rooms beside this one."""
