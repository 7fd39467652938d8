"""Run plumbing behind the launchers: a config in, a workdir out. ``common`` validates and loads
what every method's run needs; ``taco``, ``dcvit`` and ``transfer`` run one method each, resumably;
``sweep`` and ``dcvit_sweep`` run and plot accuracy-vs-size sweeps."""
